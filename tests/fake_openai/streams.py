"""Writing streamed answers (SSE events, raw byte chunks) with scripted delays and cuts."""

from __future__ import annotations

import asyncio
import socket
import struct

import orjson
from aiohttp import web

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
CUT_FLAG = web.RequestKey("fake_openai_cut", bool)


def cut_connection(request: web.Request, response: web.StreamResponse) -> None:
    """Close the connection mid-body: the client sees a truncated chunked body.

    Flags the request so the server does not record this as a client disconnect.
    """
    request[CUT_FLAG] = True
    response.force_close()
    if request.transport is not None:
        request.transport.close()


def reset_connection(request: web.Request) -> None:
    """Abort the connection with a TCP reset (RST), not a clean close (FIN)."""
    request[CUT_FLAG] = True
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:  # a zero linger time makes close() send RST
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def go_silent(request: web.Request) -> None:
    """Send nothing more, keeping the connection open until the client closes it."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(0.05)
    raise ConnectionResetError("client went away")


class ChunkWriter:
    """Writes the chunks of one streamed answer, honouring `slow` (a delay before each chunk),
    `cut` (after that many chunks, close the connection instead of writing more), `stall`
    (after that many chunks, go silent), `reset` (after that many, reset the connection) and
    `framing` (the line end of events: LF, CRLF or CR)."""

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        *,
        delay: float | None = None,
        cut_after: int | None = None,
        stall_after: int | None = None,
        reset_after: int | None = None,
        line_end: bytes = b"\n",
    ) -> None:
        self.request = request
        self.response = response
        self.delay = delay
        self.cut_after = cut_after
        self.stall_after = stall_after
        self.reset_after = reset_after
        self.line_end = line_end
        self.sent = 0

    @property
    def cut(self) -> bool:
        return bool(self.request.get(CUT_FLAG))

    async def write(self, chunk: bytes) -> None:
        """Write one chunk; after a cut, writes are silently dropped."""
        if self.cut:
            return
        if self.cut_after is not None and self.sent >= self.cut_after:
            cut_connection(self.request, self.response)
            return
        if self.reset_after is not None and self.sent >= self.reset_after:
            reset_connection(self.request)
            return
        if self.stall_after is not None and self.sent >= self.stall_after:
            await go_silent(self.request)
        if self.delay:
            await asyncio.sleep(self.delay)
        await self.response.write(chunk)
        self.sent += 1

    async def event(self, data: object, *, event: str | None = None) -> None:
        """One SSE event: `event: NAME` (optional) and `data: <json>`."""
        end = self.line_end
        head = b"event: " + event.encode() + end if event else b""
        await self.write(head + b"data: " + orjson.dumps(data) + end + end)

    async def done(self) -> None:
        await self.write(b"data: [DONE]" + self.line_end + self.line_end)


async def open_stream(
    request: web.Request,
    *,
    content_type: str = SSE_CONTENT_TYPE,
    delay: float | None = None,
    cut_after: int | None = None,
    stall_after: int | None = None,
    reset_after: int | None = None,
    line_end: bytes = b"\n",
) -> ChunkWriter:
    """Send the headers of a chunked answer and return a writer for its body."""
    response = web.StreamResponse(status=200)
    response.content_type = content_type.split(";")[0]
    if "charset=" in content_type:
        response.charset = content_type.split("charset=")[1]
    if content_type.startswith("text/event-stream"):
        response.headers["cache-control"] = "no-cache"
    await response.prepare(request)
    return ChunkWriter(
        request,
        response,
        delay=delay,
        cut_after=cut_after,
        stall_after=stall_after,
        reset_after=reset_after,
        line_end=line_end,
    )
