"""Time to first chunk, direct vs through chatgpt-proxy, against a slow streaming upstream.

A fake upstream (aiohttp, its own process) streams chat chunks with a fixed delay: the first
chunk after ``--delay`` seconds, then one every ``--delay``. Every chunk carries the moment it
was written (CLOCK_MONOTONIC, which all processes of the machine share), so the client can tell
both how long it waited for the first chunk and how long each chunk spent between leaving the
upstream and reaching it. The proxy is started by this script (one worker, its own sqlite key
store in a temporary directory) and everything is stopped on exit::

    .venv/bin/python bench/first_chunk.py                 # 20 samples each way
    .venv/bin/python bench/first_chunk.py --samples 50 --delay 0.1

Target: the first chunk reaches the client through the proxy within a few ms of the moment it
reaches it directly (the proxy relays, it never buffers a stream).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lib  # noqa: E402

_STAMP = re.compile(rb'"content":"@([\d.]+)@"')


# --- the fake upstream ---------------------------------------------------------------------


def _chunk(delta: dict[str, object], finish: str | None, usage: bool) -> bytes:
    event: dict[str, object] = {
        "id": "chatcmpl-firstchunk",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        event["usage"] = None
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def upstream_app(delay: float, chunks: int) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n in range(chunks):
            await asyncio.sleep(delay)
            delta: dict[str, object] = {"content": f"@{time.monotonic():.6f}@"}
            if n == 0:
                delta["role"] = "assistant"
            await response.write(_chunk(delta, None, usage))
        await response.write(_chunk({}, "stop", usage))
        if usage:
            tail: dict[str, object] = {
                "id": "chatcmpl-firstchunk",
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": {"prompt_tokens": 19, "completion_tokens": chunks},
            }
            await response.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", healthz)
    return app


def serve_upstream(port: int, delay: float, chunks: int) -> None:
    web.run_app(
        upstream_app(delay, chunks), host="127.0.0.1", port=port, print=None, access_log=None
    )


# --- the measurement ----------------------------------------------------------------------


async def one(
    session: aiohttp.ClientSession, url: str, key: str | None
) -> tuple[float, float, list[float]]:
    """(time to first chunk, first chunk's relay delay, every chunk's relay delay), seconds."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = lib.request_body(stream=True).encode()
    started = time.monotonic()
    first: float | None = None
    relays: list[float] = []
    pending = b""
    async with session.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: status {response.status}: {await response.text()}")
        while True:
            data = await response.content.readany()
            now = time.monotonic()
            if not data:
                break
            if first is None:
                first = now
            pending += data
            cut = pending.rfind(b"\n\n")
            if cut < 0:
                continue
            for stamp in _STAMP.findall(pending[:cut]):  # whole events only
                relays.append(now - float(stamp))
            pending = pending[cut + 2 :]
    if first is None or not relays:
        raise RuntimeError(f"{url}: no chunk arrived")
    return first - started, relays[0], relays


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _ms(value: float) -> str:
    return f"{value * 1000:.2f}"


