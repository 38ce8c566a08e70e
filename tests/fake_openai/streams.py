"""Writing streamed answers (SSE events, raw byte chunks) with scripted delays and cuts."""

from __future__ import annotations

import asyncio

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


class ChunkWriter:
    """Writes the chunks of one streamed answer, honouring `slow` (a delay before each chunk) and
    `cut` (after that many chunks, close the connection instead of writing more)."""

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        *,
        delay: float | None = None,
        cut_after: int | None = None,
    ) -> None:
        self.request = request
        self.response = response
        self.delay = delay
        self.cut_after = cut_after
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
        if self.delay:
            await asyncio.sleep(self.delay)
        await self.response.write(chunk)
        self.sent += 1

    async def event(self, data: object, *, event: str | None = None) -> None:
        """One SSE event: `event: NAME` (optional) and `data: <json>`."""
        head = f"event: {event}\n".encode() if event else b""
        await self.write(head + b"data: " + orjson.dumps(data) + b"\n\n")

    async def done(self) -> None:
        await self.write(b"data: [DONE]\n\n")


async def open_stream(
    request: web.Request,
    *,
    content_type: str = SSE_CONTENT_TYPE,
    delay: float | None = None,
    cut_after: int | None = None,
) -> ChunkWriter:
    """Send the headers of a chunked answer and return a writer for its body."""
    response = web.StreamResponse(status=200)
    response.content_type = content_type.split(";")[0]
    if "charset=" in content_type:
        response.charset = content_type.split("charset=")[1]
    if content_type.startswith("text/event-stream"):
        response.headers["cache-control"] = "no-cache"
    await response.prepare(request)
    return ChunkWriter(request, response, delay=delay, cut_after=cut_after)
