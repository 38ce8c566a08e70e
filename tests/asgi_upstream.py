"""A fake upstream that speaks HTTP/1.1 and HTTP/2 in clear (h2c) on one port: hypercorn serving
a small ASGI app, for the transport contract tests and ``bench/h2_transport.py``.

Routes: ``/json`` (the ``Authorization`` header echoed), ``/pieces`` (three SSE events),
``/slow-headers`` and ``/silent`` (stall before the headers, or after one event), ``/held``
(the connection's client port, then a stall),
``/reset`` (a body cut short), ``/redirect``; and for the bench ``/v1/chat/completions`` (a
chat completion, or with ``"stream": true`` ``events`` SSE chunks ``gap`` seconds apart),
``/v1/moderations`` (a clean verdict) and ``/v1/models``::

    async with serve_h2c(asgi_app(events=9, gap=0.25)) as base:   # "http://127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from hypercorn.asyncio import serve
from hypercorn.config import Config

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
LONG = 30.0  # a stall this long is cut off by the caller's limits long before

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
)
MODERATION = orjson.dumps(
    {
        "id": "modr-1",
        "model": "omni-moderation-latest",
        "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
    }
)
MODELS = orjson.dumps(
    {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "x"}]}
)


def _chunk(n: int, content: str, finish: str | None) -> bytes:
    delta = {"content": content} if content else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1}
    event |= {"model": "gpt-4o-mini", "choices": [choice]}
    return b"data: " + orjson.dumps(event) + b"\n\n"


async def _start(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _whole(send: Send, body: bytes, status: int = 200) -> None:
    length = (b"content-length", str(len(body)).encode())
    await _start(send, status, [(b"content-type", b"application/json"), length])
    await send({"type": "http.response.body", "body": body})


async def _body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


SSE = [(b"content-type", b"text/event-stream")]


def asgi_app(*, events: int = 9, gap: float = 0.25) -> App:
    """The fake's app; chat streams send ``events`` chunks ``gap`` seconds apart."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        # Read whole before answering: hypercorn's HTTP/2 fails the connection on a stream's
        # data arriving after its answer ended.
        body = await _body(receive)
        if path == "/json":
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            await _whole(send, orjson.dumps({"echo": auth}))
        elif path == "/pieces":
            await _start(send, 200, SSE)
            for n in range(3):
                piece = f"data: {n}\n\n".encode()
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/slow-headers":
            await asyncio.sleep(LONG)
        elif path == "/silent":
            await _start(send, 200, SSE)
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            await asyncio.sleep(LONG)
        elif path == "/held":  # the connection's client port, then a stall
            await _start(send, 200, SSE)
            port = str(scope["client"][1]).encode()
            await send({"type": "http.response.body", "body": port, "more_body": True})
            await asyncio.sleep(LONG)
        elif path == "/reset":
            await _start(send, 200, [(b"content-length", b"1000")])
            # The body ends short of its announced length: the server cuts the connection
            # (HTTP/1.1) or the client's h2 refuses the stream (HTTP/2).
            await send({"type": "http.response.body", "body": b'{"partial": ', "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/redirect":
            await _start(send, 302, [(b"location", b"/json")])
            await send({"type": "http.response.body", "body": b""})
        elif path == "/v1/moderations":
            await _whole(send, MODERATION)
        elif path == "/v1/models":
            await _whole(send, MODELS)
        elif path == "/v1/chat/completions":
            if b'"stream":true' not in body.replace(b" ", b""):
                await _whole(send, COMPLETION)
                return
            await _start(send, 200, SSE)
            for n in range(events):
                if n:
                    await asyncio.sleep(gap)
                last = n == events - 1
                chunk = _chunk(n, "" if last else f"w{n} ", "stop" if last else None)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        else:
            await _whole(send, b'{"error": {"message": "no such route"}}', 404)

    return app


@contextlib.asynccontextmanager
async def serve_h2c(app: App, *, streams: int = 100, port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (HTTP/1.1 and h2c), allowing ``streams`` per connection."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)  # connections made before hypercorn runs wait in the backlog
    bound = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]  # hypercorn owns the socket from here
    config.h2_max_concurrent_streams = streams
    config.backlog = 4096
    config.graceful_timeout = 0.1
    config.keep_alive_timeout = 60
    config.accesslog = None
    config.errorlog = None
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        stop.set()
        await server