async def measure(direct: str, proxied: str, key: str, samples: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {
        name: []
        for name in (
            "ttfc_direct",
            "ttfc_proxy",
            "ttfc_added",
            "relay_first_direct",
            "relay_first_proxy",
            "relay_all_direct",
            "relay_all_proxy",
        )
    }
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # warm-up: connections, caches
            await one(session, direct, None)
            await one(session, proxied, key)
        for n in range(samples):
            order = [("direct", direct, None), ("proxy", proxied, key)]
            if n % 2:
                order.reverse()  # neither side always goes first
            got = {}
            for name, url, auth in order:
                got[name] = await one(session, url, auth)
            for name in ("direct", "proxy"):
                ttfc, relay_first, relay_all = got[name]
                results[f"ttfc_{name}"].append(ttfc)
                results[f"relay_first_{name}"].append(relay_first)
                results[f"relay_all_{name}"].extend(relay_all)
            results["ttfc_added"].append(got["proxy"][0] - got["direct"][0])
    return results


def render(results: dict[str, list[float]], samples: int, delay: float, chunks: int) -> str:
    rows = [
        ("time to first chunk, direct", "ttfc_direct"),
        ("time to first chunk, through chatgpt-proxy", "ttfc_proxy"),
        ("**added by the proxy** (paired difference)", "ttfc_added"),
        ("first chunk: upstream write → client, direct", "relay_first_direct"),
        ("first chunk: upstream write → client, through the proxy", "relay_first_proxy"),
        ("every chunk: upstream write → client, direct", "relay_all_direct"),
        ("every chunk: upstream write → client, through the proxy", "relay_all_proxy"),
    ]
    out = [
        "## Time to first chunk (bench/first_chunk.py)",
        "",
        f"Fake upstream: first chunk after {delay * 1000:.0f} ms, then {chunks - 1} more every "
        f"{delay * 1000:.0f} ms; {samples} samples each way, one at a time, keep-alive "
        "connections, direct and proxied alternately.",
        "",
        "| measure | median ms | p90 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for label, name in rows:
        values = results[name]
        out.append(
            f"| {label} | {_ms(statistics.median(values))} | {_ms(_pct(values, 0.9))} "
            f"| {_ms(max(values))} |"
        )
    added = statistics.median(results["ttfc_added"]) * 1000
    verdict = "on target" if added < 5 else "ABOVE the few-ms target"
    out += [
        "",
        f"Median added time to first chunk: {added:.2f} ms ({verdict}: the first chunk should "
        f"reach the client ≈ {delay * 1000:.0f} ms after the request, i.e. one upstream "
        "chunk-delay, plus a few ms at most).",
    ]
    return "\n".join(out)


# --- processes ----------------------------------------------------------------------------


def _pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None and shutil.which("taskset") else argv


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/first_chunk.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds between chunks")
    parser.add_argument("--chunks", type=int, default=3, help="content chunks per answer")
    parser.add_argument("--tmp", type=Path, help="work directory (default: a new temporary one)")
    parser.add_argument("--server-cpu", help="core for chatgpt-proxy (taskset)")
    parser.add_argument("--load-cpu", help="core for the fake upstream and this client")
    parser.add_argument("--markdown", type=Path, help="also write the result section here")
    parser.add_argument("--upstream-only", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.upstream_only:
        serve_upstream(args.upstream_only, args.delay, args.chunks)
        return 0

    cgp = Path(sys.executable).parent / "chatgpt-proxy"
    if not cgp.exists():
        print(f"{cgp} not found: install the project in this Python's venv", file=sys.stderr)
        return 1
    own_tmp = args.tmp is None
    tmp = Path(tempfile.mkdtemp(prefix="first-chunk.")) if own_tmp else args.tmp
    tmp.mkdir(parents=True, exist_ok=True)
    if args.load_cpu is not None:
        os.sched_setaffinity(0, {int(c) for c in args.load_cpu.split(",")})
    up_port, proxy_port = lib.free_ports(2)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with contextlib.ExitStack() as stack:
        if own_tmp:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        upstream_cmd = [sys.executable, __file__, "--upstream-only", str(up_port)]
        upstream_cmd += ["--delay", str(args.delay), "--chunks", str(args.chunks)]
        stack.enter_context(lib.running(_pinned(args.load_cpu, upstream_cmd)))
        config = tmp / "proxy.yaml"
        config.write_text(
            lib.proxy_conf(
                port=proxy_port,
                upstream=f"http://127.0.0.1:{up_port}/v1",
                db=f"sqlite:///{tmp}/first_chunk.db",
                access_log=True,
                moderation_on=False,
                redis=None,
            )
        )
        key = lib.create_key(cgp, config, "first-chunk")
        serve = [str(cgp), "serve", "--config", str(config)]
        stack.enter_context(lib.running(_pinned(args.server_cpu, serve), log=tmp / "proxy.log"))
        for url in (
            f"http://127.0.0.1:{up_port}/v1/models",
            f"http://127.0.0.1:{proxy_port}/healthz",
        ):
            if lib.wait(url, 30.0):
                return 1
        results = asyncio.run(
            measure(
                f"http://127.0.0.1:{up_port}/v1/chat/completions",
                f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
                key,
                args.samples,
            )
        )
        text = render(results, args.samples, args.delay, args.chunks)
        print(text)
        if args.markdown:
            args.markdown.write_text(text + "\n")
        return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
