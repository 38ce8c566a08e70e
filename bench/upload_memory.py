"""Memory: a large file upload (``POST /v1/files``) through chatgpt-proxy, against its RSS at idle.

Starts a sink upstream (in this process: it reads each upload to its end, counting bytes and
keeping none, and answers a file object) and a real ``chatgpt-proxy serve`` in front of it
(its own process), sends one small upload to warm the proxy up, reads its RSS (idle), then
streams one ``--megabytes`` upload (default 500), generated as it is sent, so the client holds
none of it either. The proxy's RSS is sampled every 20 ms while it works, and its high-water
mark (``VmHWM``) read at the end; both are compared with the idle figure::

    .venv/bin/python bench/upload_memory.py                  # 500 MB
    .venv/bin/python bench/upload_memory.py --megabytes 100

Exit status 1 when the upload failed, did not arrive whole, or the peak exceeded idle by more
than ``--budget`` MB (100).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
import lib  # noqa: E402
from fuzz import proxy_running  # noqa: E402

from servers import BackgroundLoop  # noqa: E402

MB = 1024 * 1024
_CHUNK = 256 * 1024
_BOUNDARY = "cgp-bench-boundary-0123456789"


def sink() -> tuple[web.Application, list[int]]:
    """An upstream whose ``/v1/files`` counts an upload's bytes and keeps none."""
    received: list[int] = []

    async def files(request: web.Request) -> web.Response:
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
        received.append(size)
        answer = {"id": f"file-bench{len(received)}", "object": "file", "bytes": size}
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1/files", files)
    return app, received


async def form(size: int) -> AsyncIterator[bytes]:
    """A multipart body with a ``purpose`` field and a file of ``size`` bytes, made as sent."""
    yield (
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    block = b"x" * _CHUNK
    left = size
    while left > 0:
        yield block[: min(left, _CHUNK)]
        left -= _CHUNK
    yield f"\r\n--{_BOUNDARY}--\r\n".encode()


async def upload(url: str, key: str, size: int) -> tuple[int, str]:
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": f"multipart/form-data; boundary={_BOUNDARY}",
    }
    timeout = aiohttp.ClientTimeout(total=600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url + "/v1/files", data=form(size), headers=headers) as answer,
    ):
        return answer.status, await answer.text()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=500, help="size of the upload")
    parser.add_argument("--budget", type=int, default=100, help="MB over idle allowed at peak")
    args = parser.parse_args(argv)

    logging.getLogger().setLevel(logging.CRITICAL)
    tmp = Path(tempfile.mkdtemp(prefix="cgp-upload-"))
    loop = BackgroundLoop("upload-sink-upstream")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        stack.callback(loop.close)
        app, received = sink()
        upstream = loop.start_app(app) + "/v1"
        size = args.megabytes * MB
        server = {"max_file_bytes": size + MB, "upload_spool_dir": str(tmp)}
        process, url, key = stack.enter_context(proxy_running(tmp, upstream, server=server))
        if lib.wait(url + "/healthz", 30.0):
            return 2
        status, _ = asyncio.run(upload(url, key, 1024))  # imports and pools warmed up
        idle, _ = lib.rss_kib(process.pid)

        sampled = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                sampled.append(lib.rss_kib(process.pid)[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.monotonic()
        status, text = asyncio.run(upload(url, key, size))
        seconds = time.monotonic() - began
        done.set()
        sampler.join()
        _, high_water = lib.rss_kib(process.pid)
        peak = max(max(sampled), high_water)
        figures = {
            "upload_mb": args.megabytes,
            "status": status,
            "arrived_whole": bool(received) and received[-1] > size,
            "seconds": round(seconds, 1),
            "proxy_rss_mb_idle": round(idle / 1024, 1),
            "proxy_rss_mb_peak_sampled": round(max(sampled) / 1024, 1),
            "proxy_rss_mb_high_water": round(high_water / 1024, 1),
            "proxy_rss_mb_over_idle": round((peak - idle) / 1024, 1),
        }
        print(json.dumps(figures, indent=2), flush=True)
        if status != 200:
            print(text[:500])
        ok = status == 200 and figures["arrived_whole"] and peak - idle <= args.budget * 1024
        return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
