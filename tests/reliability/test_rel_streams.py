"""Streams relayed whole or ended with an error event, and every token metered (rows 9, 10, 13,
27, 32 of RELIABILITY.md; issue 9's defects 3, 4, 6, 7 and 10)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest
from aiohttp import web

from chatgpt_proxy import state
from chatgpt_proxy.app import create_app
from chatgpt_proxy.exchange import start_stream
from chatgpt_proxy.server import ProxyRunner
from fake_openai import DEFAULT_REPLY, FakeOpenAI
from harness import Proxy, Recorder, RecordingStream, proxy_settings, served_proxy
from servers import BackgroundLoop, ServedProcess, refuses_connections, wait_for

WORDS = DEFAULT_REPLY.split()
GRACE_SECONDS = 2.0


def _chat(text: str, **fields: Any) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **fields}
    return orjson.dumps(body)


def _responses(text: str, **fields: Any) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "input": text, **fields})


def _stream(proxy: Proxy, path: str, body: bytes) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {proxy.key}", "Content-Type": "application/json"}
    with proxy.http().stream("POST", path, content=body, headers=headers) as response:
        return response.status_code, response.read()


def _data(raw: bytes) -> list[bytes]:
    """The data lines of a stream, whatever its line ends."""
    return [line[6:] for line in raw.splitlines() if line.startswith(b"data: ")]


def _charged(proxy: Proxy, *, timeout: float = 5.0) -> int:
    """The tokens charged to the proxy's key, once some are (usage is recorded as a request
    ends, which may be after its client has gone)."""

    def used() -> int:
        proxy.loop.run(proxy.state.meter.flush())
        tokens, _ = proxy.loop.run(proxy.state.store.usage.totals(proxy.key_id))
        return tokens

    return wait_for(used, timeout, "nothing was charged")


def _access_line(proxy: Proxy, status: int, *, timeout: float = 5.0) -> str | None:
    """The access log line of a request answered (or abandoned) with ``status``."""

    def last_line() -> str | None:
        proxy.flush_logs()
        found = [
            line
            for line in proxy.recorder.log_lines
            if "chatgpt_proxy.access: req_" in line and f" {status} key={proxy.key_id} " in line
        ]
        return found[-1] if found else None

    return wait_for(last_line, timeout, f"no access line with status {status}")


def _estimate(body: bytes) -> int:
    return len(body) // 4  # what the proxy reserves for a request that asks no max tokens


# ---------------------------------------------------------------- defect 3: SSE framing


@pytest.mark.parametrize("framing", ["crlf", "cr"])
def test_a_crlf_or_cr_framed_stream_reaches_the_client_whole(
    proxy: Proxy, fake: FakeOpenAI, framing: str
) -> None:
    """Defect 3: the usage chunk the proxy asked for is hidden, whatever the line ends."""
    end = {"crlf": b"\r\n", "cr": b"\r"}[framing]
    body = _chat(f"one two [[fault:framing:{framing}]]", stream=True)
    status, raw = _stream(proxy, "/v1/chat/completions", body)
    assert status == 200
    assert b'"usage"' not in raw  # neither the usage chunk nor "usage":null
    assert raw.endswith(b"data: [DONE]" + end + end)
    assert b"\n\n" not in raw.replace(b"\r\n", b"")  # relayed with the upstream's own bytes
    chunks = [orjson.loads(data) for data in _data(raw)[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == DEFAULT_REPLY
    assert _charged(proxy) == 3 + len(WORDS)  # metered from the hidden chunk


@pytest.mark.parametrize("framing", ["crlf", "cr"])
def test_the_sdk_reads_crlf_and_cr_streams_through_the_proxy(proxy: Proxy, framing: str) -> None:
    """Defect 3, through the SDK: chat deltas and Responses events arrive whole."""
    client = proxy.client()
    chat = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"[[fault:framing:{framing}]]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(chat)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_REPLY
    assert chunks[-1].usage is not None  # asked for: kept
    events = list(
        client.responses.create(
            model="gpt-4o-mini", input=f"[[fault:framing:{framing}]]", stream=True
        )
    )
    assert events[-1].type == "response.completed"


# ---------------------------------------------------------------- defect 4: stream_options


@pytest.mark.parametrize(
    "options", [None, {}, {"include_usage": False}], ids=["null", "empty", "false"]
)
def test_streams_are_metered_whatever_stream_options_say(
    proxy: Proxy, fake: FakeOpenAI, options: object
) -> None:
    """Defect 4: the proxy's own request for usage is merged in, and hidden again."""
    body = _chat("one two", stream=True, stream_options=options)
    status, raw = _stream(proxy, "/v1/chat/completions", body)
    assert status == 200
    sent = orjson.loads(fake.last("/v1/chat/completions").body)
    assert sent["stream_options"] == {**(options or {}), "include_usage": True}
    assert b'"usage"' not in raw and raw.endswith(b"data: [DONE]\n\n")
    assert _charged(proxy) == 2 + len(WORDS)


