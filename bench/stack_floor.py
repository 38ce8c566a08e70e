"""The floor under any proxy built on this stack: the memory and CPU that one open stream costs
aiohttp's server alone, and an HTTP client alone, with no proxy code at all.

A proxy holds two connections per stream, one from its client and one to the upstream; the
bare pass-through (``bench/passthrough.py``) is the two halves with nothing between them. This
script measures each half on its own, each in a fresh process that does nothing else:

- ``server``: an aiohttp server (uvloop, the pass-through's runner options) whose handler
  streams the events itself; the streams are opened by a client in another process.
- ``client``: ``AiohttpTransport``, the proxy's own upstream client (aiohttp's
  ``ClientSession``), reading streams from a plain asyncio server in another process.
- ``pyreqwest``: the Rust-backed client (hyper), HTTP/1.1, as a candidate transport; measured
  when it is installed (``pip install -e '.[bench]'``), skipped otherwise.

Each opens ``--streams`` streams at once (``--events`` events ``--gap`` seconds apart), and
prints the RSS per open stream above the process's warmed-up idle, and the CPU per stream::

    .venv/bin/python bench/stack_floor.py                   # 3,000 streams, 5 events 2 s apart
    .venv/bin/python bench/stack_floor.py --streams 5000 --gap 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lib  # noqa: E402
from ladder import raise_fd_limit  # noqa: E402

from chatgpt_proxy.upstream.transport import AiohttpTransport, Timeouts, TransportRequest  # noqa: E402

EVENT = b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"hi"}}]}\n\n'
BODY = lib.request_body(stream=True).encode()
WARM = 20  # streams run before the idle RSS is read: pools, caches and allocator settled


def _rss_kib() -> int:
    return lib.rss_kib(os.getpid())[0]


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


# --- the far ends: what the measured half talks to -------------------------------------------


async def raw_upstream(port: int, events: int, gap: float) -> None:
    """A plain asyncio HTTP/1.1 server streaming ``events`` chunked events per request."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for _ in range(events):
                    await asyncio.sleep(gap)
                    writer.write(b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
                    await writer.drain()
                done = b"data: [DONE]\n\n"
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=8192)
    await server.serve_forever()


