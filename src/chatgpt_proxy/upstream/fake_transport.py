"""A transport that answers from a script, in process: the upstream client's tests need no socket.

Each ``send`` takes the next scripted step: an ``Answer`` (status, headers, body pieces, a
wait before the headers), or a ``TransportError`` raised instead of any answer (a refused
connection, a timeout). A body piece is bytes, a ``Pause`` (the upstream's silence), or a
``TransportError`` raised at that point of the body (a reset, a cut)::

    fake = FakeTransport(
        ConnectFailed("ClientConnectorError"),                  # the first try: no connection
        Answer(200, SSE, [b"data: 1\\n\\n", Pause(5.0), BrokenBody("reset")]),
    )
    client = UpstreamClient(fake, settings.timeouts, settings.retries)
    ...
    assert len(fake.requests) == 2 and fake.responses[0].closed

The limits a request carries are honoured as a real transport would: an answer that waits
longer than ``first_byte``, or a pause longer than ``idle``, ends in ``TransportTimeout``
when that limit runs out. ``close()`` from another task ends a pending read with
``BrokenBody``, as a dropped connection does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.errors import BrokenBody, TransportError, TransportTimeout
from chatgpt_proxy.upstream.transport import Transport, TransportRequest, TransportResponse

JSON = {"Content-Type": "application/json"}
SSE = {"Content-Type": "text/event-stream"}


@dataclass(frozen=True, slots=True)
class Pause:
    """The upstream says nothing for ``seconds`` in the middle of its body."""

    seconds: float


Piece = bytes | Pause | TransportError


@dataclass(slots=True)
class Answer:
    """One scripted answer. ``wait``: seconds before its headers arrive."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=lambda: dict(JSON))
    body: Sequence[Piece] = ()
    wait: float = 0.0


Step = Answer | TransportError
Script = Callable[[TransportRequest], Step]


class FakeTransport(Transport):
    """Answers each request with the next of its ``steps``, then with what ``script`` returns.

    ``requests`` and ``responses`` record what was sent and answered, in order.
    """

    def __init__(self, *steps: Step, script: Script | None = None) -> None:
        self._steps = list(steps)
        self.script = script
        self.requests: list[TransportRequest] = []
        self.responses: list[FakeResponse] = []
        self.closed = False

    def add(self, *steps: Step) -> None:
        self._steps.extend(steps)

    async def send(self, request: TransportRequest) -> TransportResponse:
        self.requests.append(request)
        if self._steps:
            step = self._steps.pop(0)
        elif self.script is not None:
            step = self.script(request)
        else:
            raise AssertionError(f"no answer scripted for {request.method} {request.url}")
        if isinstance(step, TransportError):
            raise step
        limit = request.timeouts.first_byte
        if limit is not None and step.wait > limit:
            await asyncio.sleep(limit)
            raise TransportTimeout("the headers did not arrive in time")
        if step.wait:
            await asyncio.sleep(step.wait)
        response = FakeResponse(step, idle=request.timeouts.idle)
        self.responses.append(response)
        return response

    async def close(self) -> None:
        self.closed = True


class FakeResponse(TransportResponse):
    """A scripted answer being read; ``released`` / ``closed`` say how it was given back."""

    def __init__(self, answer: Answer, *, idle: float | None = None) -> None:
        self.status = answer.status
        self.headers = CIMultiDictProxy(CIMultiDict(answer.headers))
        media_type = self.headers.get("Content-Type", "application/octet-stream")
        self.content_type = media_type.split(";")[0].strip().lower()
        length = self.headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None
        self._pieces: list[Piece] = list(answer.body)
        self._idle = idle
        self._dropped = asyncio.Event()
        self.released = False
        self.closed = False

    async def read_chunk(self) -> bytes:
        while self._pieces:
            if self.closed:
                raise BrokenBody("the connection was closed")
            piece = self._pieces.pop(0)
            if isinstance(piece, TransportError):
                raise piece
            if isinstance(piece, Pause):
                await self._pause(piece.seconds)
                continue
            if piece:
                return piece
        if self.closed:
            raise BrokenBody("the connection was closed")
        return b""

    async def _pause(self, seconds: float) -> None:
        silent_too_long = self._idle is not None and seconds > self._idle
        wait = self._idle if self._idle is not None and silent_too_long else seconds
        try:
            await asyncio.wait_for(self._dropped.wait(), wait)
        except TimeoutError:
            if silent_too_long:
                raise TransportTimeout("the upstream was silent too long") from None
            return
        raise BrokenBody("the connection was closed")

    def at_end(self) -> bool:
        return not self._pieces and not self.closed

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True
        self._dropped.set()
