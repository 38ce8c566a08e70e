"""Server-sent events as the standard frames them: where one event ends, and error events.

A line ends with LF, CRLF or CR, and an event ends at a blank line, so its terminator is two
line ends in any mix (``\\n\\n``, ``\\r\\n\\r\\n``, ``\\r\\r``, ``\\n\\r\\n``...). Upstreams
almost always send LF only: that case is one byte search, the others a regular expression.
Events are cut out with the bytes they came with, terminator included, so a relay that
passes them on stays byte for byte.

``EventFramer`` holds at most ``limit`` bytes of an unfinished event: an event longer than
that (a huge image in base64, or a stream that never frames at all) is passed on as it
arrives, uninspected, instead of growing the buffer without bound::

    framer = EventFramer(limit=8 << 20)
    passed, events = framer.feed(chunk)   # relay both; only ``events`` are whole
    tail = framer.flush()                 # at the end: an unfinished last event, if any
"""

from __future__ import annotations

import re

import orjson

from chatgpt_proxy.errors import ProxyError

# Two line ends; a CR followed by LF is one line end (CRLF), never two.
_TERMINATOR = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LONGEST_TERMINATOR = 4  # \r\n\r\n
_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


def event_ends(data: bytes, start: int = 0) -> list[int]:
    """The offsets just past each event terminator in ``data``, searching from ``start``.

    ``start`` may fall anywhere: a terminator found from the middle of a CRLF ends where the
    whole one does. A terminator ending ``data`` in ``\\n\\r`` is left out, as the LF that
    would make its CR a CRLF may be on its way.
    """
    if data.find(b"\r", start) < 0:
        ends = []
        found = data.find(b"\n\n", start)
        while found >= 0:
            ends.append(found + 2)
            found = data.find(b"\n\n", found + 2)
        return ends
    ends = [match.end() for match in _TERMINATOR.finditer(data, start)]
    if ends and ends[-1] == len(data) and data.endswith(b"\n\r"):
        ends.pop()
    return ends


def last_event_end(data: bytes, start: int = 0) -> int:
    """Where the last whole event of ``data`` ends, or -1 when none does."""
    if data.find(b"\r", start) < 0:
        found = data.rfind(b"\n\n", start)
        return found + 2 if found >= 0 else -1
    ends = event_ends(data, start)
    return ends[-1] if ends else -1


def event_start(data: bytes, offset: int) -> int:
    """Where the event holding ``offset`` begins, ``data`` beginning with an event."""
    if data.find(b"\r", 0, offset) < 0:
        found = data.rfind(b"\n\n", 0, offset)
        return found + 2 if found >= 0 else 0
    ends = [end for end in event_ends(data[:offset]) if end <= offset]
    return ends[-1] if ends else 0


def event_stop(data: bytes, offset: int) -> int:
    """Where the event holding ``offset`` ends, terminator included (``len(data)`` if open)."""
    ends = event_ends(data, offset) if data.find(b"\r") >= 0 else None
    if ends is None:
        found = data.find(b"\n\n", offset)
        return found + 2 if found >= 0 else len(data)
    return ends[0] if ends else len(data)


def split_events(data: bytes) -> list[bytes]:
    """``data`` cut into events, each with its terminator; an unfinished one last."""
    events, start = [], 0
    for end in event_ends(data):
        events.append(data[start:end])
        start = end
    if start < len(data):
        events.append(data[start:])
    return events


class EventFramer:
    """Cuts an SSE byte stream after its last whole event, holding at most ``limit`` bytes."""

    __slots__ = ("_limit", "_passing", "_pending", "_scanned", "_tail")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pending = b""
        self._scanned = 0  # how much of the pending bytes holds no terminator
        self._passing = False  # inside an over-long event, passed on as it arrives
        self._tail = b""  # its last bytes, for a terminator cut across two chunks

    def feed(self, chunk: bytes) -> tuple[bytes, bytes]:
        """What ``chunk`` lets go: (bytes of an over-long event, whole events)."""
        usual = not self._pending and not self._passing and chunk.endswith(b"\n\n")
        if usual and chunk.find(b"\r") < 0:  # whole LF-framed events, nothing held before
            return b"", chunk
        passed = b""
        if self._passing:
            data = self._tail + chunk
            ends = [end for end in event_ends(data) if end > len(self._tail)]
            if not ends:
                self._tail = data[-_LONGEST_TERMINATOR:]
                return chunk, b""
            cut = ends[0] - len(self._tail)
            passed, chunk = chunk[:cut], chunk[cut:]
            self._passing, self._tail = False, b""
        data = self._pending + chunk if self._pending else chunk
        end = last_event_end(data, max(0, self._scanned - _LONGEST_TERMINATOR))
        if end < 0:
            if len(data) > self._limit:
                self._pending, self._scanned = b"", 0
                self._passing, self._tail = True, data[-_LONGEST_TERMINATOR:]
                return passed + data, b""
            self._pending, self._scanned = data, len(data)
            return passed, b""
        self._pending = data[end:]
        self._scanned = len(self._pending)
        return passed, data[:end]

    @property
    def inside_event(self) -> bool:
        """Whether part of an event has been let go (an over-long one) but not its end."""
        return self._passing

    def flush(self) -> bytes:
        """The unfinished last event, once the stream has ended (relayed, never dropped)."""
        pending, self._pending, self._scanned = self._pending, b"", 0
        return pending


def error_event(err: ProxyError, *, typed: bool, sequence_number: int | None = None) -> bytes:
    """``err`` as the stream's last event.

    Chat and completions streams get ``data: {"error": {...}}``. The Responses API types its
    events, so there it is ``event: error`` with a ``{"type": "error", ...}`` payload carrying
    the error's fields and the envelope as ``error``, which the OpenAI SDKs raise on.
    """
    if not typed:
        return err.sse_event()
    envelope = err.payload()["error"]
    payload = {
        "type": "error",
        "code": err.code,
        "message": err.message,
        "param": err.param,
        "sequence_number": 0 if sequence_number is None else sequence_number,
        "error": envelope,
    }
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"


def next_sequence_number(events: bytes) -> int | None:
    """One past the last ``sequence_number`` in ``events`` (Responses API), if any."""
    found = _SEQUENCE.match(events, max(events.rfind(b'"sequence_number"'), 0))
    return int(found.group(1)) + 1 if found is not None else None
