"""Stored responses belong to the client key that created them (DESIGN §3.8; rows 12 and 24).

The upstream serves a stored response to any key of its account, so the proxy is the one to
refuse it: it records the owner and the holding upstream key of every response id it hands
out, in the database, before the client sees the id, and answers every other key with the
404 an unknown id gets, without forwarding anything.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import orjson
import pytest
from aiohttp import web

from chatgpt_proxy.keystore import KeyPolicy
from fake_openai import FAKE_KEYS, FakeOpenAI
from harness import Proxy
from servers import BackgroundLoop

MODEL = "gpt-4o-mini"
UNKNOWN = "resp_0123456789abcdef0123456789abcdef"

# Every way to use a stored response, as the official SDK calls it.
Use = Callable[[openai.OpenAI, str], Any]
USES: dict[str, Use] = {
    "retrieve": lambda client, rid: client.responses.retrieve(rid),
    "input_items": lambda client, rid: client.responses.input_items.list(rid),
    "continue": lambda client, rid: client.responses.create(
        model=MODEL, input="and then?", previous_response_id=rid
    ),
    "continue_streamed": lambda client, rid: list(
        client.responses.create(model=MODEL, input="and?", previous_response_id=rid, stream=True)
    ),
    "count_input_tokens": lambda client, rid: client.responses.input_tokens.count(
        model=MODEL, input="and?", previous_response_id=rid
    ),
    "cancel": lambda client, rid: client.responses.cancel(rid),
    "delete": lambda client, rid: client.responses.delete(rid),
}


def create(client: openai.OpenAI, *, stream: bool) -> str:
    """A new stored response's id, as the client first sees it."""
    if not stream:
        return client.responses.create(model=MODEL, input="hello there").id
    with client.responses.create(model=MODEL, input="hello there", stream=True) as events:
        first = next(iter(events))
        assert first.type == "response.created"
        response_id = first.response.id
        for _ in events:
            pass
    return response_id


def refusal(client: openai.OpenAI, use: Use, response_id: str) -> dict[str, Any]:
    """The error body ``use`` gets for ``response_id``, the id itself blanked out."""
    with pytest.raises(openai.NotFoundError) as caught:
        use(client, response_id)
    body = caught.value.response.json()
    blanked: dict[str, Any] = orjson.loads(
        orjson.dumps(body).replace(response_id.encode(), b"<id>")
    )
    return blanked


def upstream_calls(fake: FakeOpenAI) -> int:
    return sum(r.path.startswith("/v1/responses") for r in fake.requests)


@pytest.mark.parametrize("stream", [False, True], ids=["created", "created_streamed"])
def test_another_keys_response_is_not_found_on_every_path(
    proxy: Proxy, fake: FakeOpenAI, stream: bool
) -> None:
    """Row 24: another key's response id is a 404 on every path and in previous_response_id,
    told exactly as an id never handed out, and nothing reaches the upstream; the owner's works.
    """
    owner = proxy.client()
    other = proxy.client(proxy.create_key("other tenant"))
    response_id = create(owner, stream=stream)
    before = upstream_calls(fake)
    for name, use in USES.items():
        theirs, unknown = refusal(other, use, response_id), refusal(other, use, UNKNOWN)
        assert theirs == unknown, name
        assert theirs["error"]["type"] == "invalid_request_error"
        if name.startswith(("continue", "count")):
            assert theirs["error"]["param"] == "previous_response_id"
            assert theirs["error"]["code"] == "previous_response_not_found"
    assert upstream_calls(fake) == before

    assert owner.responses.retrieve(response_id).id == response_id
    assert owner.responses.input_items.list(response_id).data
    follow_up = owner.responses.create(model=MODEL, input="more", previous_response_id=response_id)
    assert follow_up.previous_response_id == response_id
    assert owner.responses.cancel(response_id).status == "cancelled"
    owner.responses.delete(response_id)
    # The other key still learns nothing: not even that the response is gone.
    assert refusal(other, USES["retrieve"], response_id) == refusal(
        other, USES["retrieve"], UNKNOWN
    )


