"""Graceful shutdown of a real `chatgpt-proxy serve` process (DESIGN §4): SIGTERM mid-stream."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx2
import orjson
import pytest

from fake_openai import DEFAULT_REPLY, FakeOpenAI
from harness import served_proxy
from servers import ServedProcess, refuses_connections, wait_for

GRACE_SECONDS = 5


@pytest.fixture
def served(fake: FakeOpenAI, tmp_path: Path) -> Iterator[ServedProcess]:
    with served_proxy(fake, tmp_path, GRACE_SECONDS) as process:
        yield process


def test_serve_prints_a_working_default_key(served: ServedProcess) -> None:
    assert served.key.startswith("pk-")
    answer = httpx2.post(
        served.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {served.key}"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == DEFAULT_REPLY
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=GRACE_SECONDS + 5) == 0


def test_sigterm_lets_a_stream_in_flight_finish(served: ServedProcess) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "[[fault:slow:0.3]] [[fault:long:6]]"}],
        "stream": True,
    }
    with (
        httpx2.Client(timeout=20) as client,
        client.stream(
            "POST",
            served.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {served.key}"},
        ) as response,
    ):
        assert response.status_code == 200
        chunks = response.iter_raw()
        received = [next(chunks)]
        served.process.send_signal(signal.SIGTERM)
        # The server stops listening at once.
        wait_for(lambda: refuses_connections(served.url), message="still accepting connections")

        with pytest.raises(httpx2.ConnectError):
            httpx2.get(served.url + "/healthz", timeout=2)
        assert served.process.poll() is None  # still finishing the stream

        received.extend(chunks)
    raw = b"".join(received)
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.strip()]
    documents = [orjson.loads(e) for e in events[:-1]]
    text = "".join(d["choices"][0]["delta"].get("content") or "" for d in documents)
    assert text == " ".join(f"word{i}" for i in range(6))
    assert documents[-1]["choices"][0]["finish_reason"] == "stop"

    assert served.process.wait(timeout=GRACE_SECONDS + 5) == 0