# ---------------------------------------------------------------- rows 9 and 10


def _broken_chat(proxy: Proxy, prompt: str) -> None:
    """The stream ends with the proxy's error event: no [DONE], the SDK raises."""
    body = _chat(prompt, stream=True)
    status, raw = _stream(proxy, "/v1/chat/completions", body)
    assert status == 200 and b"[DONE]" not in raw
    error = orjson.loads(_data(raw)[-1])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert _charged(proxy) == _estimate(body)  # no usage came: the estimate
    with pytest.raises(openai.APIError) as caught:
        list(
            proxy.client().chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True
            )
        )
    assert not isinstance(caught.value, openai.APIConnectionError)  # an event, not a cut


def _broken_responses(proxy: Proxy, prompt: str) -> None:
    """A Responses stream ends with ``event: error`` as that API sends it; the SDK raises."""
    body = _responses(prompt, stream=True)
    status, raw = _stream(proxy, "/v1/responses", body)
    assert status == 200
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    head, data = events[-1].split(b"\n", 1)
    assert head == b"event: error"
    error = orjson.loads(data.removeprefix(b"data: "))
    assert error["type"] == "error" and error["code"] == error["error"]["code"]
    before = orjson.loads(events[-2].split(b"data: ", 1)[1])
    assert error["sequence_number"] == before["sequence_number"] + 1
    with pytest.raises(openai.APIError) as caught:
        list(proxy.client().responses.create(model="gpt-4o-mini", input=prompt, stream=True))
    assert not isinstance(caught.value, openai.APIConnectionError)


