"""Timeouts, broken streams, slow streams and clients that leave (DESIGN §4)."""

from __future__ import annotations

from collections.abc import Callable

import httpx2
import openai
import orjson
import pytest

from fake_openai import DEFAULT_REPLY, FAKE_KEYS, FakeOpenAI
from harness import Proxy
from servers import wait_for


def _chat_body(text: str, *, stream: bool) -> dict[str, object]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    }


def _auth(proxy: Proxy) -> dict[str, str]:
    return {"Authorization": f"Bearer {proxy.key}"}


# ---------------------------------------------------------------- timeouts


@pytest.mark.parametrize(
    ("prompt", "attempts"),
    [
        # No answer at all: each key is tried once.
        ("[[fault:hang]]", 2),
        # The headers and 20 bytes, then silence: too late to try another key.
        ("[[fault:stall:20]]", 1),
    ],
)
def test_a_silent_upstream_is_504(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, prompt: str, attempts: int
) -> None:
    proxy = make_proxy(timeouts={"first_byte": 0.5})
    try:
        answer = proxy.http().post(
            "/v1/chat/completions",
            json=_chat_body(prompt, stream=False),
            headers=_auth(proxy),
        )
    except httpx2.TimeoutException:
        pytest.fail("no answer before the client gave up (30 s): the proxy hung with the upstream")
    # The proxy's own first-byte timeout is what ended it: its 504 says so.
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "upstream_timeout"
    # Each abandoned attempt was seen as a disconnect upstream.
    assert fake.count("/v1/chat/completions") == attempts
    assert fake.wait_for_disconnect(timeout=2, path="/v1/chat/completions") is not None


def test_hanging_upstream_stream_is_504_through_the_sdk(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(timeouts={"first_byte": 0.5})
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "[[fault:hang]]"}],
            stream=True,
        )
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


def test_one_hanging_key_is_retried_on_another(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(timeouts={"first_byte": 0.5})
    fake.script_key(FAKE_KEYS[0], "hang", times=1)
    completion = proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert fake.keys_used() == list(FAKE_KEYS[:2])


# ---------------------------------------------------------------- broken streams


def test_cut_stream_raises_the_proxys_error_event_in_the_sdk(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    received: list[str | None] = []
    stream = proxy.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "go [[fault:cut:3]]"}],
        stream=True,
    )
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert not isinstance(caught.value, openai.APIConnectionError)  # an event, not a broken pipe
    assert "broke off" in caught.value.message
    assert received == ["", "Hello", " from"]


def test_cut_stream_raw_has_an_error_event_and_no_done(proxy: Proxy) -> None:
    with proxy.http().stream(
        "POST",
        "/v1/chat/completions",
        json=_chat_body("go [[fault:cut:3]]", stream=True),
        headers=_auth(proxy),
    ) as response:
        raw = response.read()
    assert response.status_code == 200
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert b"[DONE]" not in raw
    assert len(events) == 4
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "upstream_error"
    assert set(last["error"]) == {"message", "type", "param", "code"}


def test_cut_responses_stream_ends_with_an_error_event(proxy: Proxy) -> None:
    kinds: list[str] = []
    stream = proxy.client().responses.create(
        model="gpt-4o-mini", input="[[fault:cut:2]]", stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        for event in stream:
            kinds.append(event.type)
    assert not isinstance(caught.value, openai.APIConnectionError)
    assert kinds == ["response.created", "response.in_progress"]


# ---------------------------------------------------------------- slow streams


def test_first_chunk_of_a_stream_arrives_while_the_upstream_is_still_at_work(
    proxy: Proxy,
) -> None:
    # The upstream sends one chunk, then goes silent until the connection closes: a proxy that
    # held chunks back would deliver nothing before its stream idle limit (minutes, past the
    # test's timeout), and then an upstream_timeout event.
    with proxy.http().stream(
        "POST",
        "/v1/chat/completions",
        json=_chat_body("[[fault:stall:1]]", stream=True),
        headers=_auth(proxy),
    ) as response:
        first = next(response.iter_raw())
    assert first.startswith(b"data: ") and b"upstream_timeout" not in first


def test_slow_stream_completes_through_the_sdk(proxy: Proxy) -> None:
    stream = proxy.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "[[fault:slow:0.05]]"}],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == DEFAULT_REPLY


# ---------------------------------------------------------------- clients that leave


def test_client_leaving_a_stream_cancels_the_upstream(proxy: Proxy, fake: FakeOpenAI) -> None:
    with proxy.http().stream(
        "POST",
        "/v1/chat/completions",
        json=_chat_body("[[fault:slow:0.5]] [[fault:long:50]]", stream=True),
        headers=_auth(proxy),
    ) as response:
        chunks = response.iter_raw()
        assert next(chunks).startswith(b"data: ")
        response.close()
    # Left alone, the upstream's answer would run 25 s and end whole, with no disconnect: one
    # seen well within that was the proxy passing the client's leaving on.
    when = fake.wait_for_disconnect(timeout=10, path="/v1/chat/completions")
    assert when is not None, "the upstream never saw the client leave"
    pool = proxy.state.router.upstreams[0].pool
    wait_for(
        lambda: not any(status.inflight for status in pool.snapshot()),
        2,
        "the key was never returned to the pool",
    )


def test_sdk_client_closing_a_stream_cancels_the_upstream(proxy: Proxy, fake: FakeOpenAI) -> None:
    stream = proxy.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "[[fault:slow:0.5]] [[fault:long:50]]"}],
        stream=True,
    )
    next(iter(stream))
    stream.close()
    # The answer would run 25 s: a disconnect within 10 s is the client's leaving passed on.
    when = fake.wait_for_disconnect(timeout=10, path="/v1/chat/completions")
    assert when is not None, "the upstream never saw the client leave"


def test_client_timing_out_on_a_hanging_upstream(proxy: Proxy, fake: FakeOpenAI) -> None:
    client = proxy.client().with_options(timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "[[fault:hang]]"}]
        )
    # The proxy's own first-byte timeout is 600 s: a disconnect within 10 s is the client's.
    when = fake.wait_for_disconnect(timeout=10, path="/v1/chat/completions")
    assert when is not None, "the upstream never saw the client leave"


def test_raw_client_timing_out_on_a_hanging_stream(proxy: Proxy, fake: FakeOpenAI) -> None:
    with pytest.raises(httpx2.TimeoutException):
        proxy.http().post(
            "/v1/chat/completions",
            json=_chat_body("[[fault:hang]]", stream=True),
            headers=_auth(proxy),
            timeout=0.5,
        )
    assert fake.wait_for_disconnect(timeout=3, path="/v1/chat/completions") is not None
