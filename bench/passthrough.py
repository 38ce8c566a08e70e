"""The floor of the stack: a bare aiohttp + uvloop pass-through proxy, nothing else.

No auth, routing, limits, metering, logging or error mapping: it forwards the request body
to one upstream and relays the answer (whole, or chunk by chunk for SSE), with the same
libraries, event loop and server options (``handler_cancellation``) as chatgpt-proxy.
bench/run.sh measures it next to chatgpt-proxy to tell the cost of the framework from the
cost of the proxy's own work::

    python bench/passthrough.py --port 8081 --upstream http://127.0.0.1:8080
    python bench/passthrough.py --port 8081 --upstream URL --connections 0 --reuse-port  # x N
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import aiohttp
import uvloop
from aiohttp import web

_FORWARD = ("Content-Type", "Accept")


async def serve(port: int, upstream: str, *, connections: int, reuse_port: bool) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections), cookie_jar=aiohttp.DummyCookieJar()
    )

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {name: request.headers[name] for name in _FORWARD if name in request.headers}
        async with session.post(upstream + request.path, data=body, headers=headers) as answer:
            content_type = answer.headers.get("Content-Type", "application/json")
            if not content_type.startswith("text/event-stream"):
                return web.Response(
                    body=await answer.read(),
                    status=answer.status,
                    headers={"Content-Type": content_type},
                )
            response = web.StreamResponse(
                status=answer.status, headers={"Content-Type": content_type}
            )
            await response.prepare(request)
            while chunk := await answer.content.readany():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        # as chatgpt-proxy's server.py does (DESIGN §4: a client that leaves cancels at once)
        handler_cancellation=os.environ.get("PASSTHROUGH_HANDLER_CANCELLATION", "1") == "1",
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=8192, reuse_port=reuse_port or None)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/passthrough.py", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port (no path)")
    parser.add_argument(
        "--connections", type=int, default=1000, help="upstream connections at most (0: no cap)"
    )
    parser.add_argument(
        "--reuse-port", action="store_true", help="SO_REUSEPORT: several of these on one port"
    )
    args = parser.parse_args(argv)
    upstream = args.upstream.rstrip("/")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(
            serve(args.port, upstream, connections=args.connections, reuse_port=args.reuse_port)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
