"""Keys chosen by headroom: ``least_headroom`` against ``round_robin`` on keys of unequal limits.

The fake OpenAI upstream of the tests (``tests/fake_openai``, in this process on a thread of its
own) enforces per-key request and token limits that refill continuously, tells them in
``x-ratelimit-*`` headers, and answers OpenAI's 429 past them. ``chatgpt-proxy serve`` (its own
process, one worker, sqlite, moderation off) stands in front of it with the three keys, once per
strategy; an open-loop client sends chat requests at a steady rate above what the roomiest key
holds but below what all three do. Printed per strategy: the 429s the upstream answered the proxy,
the requests served per second, and the errors the client saw::

    .venv/bin/python bench/headroom.py                       # 30 s per strategy at 10 req/s
    .venv/bin/python bench/headroom.py --seconds 10 --rate 14

Limits are per ``--window`` seconds (a minute at OpenAI, shortened here so a run is short).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
import lib  # noqa: E402

from fake_openai import FAKE_KEYS, FakeOpenAI  # noqa: E402
from servers import BackgroundLoop  # noqa: E402

STRATEGIES = ("round_robin", "least_headroom")
# Requests and tokens each key may use per window: the first key's token limit binds before its
# request limit does (a chat request of the benchmark costs about 90 tokens as OpenAI counts).
LIMITS = ((60, 3_000), (30, 9_000), (15, 9_000))


@dataclass
class Outcome:
    strategy: str
    sent: int
    served: int
    seconds: float
    client_errors: Counter[int]
    upstream_429: int
    per_key: list[int]
    latency: tuple[float, float]  # p50, p99 seconds

    @property
    def rate(self) -> float:
        return self.served / self.seconds


async def _one(
    session: aiohttp.ClientSession, url: str, key: str, body: bytes
) -> tuple[int, float]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.monotonic()
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return response.status, time.monotonic() - started
    except (aiohttp.ClientError, TimeoutError):
        return 0, time.monotonic() - started  # no answer at all


async def _load(
    url: str, key: str, rate: float, seconds: float
) -> tuple[list[tuple[int, float]], float]:
    """Requests at ``rate`` a second for ``seconds``, each sent on time whatever the others do."""
    body = lib.request_body().encode()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks.append(asyncio.create_task(_one(session, url, key, body)))
        answers = await asyncio.gather(*tasks)
        return list(answers), loop.time() - start


def _config(tmp: Path, port: int, upstream: str, strategy: str, keys: int) -> Path:
    base = lib.proxy_conf(
        port=port,
        upstream=upstream,
        db=f"sqlite:///{tmp}/{strategy}.db",
        access_log=False,
        moderation_on=False,
        redis=None,
    )
    config = json.loads(base)
    config["upstreams"][0].update(keys=list(FAKE_KEYS[:keys]), strategy=strategy)
    path = tmp / f"{strategy}.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    return path


def _limit(fake: FakeOpenAI, window: float) -> None:
    fake.reset()  # and what the proxy's start-up sent does not count
    for key, (requests, tokens) in zip(FAKE_KEYS, LIMITS, strict=False):
        fake.limit_key(key, requests=requests, tokens=tokens, window=window)


def run(fake: FakeOpenAI, cgp: Path, tmp: Path, strategy: str, args: argparse.Namespace) -> Outcome:
    (port,) = lib.free_ports(1)
    config = _config(tmp, port, fake.base_url, strategy, len(LIMITS))
    key = lib.create_key(cgp, config, "headroom")
    log = tmp / f"{strategy}.log"
    with lib.running([str(cgp), "serve", "--config", str(config)], log=log):
        if lib.wait(f"http://127.0.0.1:{port}/healthz", 30.0):
            raise SystemExit(f"the proxy did not start: see {log}")
        _limit(fake, args.window)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        answers, seconds = asyncio.run(_load(url, key, args.rate, args.seconds))
    used = Counter(r.key for r in fake.requests if r.path == "/v1/chat/completions")
    statuses = [status for status, _ in answers]
    served = sum(1 for status in statuses if status == 200)
    latencies = sorted(latency for _, latency in answers)
    return Outcome(
        strategy,
        sent=len(statuses),
        served=served,
        seconds=seconds,
        client_errors=Counter(status for status in statuses if status != 200),
        upstream_429=fake.limited(),
        per_key=[used[k] - fake.limited(k) for k in FAKE_KEYS[: len(LIMITS)]],
        latency=(_quantile(latencies, 0.5), _quantile(latencies, 0.99)),
    )


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def render(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    capacity = ", ".join(f"{r} req + {t} tok" for r, t in LIMITS)
    lines = [
        f"keys: {capacity} per {args.window:g} s; load {args.rate:g} req/s for {args.seconds:g} s",
        "",
        "| strategy | sent | served/s | client errors | upstream 429s | served per key"
        " | latency p50 / p99 |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for o in outcomes:
        errors = sum(o.client_errors.values())
        detail = ", ".join(f"{n} x {s or 'none'}" for s, n in sorted(o.client_errors.items()))
        lines.append(
            f"| {o.strategy} | {o.sent} | {o.rate:.2f} | {errors}{f' ({detail})' if detail else ''}"
            f" | {o.upstream_429} | {' / '.join(map(str, o.per_key))}"
            f" | {o.latency[0] * 1000:.1f} / {o.latency[1] * 1000:.1f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/headroom.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--rate", type=float, default=10.0, help="requests a second")
    parser.add_argument("--window", type=float, default=6.0, help="seconds of a key's limits")
    parser.add_argument("--strategy", choices=STRATEGIES, action="append", help="only these")
    args = parser.parse_args(argv)
    cgp = Path(sys.executable).parent / "chatgpt-proxy"
    if not cgp.exists():
        print(f"{cgp} not found: install the project in this Python's venv", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="headroom."))
    loop = BackgroundLoop("fake-openai")
    fake = FakeOpenAI(keys=FAKE_KEYS)
    fake.url = loop.start_app(fake.app)
    try:
        outcomes = [run(fake, cgp, tmp, s, args) for s in args.strategy or STRATEGIES]
        print(render(outcomes, args))
    finally:
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