def test_follow_ups_reach_the_key_that_holds_the_response(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 24: the record also routes; round robin would move on to the other key."""
    client = proxy.client()
    for stream in (False, True):
        response_id = create(client, stream=stream)
        creator = fake.last("/v1/responses").key
        for _ in range(2):
            client.responses.retrieve(response_id)
            assert fake.last(f"/v1/responses/{response_id}").key == creator
        client.responses.create(model=MODEL, input="more", previous_response_id=response_id)
        assert fake.last("/v1/responses").key == creator


def test_odd_previous_response_ids_are_not_found_and_never_looked_up(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 24 (and 19): a previous_response_id that cannot be an id is a 404, never a 5xx."""
    for odd in ("resp_\x00x", "x" * 10_000, "resp_1' OR '1'='1", ""):
        body = orjson.dumps({"model": MODEL, "input": "hi", "previous_response_id": odd})
        answer = proxy.post_json("/v1/responses", body)
        assert answer.status_code == 404, odd[:20]
        assert answer.json()["error"]["code"] == "previous_response_not_found"
    assert upstream_calls(fake) == 0


def test_probing_for_ids_is_held_to_the_keys_rate(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 24: each lookup is a request like any other, so guessing ids costs the guesser."""
    prober = proxy.client(proxy.create_key("prober", KeyPolicy(rpm=3)))
    for n in range(3):
        with pytest.raises(openai.NotFoundError):
            prober.responses.retrieve(f"resp_guess{n}")
    with pytest.raises(openai.RateLimitError):
        prober.responses.retrieve("resp_guess3")
    assert upstream_calls(fake) == 0


def test_a_response_not_stored_is_not_recorded(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 24: `store: false` keeps nothing upstream, so there is nothing to own or fetch."""
    client = proxy.client()
    response_id = client.responses.create(model=MODEL, input="hi", store=False).id
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response_id)
    assert fake.count(f"/v1/responses/{response_id}") == 0


def _retire(proxy: Proxy, fake: FakeOpenAI, secret: str) -> None:
    """Revoke ``secret`` upstream and let the proxy find out, as it would in service."""
    fake.revoke_key(secret)
    client = proxy.client()
    for _ in range(len(FAKE_KEYS)):  # round robin reaches it; the other key answers each
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def _conflict(call: Callable[[], Any]) -> openai.ConflictError:
    with pytest.raises(openai.ConflictError) as caught:
        call()
    assert caught.value.code == "resource_key_unavailable"
    assert caught.value.response.headers["x-should-retry"] == "false"
    return caught.value


def test_a_follow_up_whose_holding_key_is_retired_is_a_409(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 12: the holding key retired: a clear 409, never rerouted to a key without it."""
    client = proxy.client()
    response_id = create(client, stream=False)
    creator = fake.last("/v1/responses").key
    assert creator is not None
    _retire(proxy, fake, creator)
    before = upstream_calls(fake)
    for use in USES.values():
        _conflict(lambda use=use: use(client, response_id))  # type: ignore[misc]
    assert upstream_calls(fake) == before
    assert client.responses.create(model=MODEL, input="a new one").id  # others still work


def test_a_holding_key_that_is_cooling_is_waited_for_not_replaced(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 12: a 429 on the holder: the client is told when to retry, and no other key asked."""
    client = proxy.client()
    response_id = create(client, stream=False)
    creator = fake.last("/v1/responses").key
    assert creator is not None
    fake.script_key(creator, "rate_limit", times=1, retry_after=7)
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.retrieve(response_id)
    assert caught.value.response.headers["retry-after"] == "7"
    assert {r.key for r in fake.requests_to(f"/v1/responses/{response_id}")} == {creator}


def test_a_holder_no_longer_configured_is_a_409(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 12: the operator removed the holding key, or its whole upstream."""
    first = make_proxy()
    client = first.client()
    client.models.list()  # round robin: the response is created on openai#2
    response_id = create(client, stream=False)
    holder = first.loop.run(first.state.objects.find("response", response_id))
    assert holder is not None and holder.upstream_alias == "openai#2"
    settings = first.state.settings
    for upstreams in (
        [{"name": "openai", "base_url": fake.base_url, "keys": [FAKE_KEYS[0]]}],  # openai#1 only
        [{"name": "azure", "base_url": fake.base_url, "keys": list(FAKE_KEYS[:2])}],
    ):
        later = make_proxy(database_url=settings.database_url, upstreams=upstreams)
        later.state.keys.apply(first.key_record)  # type: ignore[arg-type]
        before = upstream_calls(fake)
        _conflict(lambda later=later: later.client(first.key).responses.retrieve(response_id))  # type: ignore[misc]
        assert upstream_calls(fake) == before


def test_replicas_on_one_postgresql_database_share_the_records(
    postgres_database_url: str, make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 24: a record written by one replica holds on another at once (no cache, no wait)."""
    one, two = (make_proxy(database_url=postgres_database_url) for _ in range(2))
    two.state.keys.apply(one.key_record)  # type: ignore[arg-type]
    stranger = two.client(two.create_key("stranger"))
    owner_there = two.client(one.key)
    response_id = create(one.client(), stream=False)
    creator = fake.last("/v1/responses").key
    assert owner_there.responses.retrieve(response_id).id == response_id
    assert fake.last(f"/v1/responses/{response_id}").key == creator
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(response_id)

    # The id of a stream is usable on the other replica as soon as it arrives.
    with one.client().responses.create(model=MODEL, input="hi", stream=True) as events:
        first = next(iter(events))
        assert first.type == "response.created"
        found = two.loop.run(two.state.objects.find("response", first.response.id))
        assert found is not None and found.owner_key_id == one.key_id
        with pytest.raises(openai.NotFoundError):
            stranger.responses.retrieve(first.response.id)


def _drop_records(proxy: Proxy) -> None:
    path = proxy.state.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE stored_objects")


def test_an_id_that_cannot_be_recorded_never_reaches_the_client(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 24: a client must not hold an id it cannot use; no record, no id."""
    _drop_records(proxy)
    body = orjson.dumps({"model": MODEL, "input": "hi"})
    answer = proxy.post_json("/v1/responses", body)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "store_unavailable"
    assert fake.count("/v1/responses") == 1 and b"resp_" not in answer.content

    # A stream has begun: it ends with an error event in place of response.created.
    headers = {"Authorization": f"Bearer {proxy.key}", "Content-Type": "application/json"}
    streamed = orjson.dumps({"model": MODEL, "input": "hi", "stream": True})
    with proxy.http().stream("POST", "/v1/responses", content=streamed, headers=headers) as reply:
        text = b"".join(reply.iter_bytes())
    assert reply.status_code == 200 and b"resp_" not in text
    assert b'"code":"store_unavailable"' in text and b"[DONE]" not in text
    with pytest.raises(openai.APIError):  # the SDK raises on it
        list(proxy.client().responses.create(model=MODEL, input="hi", stream=True))


def test_unknown_ids_are_answered_by_the_proxy(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 24: what an unknown id gets, over plain HTTP: OpenAI's envelope, a 404."""
    auth = {"Authorization": f"Bearer {proxy.key}"}
    http: httpx2.Client = proxy.http()
    for method, path in (
        ("GET", f"/v1/responses/{UNKNOWN}"),
        ("DELETE", f"/v1/responses/{UNKNOWN}"),
        ("POST", f"/v1/responses/{UNKNOWN}/cancel"),
        ("GET", f"/v1/responses/{UNKNOWN}/input_items"),
    ):
        answer = http.request(method, path, headers=auth)
        assert answer.status_code == 404
        assert answer.json() == {
            "error": {
                "message": f"Response with id '{UNKNOWN}' not found.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    assert upstream_calls(fake) == 0


def _crlf_responses_upstream() -> web.Application:
    """An upstream whose stream ends its lines with CRLF and splits its first event."""

    async def responses(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        for name, status in (("response.created", "in_progress"), ("response.completed", None)):
            response = {"id": "resp_crlf_0001", "object": "response", "status": status}
            data = orjson.dumps({"type": name, "response": response, "sequence_number": 0})
            event = b"event: " + name.encode() + b"\r\ndata: " + data + b"\r\n\r\n"
            for piece in (event[:30], event[30:60], event[60:]):
                await answer.write(piece)
        return answer

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    return app


def test_the_created_id_is_recorded_whatever_the_stream_framing(
    make_proxy: Callable[..., Proxy], background_loop: BackgroundLoop
) -> None:
    """Row 24: the response.created event is found in CRLF lines cut across chunks."""
    url = background_loop.start_app(_crlf_responses_upstream())
    try:
        upstreams = [{"name": "openai", "base_url": url + "/v1", "keys": [FAKE_KEYS[0]]}]
        proxy = make_proxy(upstreams=upstreams)
        with proxy.client().responses.create(model=MODEL, input="hi", stream=True) as events:
            assert [event.type for event in events] == ["response.created", "response.completed"]
        found = proxy.loop.run(proxy.state.objects.find("response", "resp_crlf_0001"))
        assert found is not None and found.owner_key_id == proxy.key_id
    finally:
        background_loop.stop_app(url)