async def raw_clients(url: str, count: int) -> None:
    """``count`` streams at once from aiohttp's client: the load for the ``server`` half."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.post(url, data=BODY) as response:
                while await response.content.readany():
                    pass

        await asyncio.gather(*(one() for _ in range(count)))


# --- the measured halves ---------------------------------------------------------------------


async def _measure(
    start: Callable[[], Awaitable[None]], opened: Callable[[], int], count: int, done: asyncio.Event
) -> dict[str, float]:
    """RSS per stream at the peak (all ``count`` open) and CPU per stream, once ``done``."""
    base = _rss_kib()
    cpu = _cpu()
    await start()
    peak = 0
    while not done.is_set():
        if opened() >= count:
            peak = max(peak, _rss_kib())
        await asyncio.sleep(0.1)
    return {"rss_kib": (peak - base) / count, "cpu_ms": (_cpu() - cpu) / count * 1000}


async def measure_server(count: int, events: int, gap: float) -> dict[str, float]:
    state = {"open": 0, "finished": 0}
    done = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        state["open"] += 1
        for _ in range(events):
            await asyncio.sleep(gap)
            await response.write(EVENT)
        await response.write_eof()
        state["finished"] += 1
        if state["finished"] == WARM + count:
            done.set()
        return response

    app = web.Application()
    app.router.add_post("/stream", stream)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    (port,) = lib.free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port, backlog=8192).start()
    url = f"http://127.0.0.1:{port}/stream"
    loader = [sys.executable, __file__, "--load", url]
    warm = await asyncio.create_subprocess_exec(*loader, str(WARM))
    await warm.wait()
    state["open"] = 0
    load: list[asyncio.subprocess.Process] = []

    async def start() -> None:
        load.append(await asyncio.create_subprocess_exec(*loader, str(count)))

    try:
        return await _measure(start, lambda: state["open"], count, done)
    finally:
        for process in load:
            await process.wait()
        await runner.cleanup()


async def measure_client(kind: str, count: int, events: int, gap: float) -> dict[str, float]:
    (port,) = lib.free_ports(1)
    far = [sys.executable, __file__, "--upstream", str(port), "--events", str(events)]
    upstream = await asyncio.create_subprocess_exec(*far, "--gap", repr(gap))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    state = {"open": 0}
    try:
        async with asyncio.timeout(30.0):
            await _wait_port(port)
        one, close = _aiohttp_stream(url) if kind == "client" else _pyreqwest_stream(url)
        await asyncio.gather(*(one(None) for _ in range(WARM)))
        done = asyncio.Event()
        tasks: list[asyncio.Future[list[None]]] = []

        async def start() -> None:
            tasks.append(asyncio.gather(*(one(state) for _ in range(count))))
            tasks[0].add_done_callback(lambda _: done.set())

        figures = await _measure(start, lambda: state["open"], count, done)
        await tasks[0]
        await close()
        return figures
    finally:
        upstream.terminate()
        await upstream.wait()


async def _wait_port(port: int) -> None:
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


Stream = Callable[[dict[str, int] | None], Awaitable[None]]


def _aiohttp_stream(url: str) -> tuple[Stream, Callable[[], Awaitable[None]]]:
    transport = AiohttpTransport(max_connections=0)
    headers = {"Content-Type": "application/json"}
    timeouts = Timeouts(10.0, 60.0)
    request = TransportRequest("POST", url, headers, BODY, timeouts=timeouts, lasting=True)

    async def one(state: dict[str, int] | None) -> None:
        response = await transport.send(request)
        try:
            if state is not None:
                state["open"] += 1
            while await response.read_chunk():
                pass
        finally:
            response.release()

    return one, transport.close


def _pyreqwest_stream(url: str) -> tuple[Stream, Callable[[], Awaitable[None]]]:
    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().max_connections(None).build()

    async def one(state: dict[str, int] | None) -> None:
        builder = client.post(url).header("Content-Type", "application/json").body_bytes(BODY)
        # Without a small read buffer limit nothing of a streamed body is handed over until
        # 64 KiB of it or its end has arrived.
        async with builder.streamed_read_buffer_limit(1).build_streamed() as response:
            if state is not None:
                state["open"] += 1
            while await response.body_reader.read_chunk() is not None:
                pass

    return one, client.close


def _has_pyreqwest() -> bool:
    try:
        import pyreqwest  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/stack_floor.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--events", type=int, default=5)
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between events")
    parser.add_argument("--half", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.upstream:
        uvloop.run(raw_upstream(args.upstream, args.events, args.gap))
        return 0
    if args.load:
        uvloop.run(raw_clients(args.load[0], int(args.load[1])))
        return 0
    if args.half:
        if args.half == "server":
            figures = uvloop.run(measure_server(args.streams, args.events, args.gap))
        else:
            figures = uvloop.run(measure_client(args.half, args.streams, args.events, args.gap))
        print(json.dumps(figures))
        return 0
    halves = ["server", "client"] + (["pyreqwest"] if _has_pyreqwest() else [])
    print(f"{args.streams:,} streams at once, {args.events} events {args.gap:g} s apart")
    print("| half | RSS per open stream | CPU per stream |\n|---|---:|---:|")
    common = ["--streams", str(args.streams), "--events", str(args.events), "--gap", str(args.gap)]
    for half in halves:
        out = subprocess.run(
            [sys.executable, __file__, "--half", half, *common],
            check=True,
            capture_output=True,
            text=True,
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {half} | {figures['rss_kib']:.1f} KiB | {figures['cpu_ms']:.2f} ms |", flush=True)
    if "pyreqwest" not in halves:
        print("\npyreqwest is not installed (pip install -e '.[bench]'): its row is left out")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
