"""Memory per open stream: the proxy's RSS at idle, with N slow streams open, and again.

Starts the fake OpenAI upstream of the test suite (in this process, on a thread), a real
``chatgpt-proxy serve`` in front of it (default settings, SQLite, moderation on; only
``server.max_upstream_connections`` raised to N + 100 so that no stream waits for a
connection), and a client in another process that opens ``--streams`` chat streams at once,
each relaying ``--words`` chunks ``--delay`` seconds apart. It reads the proxy's RSS from
``/proc`` while the streams are open (every 50 ms) and prints, per round, the streams whole,
the most open at once, the peak RSS over the idle baseline, and KiB per open stream; a second
round of the same load should not raise the peak (no leak)::

    .venv/bin/python bench/stream_memory.py                       # 2,000 streams, 2 rounds
    .venv/bin/python bench/stream_memory.py --streams 500 --tracemalloc /tmp/tm

With ``--tracemalloc DIR`` the proxy runs under ``tracemalloc`` and dumps a snapshot at idle
and at the peak of the first round, and the top allocation sites of the difference are
printed. ``--misses N`` then sends requests of 100 new messages each until N distinct
moderation inputs were judged, and prints the RSS after them (the verdict cache's bound).
Loopback only; raises its own file-descriptor limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
import lib  # noqa: E402
from fuzz import CGP, proxy_config  # noqa: E402

from fake_openai import FakeOpenAI  # noqa: E402
from servers import BackgroundLoop  # noqa: E402

CHAT = "/v1/chat/completions"
_COUNTED = {"whole", "broken", "most_open", "peak_rss_kib"}
# Run as the proxy with --tracemalloc: the first SIGUSR1 starts tracing (at idle; tracing
# from the start would slow its start-up past the wait), each dumps a numbered snapshot.
_TRACED_PROXY = """
import signal, sys, tracemalloc
directory, taken = sys.argv[1], []
def dump(*_):
    if not tracemalloc.is_tracing():  # from the idle moment on: only what comes after
        tracemalloc.start(8)
    path = f"{directory}/snapshot-{len(taken)}"
    tracemalloc.take_snapshot().dump(path)
    taken.append(path)
