"""SSE framing: events cut where the standard ends them, whatever the line ends and chunking,
with a bounded buffer."""

from __future__ import annotations

import random

import pytest

from chatgpt_proxy.errors import UpstreamError
from chatgpt_proxy.sse import EventFramer, error_event, next_sequence_number, split_events

LINE_ENDS = [b"\n", b"\r\n", b"\r"]


def _stream(rng: random.Random, count: int) -> list[bytes]:
    """Events, each with its own line ends (a stream may mix them), terminator included."""
    events = []
    for n in range(count):
        end = rng.choice(LINE_ENDS)
        lines = [b"event: delta"] if rng.random() < 0.3 else []
        lines += [b"data: " + f'{{"n": {n}, "pad": "{"x" * rng.randint(0, 40)}"}}'.encode()]
        blank = rng.choice(LINE_ENDS)
        if end == b"\r" and blank == b"\n":
            blank = b"\r"  # CR then LF would be one CRLF line end, not a blank line
        events.append(end.join(lines) + end + blank)
    return events


def _feed_in_pieces(
    framer: EventFramer, data: bytes, rng: random.Random
) -> list[tuple[bytes, bytes]]:
    out, start = [], 0
    while start < len(data):
        size = rng.randint(1, 30)
        out.append(framer.feed(data[start : start + size]))
        start += size
    return out


@pytest.mark.parametrize("seed", range(20))
def test_whole_events_come_out_byte_for_byte_however_the_stream_is_cut(seed: int) -> None:
    rng = random.Random(seed)
    events = _stream(rng, rng.randint(1, 12))
    data = b"".join(events)
    framer = EventFramer(limit=1 << 20)
    out = _feed_in_pieces(framer, data, rng)
    assert all(passed == b"" for passed, _ in out)
    whole = b"".join(chunk for _, chunk in out) + framer.flush()
    assert whole == data
    # Each output is a run of whole events: cut only where an event ends. A blank line of
    # CR then CRLF may be cut after its CR when the LF has not come yet (waiting for it would
    # hold back every event of a CR-framed stream): the LF is an empty line of the next one.
    ends = {sum(map(len, events[: i + 1])) for i in range(len(events))}
    offset = 0
    for _, chunk in out:
        offset += len(chunk)
        early = data[offset - 2 : offset + 1] == b"\r\r\n" and offset + 1 in ends
        assert not chunk or offset in ends or early
    assert split_events(data) == events


def test_a_crlf_cut_between_its_cr_and_lf_waits_for_the_lf() -> None:
    framer = EventFramer(limit=1024)
    assert framer.feed(b"data: a\r\n\r") == (b"", b"")
    assert framer.feed(b"\ndata: b\r\n") == (b"", b"data: a\r\n\r\n")
    assert framer.feed(b"\r\n") == (b"", b"data: b\r\n\r\n")


def test_an_over_long_event_is_passed_on_unread_and_the_buffer_stays_bounded() -> None:
    framer = EventFramer(limit=1000)
    head = b"data: " + b"x" * 900
    assert framer.feed(head) == (b"", b"")  # under the limit: held
    passed, events = framer.feed(b"y" * 500)  # over it: let go, unread
    assert (passed, events) == (head + b"y" * 500, b"")
    assert framer.inside_event
    for _ in range(100):  # however long it grows, nothing more is held
        assert framer.feed(b"z" * 500) == (b"z" * 500, b"")
    passed, events = framer.feed(b"z\r\n\r")  # its end, cut across two chunks
    assert (passed, events) == (b"z\r\n\r", b"")
    passed, events = framer.feed(b"\ndata: next\r\n\r\n")
    assert passed == b"\n" and events == b"data: next\r\n\r\n"
    assert not framer.inside_event
    assert framer.flush() == b""


def test_an_unfinished_last_event_is_flushed_at_the_end() -> None:
    framer = EventFramer(limit=1024)
    assert framer.feed(b"data: 1\n\ndata: 2") == (b"", b"data: 1\n\n")
    assert framer.flush() == b"data: 2"


def test_error_events_for_chat_and_for_the_responses_api() -> None:
    err = UpstreamError("broke off")
    assert error_event(err, typed=False) == err.sse_event()
    typed = error_event(err, typed=True, sequence_number=7)
    assert typed.startswith(b"event: error\ndata: {") and typed.endswith(b"}\n\n")
    assert b'"type":"error"' in typed and b'"sequence_number":7' in typed
    assert b'"error":{"message":"broke off"' in typed
    events = b'data: {"type":"x","sequence_number":3}\n\ndata: {"sequence_number":4}\n\n'
    assert next_sequence_number(events) == 5
    assert next_sequence_number(b"data: {}\n\n") is None
