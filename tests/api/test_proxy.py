"""The OpenAI routes' pipeline as a client sees it: each stage refuses before the upstream is
asked, in the order auth → model policy → route → limits → moderation, and a request that
passes them all goes up byte for byte and is metered to its key."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from chatgpt_proxy.keystore import KeyPolicy
from fake_openai import FakeOpenAI
from harness import Proxy
from servers import wait_for

CHAT = "/v1/chat/completions"


def _body(model: str = "gpt-4o-mini", text: str = "hi") -> bytes:
    # Spacing no serialiser would choose: the upstream must get these very bytes.
    return b'{"model" : "%s",  "messages":[{"role":"user","content":"%s"}]}' % (
        model.encode(),
        text.encode(),
    )


def _post(proxy: Proxy, key: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    response = proxy.http().post(CHAT, content=body, headers=headers)
    return response.status_code, response.json()


def _refused(proxy: Proxy, key: str | None, body: bytes) -> tuple[int, str | None]:
    status, document = _post(proxy, key, body)
    error = document["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return status, error["code"]


@pytest.fixture
def guarded(make_proxy: Callable[..., Proxy]) -> Proxy:
    """A proxy with every stage armed: a rule that blocks, and one upstream serving gpt-*."""
    return make_proxy(
        moderation={"enabled": True, "rules": [{"name": "no-secrets", "words": ["password"]}]}
    )


def test_each_stage_refuses_before_the_upstream_is_asked(guarded: Proxy, fake: FakeOpenAI) -> None:
    narrow = guarded.create_key("narrow", KeyPolicy(models=("gpt-4o*",), rpm=1))
    # auth: no key at all, whatever else is wrong with the request
    assert _refused(guarded, None, _body("o3", "password")) == (401, "invalid_api_key")
    # model policy: this key may not use o3, even though no upstream serves it either
    assert _refused(guarded, narrow, _body("o3", "password")) == (403, "model_not_allowed")
    # moderation comes after the model checks and before any upstream call
    assert _refused(guarded, narrow, _body("gpt-4o", "my password")) == (
        400,
        "content_policy_violation",
    )
    assert fake.requests == []


def test_an_unserved_model_is_refused_by_the_route(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    upstream = {"name": "openai", "base_url": fake.base_url, "keys": ["sk-a"], "models": ["gpt-*"]}
    proxy = make_proxy(upstreams=[upstream])
    assert _refused(proxy, proxy.key, _body("claude-3")) == (404, "model_not_found")
    assert fake.requests == []


def test_limits_refuse_before_the_upstream(proxy: Proxy, fake: FakeOpenAI) -> None:
    limited = proxy.create_key("limited", KeyPolicy(rpm=1))
    status, _ = _post(proxy, limited, _body())
    assert status == 200
    assert _refused(proxy, limited, _body()) == (429, "rate_limit_exceeded")
    assert fake.count(CHAT) == 1


def test_a_request_that_passes_goes_up_unchanged_and_is_metered(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    body = _body()
    response = proxy.http().post(
        CHAT,
        content=body,
        headers={"Authorization": f"Bearer {proxy.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    assert fake.last(CHAT).body == body
    reported = orjson.loads(response.content)["usage"]["total_tokens"]

    def metered() -> int:
        proxy.loop.run(proxy.state.meter.flush())
        tokens, _ = proxy.loop.run(proxy.state.store.usage.totals(proxy.key_id))
        return tokens

    assert wait_for(metered, message="the request was never metered") == reported


def test_a_path_outside_the_allowlist_is_not_forwarded(proxy: Proxy, fake: FakeOpenAI) -> None:
    response = proxy.http().post(
        "/v1/fine_tuning/jobs", json={}, headers={"Authorization": f"Bearer {proxy.key}"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    assert fake.requests == []


def test_open_streams_holding_every_upstream_connection_leave_moderation_its_own(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Short calls have upstream connections of their own: with streams holding all of
    ``max_upstream_connections``, a new request's moderation (and an embeddings call) is
    answered at once, and the new request waits only for its own upstream connection."""
    proxy = make_proxy(
        server={"max_upstream_connections": 2},
        moderation={"enabled": True, "check_embeddings": True},
    )
    client = proxy.client()
    slow = [{"role": "user", "content": "held [[fault:long:400]][[fault:slow:0.2]]"}]
    held = [client.chat.completions.create(model="gpt-4o-mini", messages=slow, stream=True)]
    held.append(client.chat.completions.create(model="gpt-4o-mini", messages=slow, stream=True))
    with ThreadPoolExecutor(1) as pool:
        try:
            for stream in held:
                next(iter(stream))  # both streams under way: every lasting connection taken
            embedded = client.embeddings.create(model="text-embedding-3-small", input="short call")
            assert len(embedded.data) == 1
            third = [{"role": "user", "content": "third request"}]
            waiting = pool.submit(
                client.chat.completions.create, model="gpt-4o-mini", messages=third
            )
            wait_for(
                lambda: any("third request" in str(call) for call in fake.moderation_calls),
                timeout=10,
                message="the third request's moderation never reached the upstream",
            )
            assert fake.count(CHAT) == 2  # the third waits for a lasting connection
        finally:
            for stream in held:
                stream.close()
        assert waiting.result(timeout=30).choices[0].message.content