def test_row_9_a_stream_stalled_past_the_idle_timeout_ends_with_an_error_event(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 9: stalled mid-stream: upstream closed, an error event, no [DONE], no retry."""
    proxy = make_proxy(timeouts={"stream_idle": 0.4})
    _broken_chat(proxy, "hi [[fault:stall:2]]")
    assert fake.wait_for_disconnect(timeout=5, path="/v1/chat/completions") is not None
    assert fake.count("/v1/chat/completions") == 2  # one per call: never retried
    _broken_responses(proxy, "hi [[fault:stall:2]]")


@pytest.mark.parametrize("fault", ["cut", "reset"])
def test_row_10_a_stream_cut_or_reset_upstream_ends_with_an_error_event(
    proxy: Proxy, fake: FakeOpenAI, fault: str
) -> None:
    """Row 10: reset or cut chunked data: as row 9, never a clean ending; the estimate billed."""
    _broken_chat(proxy, f"hi [[fault:{fault}:2]]")
    assert fake.count("/v1/chat/completions") == 2
    _broken_responses(proxy, f"hi [[fault:{fault}:2]]")


# ---------------------------------------------------------------- row 13 and defect 6


def test_row_13_a_client_leaving_mid_stream_closes_upstream_is_logged_499_and_charged(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 13: upstream closed, 499 logged, usage recorded: the estimate (defect 6)."""
    body = _chat("[[fault:slow:0.3]] [[fault:long:50]]", stream=True)
    headers = {"Authorization": f"Bearer {proxy.key}", "Content-Type": "application/json"}
    with proxy.http().stream(
        "POST", "/v1/chat/completions", content=body, headers=headers
    ) as response:
        assert next(response.iter_raw()).startswith(b"data: ")
    assert fake.wait_for_disconnect(timeout=5, path="/v1/chat/completions") is not None
    assert _access_line(proxy, 499) is not None
    assert _charged(proxy) == _estimate(body)


def test_row_13_a_client_leaving_before_a_non_streamed_reply(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 13 and defect 6: an abandoned non-streamed call is metered and logged 499."""
    body = _chat("[[fault:hang]]")
    headers = {"Authorization": f"Bearer {proxy.key}", "Content-Type": "application/json"}
    with pytest.raises(httpx2.TimeoutException):
        proxy.http().post("/v1/chat/completions", content=body, headers=headers, timeout=0.5)
    assert fake.wait_for_disconnect(timeout=5, path="/v1/chat/completions") is not None
    assert _access_line(proxy, 499) is not None
    assert _charged(proxy) == _estimate(body)


def test_row_13_a_background_response_is_not_cancelled_upstream(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 13 skips ``background=true``: the upstream goes on, and its usage is recorded."""
    body = _responses("one two three [[fault:slow:0.5]]", background=True)
    headers = {"Authorization": f"Bearer {proxy.key}", "Content-Type": "application/json"}
    with pytest.raises(httpx2.TimeoutException):
        proxy.http().post("/v1/responses", content=body, headers=headers, timeout=0.2)
    assert fake.wait_for_requests(1, path="/v1/responses")
    assert _charged(proxy) == 4 + len(WORDS)  # the upstream's own count, not the estimate
    assert fake.disconnects == []
    assert _access_line(proxy, 499) is not None


def test_row_13_a_background_stream_is_read_to_its_end_after_its_client_left(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 13 skips ``background=true`` streams too: read to the end, for the true usage."""
    body = _responses("one two three [[fault:slow:0.2]]", stream=True, background=True)
    headers = {"Authorization": f"Bearer {proxy.key}", "Content-Type": "application/json"}
    with proxy.http().stream("POST", "/v1/responses", content=body, headers=headers) as response:
        assert next(response.iter_raw()).startswith(b"event: response.created")
    assert _charged(proxy) == 4 + len(WORDS)  # from response.completed, after the client left
    assert fake.disconnects == []
    assert _access_line(proxy, 499) is not None


def test_defect_6_an_answer_too_large_to_scan_is_relayed_whole_and_charged_the_estimate(
    proxy: Proxy,
) -> None:
    """Defect 6 and 7: beyond the usage scan, the answer still arrives whole; the estimate
    is charged instead of nothing."""
    words = 1_100_000  # about 9 MB of answer, past the 8 MiB kept to find its usage
    body = _chat(f"[[fault:long:{words}]]")
    answer = proxy.post_json("/v1/chat/completions", body)
    assert answer.status_code == 200
    content = answer.json()["choices"][0]["message"]["content"]
    assert content.split()[-1] == f"word{words - 1}"
    assert _charged(proxy) == _estimate(body)


# ---------------------------------------------------------------- defect 7: never cut to fit


def test_defect_7_a_moderated_answer_too_large_to_hold_is_refused_not_truncated(
    make_proxy: Callable[..., Proxy],
) -> None:
    """Defect 7: output moderation holds the answer whole; one too large is an error."""
    proxy = make_proxy(moderation={"enabled": True, "check_output": True})
    answer = proxy.post_json("/v1/chat/completions", _chat("[[fault:long:1100000]]"))
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_error"


def test_defect_7_output_moderation_fails_closed_on_an_answer_it_cannot_read(
    make_proxy: Callable[..., Proxy],
) -> None:
    """Defect 7: a 200 that is not JSON is never let through unjudged."""
    proxy = make_proxy(moderation={"enabled": True, "check_output": True})
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "[[fault:garbage]]"}]
        )
    assert caught.value.status_code == 502
    assert b"not json" not in caught.value.response.content


# ---------------------------------------------------------------- row 27


def test_row_27_the_forced_usage_chunk_is_stripped(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 27: the client did not ask for usage: no ``choices: []`` chunk, no usage at all."""
    chunks = list(
        proxy.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert fake.last("/v1/chat/completions").json()["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)
    assert all("usage" not in chunk.model_dump(exclude_unset=True) for chunk in chunks)


# ---------------------------------------------------------------- defect 10


@pytest.fixture
def failing_stream(
    background_loop: BackgroundLoop, fake: FakeOpenAI, tmp_path: Path, recorder: Recorder
) -> Iterator[str]:
    """A proxy app with one more route, whose handler fails after sending its headers."""

    async def fails(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await start_stream(request, response)
        await response.write(b'data: {"n": 1}\n\n')
        raise RuntimeError("broke after the headers")

    settings = proxy_settings(fake, tmp_path)
    app = background_loop.run(create_app(settings, log_stream=RecordingStream(recorder)))
    app.router.add_post("/v1/fails", state.served(fails))
    url = background_loop.start_app(app, runner_class=ProxyRunner)
    yield url
    background_loop.stop_app(url)


def test_defect_10_an_error_after_the_headers_ends_the_stream_with_an_error_event(
    failing_stream: str, recorder: Recorder
) -> None:
    """Defect 10: no second response is built; the stream ends with an error event."""
    with httpx2.Client(base_url=failing_stream, timeout=10) as client:
        response = client.post("/v1/fails")
    assert response.status_code == 200
    events = _data(response.content)
    assert events[0] == b'{"n": 1}'
    assert orjson.loads(events[-1])["error"]["code"] == "internal_error"
    assert any("failed after its headers" in line for line in recorder.log_lines)


# ---------------------------------------------------------------- row 32


@pytest.fixture
def served(fake: FakeOpenAI, tmp_path: Path) -> Iterator[ServedProcess]:
    with served_proxy(fake, tmp_path, GRACE_SECONDS) as process:
        yield process


def test_row_32_sigterm_ends_streams_left_after_the_grace_period_with_an_error_event(
    served: ServedProcess, fake: FakeOpenAI
) -> None:
    """Row 32: readiness fails and connections are refused at once; a stream still running
    after ``grace_seconds`` ends with an error event; no new upstream call starts."""
    body = _chat("[[fault:slow:0.3]] [[fault:long:100]]", stream=True)
    headers = {"Authorization": f"Bearer {served.key}"}
    with (
        httpx2.Client(timeout=30) as client,
        client.stream(
            "POST",
            served.url + "/v1/chat/completions",
            content=body,
            headers={**headers, "Content-Type": "application/json"},
        ) as response,
    ):
        chunks = response.iter_raw()
        received = [next(chunks)]
        served.process.send_signal(signal.SIGTERM)
        # The listening socket closes at once.
        wait_for(lambda: refuses_connections(served.url), GRACE_SECONDS, "still accepting")
        received.extend(chunks)
    raw = b"".join(received)
    assert b"[DONE]" not in raw
    # It went on after the signal (the grace period), then ended with the error event.
    words = [orjson.loads(data)["choices"][0]["delta"].get("content") for data in _data(raw)[:-1]]
    assert len([word for word in words if word]) > 1
    last = orjson.loads(_data(raw)[-1])
    assert last["error"]["code"] == "service_unavailable"
    assert served.process.wait(timeout=GRACE_SECONDS + 10) == 0
    assert fake.count("/v1/chat/completions") == 1