signal.signal(signal.SIGUSR1, dump)
from chatgpt_proxy.cli import main
sys.argv = ["chatgpt-proxy", *sys.argv[2:]]
sys.exit(main())
"""


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


# --- the client (its own process) ----------------------------------------------------------


async def _client(
    url: str, key: str, streams: int, words: int, delay: float, prompt_bytes: int
) -> dict[str, int]:
    # A chat history of ~prompt_bytes: earlier turns, then the question (the same for every
    # stream: after the first, moderation answers from its cache).
    history = [
        {"role": "user" if n % 2 else "assistant", "content": f"turn {n} " + "words " * 80}
        for n in range(prompt_bytes // 500)
    ]
    question = f"x [[fault:long:{words}]][[fault:slow:{delay}]]"
    body = {
        "model": "gpt-4o-mini",
        "messages": [*history, {"role": "user", "content": question}],
        "stream": True,
    }
    counts = {"whole": 0, "broken": 0}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=600)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as s:

        async def one() -> None:
            try:
                async with s.post(url + CHAT, json=body) as response:
                    data = await response.read()
                outcome = f"status {response.status}"
                if response.status == 200:
                    outcome = "whole" if data.endswith(b"data: [DONE]\n\n") else "cut"
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = type(exc).__name__
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome != "whole":
                counts["broken"] += 1

        await asyncio.gather(*(one() for _ in range(streams)))
    return counts


# --- the measuring side --------------------------------------------------------------------


def _round(url: str, key: str, args: argparse.Namespace, fake: FakeOpenAI, pid: int) -> dict:
    client = subprocess.Popen(
        [sys.executable, __file__, "--client", url, key, str(args.streams), str(args.words),
         str(args.delay), str(args.prompt_bytes)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    peak = most_open = 0
    dumped_at = 0.0
    while client.poll() is None:
        rss, open_now = lib.rss_kib(pid)[0], fake.open_requests
        if open_now >= most_open:
            most_open, peak = open_now, max(peak, rss)
            if args.tracemalloc and open_now and time.monotonic() - dumped_at > 2.0:
                os.kill(pid, signal.SIGUSR1)  # a snapshot at the most streams open so far
                dumped_at = time.monotonic()
        time.sleep(0.05)
    out, _ = client.communicate()
    return {**json.loads(out), "most_open": most_open, "peak_rss_kib": peak}


def _misses(url: str, key: str, count: int) -> None:
    """Requests of 100 new messages each until ``count`` distinct inputs were moderated."""

    async def send() -> None:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
            for start in range(0, count, 100):
                messages = [
                    {"role": "user", "content": f"a prompt never seen before, number {n}"}
                    for n in range(start, start + 100)
                ]
                body = {"model": "gpt-4o-mini", "messages": messages}
                async with s.post(url + CHAT, json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise SystemExit(f"a miss answered {response.status}")

    asyncio.run(send())


def _top_growth(directory: Path, lines: int = 15) -> None:
    last = max(int(path.name.split("-")[1]) for path in directory.glob("snapshot-*"))
    before, at_peak = (
        tracemalloc.Snapshot.load(str(directory / f"snapshot-{n}")) for n in (0, last)
    )
    print("tracemalloc, idle → peak of round 1, by allocation site:")
    for stat in at_peak.compare_to(before, "lineno")[:lines]:
        print(
            f"  {stat.size_diff / 1024:>10.0f} KiB {stat.count_diff:>+8} blocks  {stat.traceback}"
        )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--client"]:
        url, key, streams, words, delay, prompt_bytes = argv[1:]
        raise_fd_limit(int(streams) + 1000)
        counts = asyncio.run(
            _client(url, key, int(streams), int(words), float(delay), int(prompt_bytes))
        )
        print(json.dumps(counts))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000, help="streams open at once")
    parser.add_argument("--words", type=int, default=9, help="content chunks per stream")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds between chunks")
    parser.add_argument("--prompt-bytes", type=int, default=0, help="chat history sent, ~")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tracemalloc", type=Path, help="dump snapshots into this directory")
    parser.add_argument("--misses", type=int, default=0, help="distinct moderation inputs")
    args = parser.parse_args(argv)

    raise_fd_limit(2 * args.streams + 1000)  # the proxy inherits it: two sockets a stream
    logging.getLogger().setLevel(logging.CRITICAL)
    tmp = Path(tempfile.mkdtemp(prefix="cgp-stream-memory-"))
    loop = BackgroundLoop("stream-memory-fake-upstream")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        stack.callback(loop.close)
        fake = FakeOpenAI()
        fake.url = loop.start_app(fake.app)
        server = {"max_upstream_connections": args.streams + 100}
        config, url, key = proxy_config(
            tmp, fake.base_url, server=server, moderation={"enabled": True}
        )
        serve = [str(CGP), "serve", "--config", str(config)]
        if args.tracemalloc:  # the same proxy, under tracemalloc
            args.tracemalloc.mkdir(parents=True, exist_ok=True)
            serve = [sys.executable, "-c", _TRACED_PROXY, str(args.tracemalloc), *serve[1:]]
        process = stack.enter_context(lib.running(serve, log=tmp / "proxy.log"))
        if lib.wait(url + "/healthz", 30.0):
            print((tmp / "proxy.log").read_text()[-2000:], file=sys.stderr)
            return 2
        asyncio.run(
            _client(url, key, 20, 2, 0.01, args.prompt_bytes)
        )  # warm: imports, first connections
        time.sleep(1.0)
        idle = lib.rss_kib(process.pid)[0]
        if args.tracemalloc:
            os.kill(process.pid, signal.SIGUSR1)
        print(f"idle RSS: {idle:,} KiB ({args.streams:,} streams of {args.words} chunks "
              f"{args.delay} s apart per round, ~{args.prompt_bytes:,} B of chat history "
              "each)")  # fmt: skip
        failed = False
        for number in range(1, args.rounds + 1):
            fake.reset()
            result = _round(url, key, args, fake, process.pid)
            after = lib.rss_kib(process.pid)[0]
            per_stream = (result["peak_rss_kib"] - idle) / max(result["most_open"], 1)
            print(
                f"round {number}: {result['whole']:,} whole, {result['broken']:,} broken "
                f"{ {k: v for k, v in result.items() if k not in _COUNTED} }; "
                f"at most {result['most_open']:,} open at once; peak RSS "
                f"{result['peak_rss_kib']:,} KiB (+{result['peak_rss_kib'] - idle:,} over idle), "
                f"{per_stream:.1f} KiB per open stream; {after:,} KiB after", flush=True
            )  # fmt: skip
            failed |= result["whole"] != args.streams
        print(f"VmHWM (peak of the whole run): {lib.rss_kib(process.pid)[1]:,} KiB")
        if args.tracemalloc:
            _top_growth(args.tracemalloc)
        if args.misses:
            before = lib.rss_kib(process.pid)[0]
            _misses(url, key, args.misses)
            print(f"{args.misses:,} distinct moderation inputs: RSS {before:,} → "
                  f"{lib.rss_kib(process.pid)[0]:,} KiB")  # fmt: skip
        return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
