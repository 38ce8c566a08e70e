"""Stripping the usage chunk the proxy asked for, and reading the usage of a stream whose
client asked for it, checked against the plain algorithm, with every line end the SSE
standard allows (LF, CRLF, CR)."""

from __future__ import annotations

import random

import orjson
import pytest

from chatgpt_proxy.exchange import Outcome
from chatgpt_proxy.streaming import StreamStyle, _inspected, _without_usage
from chatgpt_proxy.token_usage import Usage, event_data, usage_in_document


def _reference(events: bytes, end: bytes) -> tuple[bytes, Usage | None]:
    """Every event split out and parsed: slow, obviously right. The usage chunk is the one
    with a usage object and no choices; a chunk with no choices and no usage (Azure's prompt
    filter results) is the client's."""
    usage = None
    kept = []
    for event in events.split(end + end)[:-1]:
        data = event_data(event)
        document = orjson.loads(data) if data.startswith(b"{") else {}
        if isinstance(document.get("usage"), dict):
            usage = usage_in_document(document) or usage
            if document.get("choices") == []:
                continue
        kept.append(event + end + end)
    return b"".join(kept).replace(b',"usage":null', b""), usage


def _event(document: object, end: bytes) -> bytes:
    return b"data: " + orjson.dumps(document) + end + end


def _chunk(n: int, end: bytes) -> bytes:
    body = {"id": "c", "choices": [{"index": 0, "delta": {"content": f"w{n}"}}], "usage": None}
    return _event(body, end)


def _usage_chunk(prompt: int, end: bytes, *, with_choice: bool = False) -> bytes:
    choices = [{"index": 0, "delta": {}}] if with_choice else []
    usage = {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2}
    return _event({"id": "c", "choices": choices, "usage": usage}, end)


def _streams(end: bytes) -> list[bytes]:
    rng = random.Random(7)
    streams = []
    for _ in range(300):
        events = [_chunk(n, end) for n in range(rng.randint(0, 6))]
        for _ in range(rng.randint(0, 2)):
            usage = _usage_chunk(rng.randint(1, 99), end, with_choice=rng.random() < 0.3)
            events.insert(rng.randint(0, len(events)), usage)
        if rng.random() < 0.3:
            no_usage = b'data: {"choices":[],"usage": null}' + end + end
            events.insert(rng.randint(0, len(events)), no_usage)
        if rng.random() < 0.3:
            events.append(b"data: [DONE]" + end + end)
        streams.append(b"".join(events))
    return streams


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_the_usage_chunk_is_cut_wherever_it_falls(end: bytes) -> None:
    for joined in _streams(end):
        outcome = Outcome(200)
        expected, usage = _reference(joined, end)
        assert _without_usage(joined, outcome) == expected, joined
        assert outcome.usage == usage


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_a_stream_whose_client_asked_for_usage_is_untouched_and_its_last_usage_counts(
    end: bytes,
) -> None:
    for joined in _streams(end):
        outcome = Outcome(200)
        _, usage = _reference(joined, end)
        assert _inspected(joined, outcome, StreamStyle()) is joined
        assert outcome.usage == usage, joined
