"""A stream that goes silent longer than ``stream_idle`` ends with an error event."""

from __future__ import annotations

from collections.abc import Callable

import openai
import orjson
import pytest

from fake_openai import FakeOpenAI
from harness import Proxy


def _events(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def test_a_silent_stream_ends_with_an_upstream_timeout_event(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(timeouts={"stream_idle": 0.4})
    request = {
        "model": "gpt-4o-mini",
        "stream": True,
        # One chunk, then silence until the connection closes: only the watch can end it.
        "messages": [{"role": "user", "content": "[[fault:stall:1]] hi"}],
    }
    body = proxy.post_json("/v1/chat/completions", orjson.dumps(request)).content
    events = _events(body)
    assert events[-1] != b"[DONE]"
    assert orjson.loads(events[-1])["error"]["code"] == "upstream_timeout"
    assert fake.wait_for_disconnect(timeout=2.0, path="/v1/chat/completions") is not None


def test_a_slow_but_steady_stream_is_not_cut(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(timeouts={"stream_idle": 0.6})
    stream = proxy.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "[[fault:slow:0.2]] [[fault:long:8]]"}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.split() == [f"word{n}" for n in range(8)]


def test_the_sdk_raises_on_a_silent_stream(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(timeouts={"stream_idle": 0.3})
    stream = proxy.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "[[fault:slow:1.0]] hi"}],
        stream=True,
    )
    with pytest.raises(openai.APIError, match="silent"):
        list(stream)


class _Response:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_sweep_closes_only_streams_silent_past_the_limit() -> None:
    import asyncio

    from chatgpt_proxy.upstream.idle import IdleWatch

    now = [0.0]
    watch = IdleWatch(idle=10.0, clock=lambda: now[0])
    quiet, busy = _Response(), _Response()
    silent = watch.watch(quiet)  # type: ignore[arg-type]
    steady = watch.watch(busy)  # type: ignore[arg-type]
    now[0] = 8.0
    steady.touch()
    now[0] = 10.5
    asyncio.run(watch._sweep())
    assert quiet.closed and silent.went_silent
    assert not busy.closed and not steady.went_silent
    assert len(watch) == 1
    steady.done()
    assert len(watch) == 0


def test_time_spent_writing_to_a_slow_client_is_not_the_upstreams_silence() -> None:
    import asyncio

    from chatgpt_proxy.upstream.idle import IdleWatch

    now = [0.0]
    watch = IdleWatch(idle=10.0, clock=lambda: now[0])
    response = _Response()
    watched = watch.watch(response)  # type: ignore[arg-type]
    watched.touch()  # a chunk arrived; the relay is held up handing it to a slow client
    now[0] = 100.0
    asyncio.run(watch._sweep())
    assert not response.closed and not watched.went_silent
    watched.wait()  # the relay reads the upstream again: its silence counts from here
    now[0] = 109.0
    asyncio.run(watch._sweep())
    assert not response.closed
    now[0] = 110.5
    asyncio.run(watch._sweep())
    assert response.closed and watched.went_silent
