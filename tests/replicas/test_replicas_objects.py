"""Two replicas on one database: an object made through one is its owner's, and held by its
key, on the other too; a batch's usage is charged once whichever replica sees it finish."""

from __future__ import annotations

from collections.abc import Callable

import openai
import orjson
import pytest

from fake_openai import FakeOpenAI
from harness import Proxy

MODEL = "gpt-4o-mini"


def _pair(make_proxy: Callable[..., Proxy], database_url: str) -> tuple[Proxy, Proxy]:
    one, two = (make_proxy(database_url=database_url) for _ in range(2))
    two.state.keys.apply(one.key_record)  # type: ignore[arg-type]
    return one, two


def _tokens(proxies: tuple[Proxy, Proxy], key_id: str) -> int:
    for proxy in proxies:
        proxy.loop.run(proxy.state.meter.flush())
    return proxies[0].loop.run(proxies[0].state.store.usage.totals(key_id))[0]


def test_objects_made_on_one_replica_are_owned_and_held_alike_on_the_other(
    database_url: str, make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """A follow-up (previous_response_id) reaches the key holding the response; a batch made
    from a file of the other replica runs, and its usage is charged once across both."""
    one, two = pair = _pair(make_proxy, database_url)
    first = one.client().responses.create(model=MODEL, input="remember this")
    creator = fake.last("/v1/responses").key
    there = two.client(one.key)
    for _ in range(2):  # round robin alone would move on to the other key
        answer = there.responses.create(
            model=MODEL, input="and then?", previous_response_id=first.id
        )
        assert answer.previous_response_id == first.id
        assert fake.last("/v1/responses").key == creator
    stranger = two.client(two.create_key("stranger"))
    with pytest.raises(openai.NotFoundError):
        stranger.responses.create(model=MODEL, input="hi", previous_response_id=first.id)

    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}]}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
    input_file = one.client().files.create(file=("in.jsonl", orjson.dumps(line)), purpose="batch")
    batch = two.client(one.key).batches.create(
        input_file_id=input_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    before = _tokens(pair, one.key_id)
    done = one.client().batches.retrieve(batch.id)
    assert done.status == "completed" and done.usage is not None
    assert two.client(one.key).batches.retrieve(batch.id).status == "completed"
    assert [b.id for b in two.client(one.key).batches.list()] == [batch.id]
    assert _tokens(pair, one.key_id) == before + done.usage.total_tokens
