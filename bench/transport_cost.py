"""What the upstream transport costs per request, client side only: a micro-benchmark for a
machine too busy for ``run.sh``.

A separate process serves canned answers (a ~670-byte JSON answer; a stream of 22 SSE events
written one by one, as OpenAI sends them, so that each tends to arrive on its own). This
process reads them through each way of talking to the upstream, in interleaved rounds, and
counts its own CPU time per request (``time.process_time``): the whole proxy does more per
request, so a share of this is an upper bound of the share of the proxy's throughput.

- ``old-internals``: the code before the transport seam: aiohttp's ``sock_read`` for the
  headers, then its protocol's private ``read_timeout``/``start_timeout()`` switched off, and
  the idle watch's one sweep.
- ``transport+watch``: ``AiohttpTransport`` (public API only): ``sock_read`` off for a stream,
  ``asyncio.timeout`` around the wait for its headers, and the idle watch.
- ``transport, no timer``: the same with no limit on the headers: the seam's own cost.
- ``transport+sock_read``: ``AiohttpTransport`` with ``idle`` set: aiohttp re-arms ``sock_read``
  on every chunk, no watch.
- ``json-old`` / ``json-transport``: a non-streamed answer, before and after.

    .venv/bin/python bench/transport_cost.py [--rounds 5] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop
from aiohttp import web

from chatgpt_proxy.upstream.idle import IdleWatch
from chatgpt_proxy.upstream.transport import AiohttpTransport, Timeouts, TransportRequest

JSON_BODY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[' + b" " * 600 + b"]}"
EVENT = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"word"}}]}' + b" " * 200
EVENTS = 22
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


def _serve(port: int) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=JSON_BODY, content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(EVENTS):
            await response.write(EVENT + b"\n\n")
            await asyncio.sleep(0)  # one event per write, as an upstream generating them
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/json", answer)
    app.router.add_get("/sse", stream)
    web.run_app(app, host="127.0.0.1", port=port, print=None, loop=uvloop.new_event_loop())


Way = Callable[[], Awaitable[int]]


async def _measure(requests: int, way: Way, concurrency: int = 10) -> float:
    """Client CPU microseconds per request."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await way()

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / requests * 1e6


async def _main(port: int, rounds: int, requests: int) -> None:
    base = f"http://127.0.0.1:{port}"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, enable_cleanup_closed=True),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    transport = AiohttpTransport(max_connections=100)
    watch = IdleWatch(idle=120.0)
    watch.start()
    headers_limit = aiohttp.ClientTimeout(sock_connect=10.0, sock_read=60.0)

    async def old_internals() -> int:
        response = await session.get(base + "/sse", headers=HEADERS, timeout=headers_limit)
        connection = response.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = None  # the private API this change removes
            connection.protocol.start_timeout()
        _ = response.content_type, response.content_length  # judged, as the proxy does
        watched = watch.watch(response)  # type: ignore[arg-type]  # as the old client did
        size = 0
        while True:
            watched.wait()
            chunk = await response.content.readany()
            watched.touch()
            if not chunk:
                break
            size += len(chunk)
        watched.done()
        response.release()
        return size

    async def through(timeouts: Timeouts, watched_stream: bool, path: str) -> int:
        limits = timeouts.within(599.9)  # as the client does: cut to the deadline left
        request = TransportRequest("GET", base + path, HEADERS, None, limits)
        response = await transport.send(request)
        watched = watch.watch(response) if watched_stream else None
        if path == "/json":  # an answer that comes whole: its head, then the rest
            body = await response.read_chunk()
            body += await response.read(1 << 20)
            response.release()
            return len(body)
        size = 0
        while True:
            if watched is not None:
                watched.wait()
            chunk = await response.read_chunk()
            if watched is not None:
                watched.touch()
            if not chunk:
                break
            size += len(chunk)
        if watched is not None:
            watched.done()
        response.release()
        return size

    async def json_old() -> int:
        # As the old client did: its limit cut to the deadline left, a new ClientTimeout.
        answer_limit = aiohttp.ClientTimeout(sock_connect=10.0, sock_read=599.9)
        response = await session.get(base + "/json", headers=HEADERS, timeout=answer_limit)
        _ = response.content_type, response.content_length  # judged, as the proxy does
        body = await response.content.readany()  # the head, to see it is JSON
        while chunk := await response.content.read(1 << 20):
            body += chunk
        response.release()
        return len(body)

    stream_watched = Timeouts(10.0, 60.0)
    stream_unbounded = Timeouts(10.0)
    stream_sock_read = Timeouts(10.0, 60.0, 120.0)
    answer = Timeouts(10.0, 600.0, 600.0)
    ways: dict[str, Way] = {
        "old-internals": old_internals,
        "transport+watch": lambda: through(stream_watched, True, "/sse"),
        "transport, no timer": lambda: through(stream_unbounded, True, "/sse"),
        "transport+sock_read": lambda: through(stream_sock_read, False, "/sse"),
        "json-old": json_old,
        "json-transport": lambda: through(answer, False, "/json"),
    }
    for way in ways.values():  # warm-up: connections open, code paths hot
        await _measure(200, way)
    names = list(ways)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            results[name].append(await _measure(requests, ways[name]))
    await watch.stop()
    await transport.close()
    await session.close()

    def paired(name: str, base_name: str) -> float:
        return statistics.median(
            a / b for a, b in zip(results[name], results[base_name], strict=True)
        )

    print(f"client CPU per request, µs (median of {rounds} interleaved rounds of {requests})")
    for name in names:
        print(f"  {name:22} {statistics.median(results[name]):8.1f}")
    print("paired ratios (median of per-round ratios)")
    for name, base_name in [
        ("transport+watch", "old-internals"),
        ("transport, no timer", "old-internals"),
        ("transport+sock_read", "old-internals"),
        ("transport+sock_read", "transport+watch"),
        ("json-transport", "json-old"),
    ]:
        print(f"  {name + ' / ' + base_name:40} {paired(name, base_name):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_main(port, args.rounds, args.requests))
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
