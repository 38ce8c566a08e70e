"""Soak: many concurrent slow streams through chatgpt-proxy, some of whose clients leave.

Starts the fake OpenAI upstream of the test suite (in this process, where it counts the
requests it is still answering) and a real ``chatgpt-proxy serve`` in front of it (its own
process), then, for ``--rounds`` rounds, opens ``--streams`` slow chat streams at once plus
``--leavers`` more whose clients read a few chunks and drop the connection. Prints the streams
completed whole, the upstream requests still open at the end (every leaver's must have been
closed), and the proxy's RSS before and after each round. Loopback only; each round is bounded
by ``--timeout``::

    .venv/bin/python bench/soak.py                           # 1,000 streams + 200 leavers
    .venv/bin/python bench/soak.py --streams 200 --leavers 50 --delay 0.1

Exit status 1 when a stream was not relayed whole or an upstream request was left open.
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
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
import lib  # noqa: E402
from fuzz import proxy_running  # noqa: E402

from fake_openai import FakeOpenAI  # noqa: E402
from servers import BackgroundLoop  # noqa: E402

CHAT = "/v1/chat/completions"


@dataclass
class Results:
    whole: int = 0
    broken: dict[str, int] = field(default_factory=dict)
    left: int = 0

    def fail(self, why: str) -> None:
        self.broken[why] = self.broken.get(why, 0) + 1


def _body(words: int, delay: float) -> dict[str, object]:
    prompt = f"soak [[fault:long:{words}]][[fault:slow:{delay}]]"
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
    }


async def stream_whole(
    session: aiohttp.ClientSession, url: str, body: dict[str, object], words: int, results: Results
) -> None:
    """One client reading its stream to the end: whole means every word, then [DONE]."""
    try:
        async with session.post(url + CHAT, json=body) as response:
            if response.status != 200:
                results.fail(f"status {response.status}")
                return
            data = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        results.fail(type(exc).__name__)
        return
    events = [line for line in data.split(b"\n") if line.startswith(b"data: ")]
    text = b"".join(events)
    if events[-1:] != [b"data: [DONE]"]:
        results.fail("no [DONE]" if b'"error"' not in text else "error event")
    elif text.count(b'"content":"') < words:  # the role chunk has no content
        results.fail("chunks missing")
    else:
        results.whole += 1


async def leave_midway(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, object],
    results: Results,
    chunks: int = 3,
) -> None:
    """One client that reads a few chunks, then drops its connection."""
    try:
        async with session.post(url + CHAT, json=body) as response:
            seen = 0
            async for _ in response.content.iter_any():
                seen += 1
                if seen >= chunks:
                    break
            response.close()  # the connection is dropped, not returned to the pool
            results.left += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        results.fail(f"leaver {type(exc).__name__}")


async def soak(url: str, key: str, args: argparse.Namespace, fake: FakeOpenAI) -> Results:
    results = Results()
    body = _body(args.words, args.delay)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:
        tasks = [stream_whole(session, url, body, args.words, results) for _ in range(args.streams)]
        tasks += [leave_midway(session, url, body, results) for _ in range(args.leavers)]
        began = time.monotonic()
        gathered = asyncio.gather(*tasks)
        peak = 0
        while not gathered.done():
            peak = max(peak, fake.open_requests)
            await asyncio.wait([gathered], timeout=0.2)
        await gathered
        print(
            f"all clients done in {time.monotonic() - began:.1f} s; "
            f"at most {peak} upstream requests open at once"
        )
    return results


def run_round(
    number: int, url: str, key: str, args: argparse.Namespace, fake: FakeOpenAI, pid: int
) -> bool:
    """One round of streams and leavers; prints its figures; whether everything held."""
    rss_before = lib.rss(pid).split()[0]
    results = asyncio.run(soak(url, key, args, fake))
    open_when_done = fake.open_requests
    # Leavers' upstream requests end when the proxy notices; give it a bounded while.
    waited = time.monotonic()
    closed = fake.wait_for_open_requests(0, timeout=10.0)
    waited = time.monotonic() - waited
    rss_after, rss_peak = lib.rss(pid).split()
    figures = {
        "round": number,
        "streams": args.streams,
        "completed_whole": results.whole,
        "broken": results.broken,
        "leavers": args.leavers,
        "left_midway": results.left,
        "upstream_disconnects_seen": len(fake.disconnects),
        "upstream_requests_open_when_clients_done": open_when_done,
        "upstream_requests_open_at_end": fake.open_requests,
        "seconds_until_none_open": round(waited, 2) if closed else None,
        "proxy_rss_kb_before": int(rss_before),
        "proxy_rss_kb_after": int(rss_after),
        "proxy_rss_kb_peak": int(rss_peak),
    }
    print(json.dumps(figures, indent=2), flush=True)
    return results.whole == args.streams and closed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000, help="slow streams read whole")
    parser.add_argument("--leavers", type=int, default=200, help="clients leaving mid-stream")
    parser.add_argument("--words", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--delay", type=float, default=0.25, help="seconds between chunks")
    parser.add_argument("--timeout", type=float, default=180, help="seconds for one round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (RSS should level off)")
    args = parser.parse_args(argv)

    logging.getLogger().setLevel(logging.CRITICAL)
    tmp = Path(tempfile.mkdtemp(prefix="cgp-soak-"))
    loop = BackgroundLoop("soak-fake-upstream")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        stack.callback(loop.close)
        fake = FakeOpenAI()
        fake.url = loop.start_app(fake.app)
        limit = args.streams + args.leavers + 100
        process, url, key = stack.enter_context(
            proxy_running(tmp, fake.base_url, server={"max_upstream_connections": limit})
        )
        if lib.wait(url + "/healthz", 30.0):
            return 2
        failed = False
        for number in range(1, args.rounds + 1):
            fake.reset()  # counts per round; nothing is open between rounds
            failed |= not run_round(number, url, key, args, fake, process.pid)
        return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
