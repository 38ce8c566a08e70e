"""``serve --workers 2`` against one worker: throughput with wrk, CPU per request, exact limits.

A canned nginx upstream (``bench/lib.py upstream-conf``) answers JSON on one port and a stream on
another; chatgpt-proxy runs with Redis limits on (a key with rpm and tpm limits too high to
refuse, so that every request is checked in Redis) and its SQLite store, once with one worker and
once with two, for non-streamed and streamed requests. Each round runs wrk against the four
(the order rotated by one each round) and reads, for each run, requests per second and the CPU
seconds the serving processes spent per request (from /proc): the first is what the machine gave
this run, the second (less what the workers spend idle) tells whether two workers do the same
work per request as one (a lock or write contention between them would show there, whatever the
machine's load). Last, a key with
``--rpm N`` is sent 3N requests at once over fresh connections to the two workers: Redis must
admit exactly N.

Where two workers spend more CPU per request than one, two more figures per run tell why: the
Redis round trips per request (Redis's own count of the reads it served: one per batch of
commands a worker pipelines) and the times per request a worker was preempted (its
``nonvoluntary_ctxt_switches``). ``--redis none`` keeps the limits in each worker's memory, to
see what is left of the difference without Redis (the exactness check is then skipped)::

    .venv/bin/python bench/workers.py                     # 3 rounds of 10 s
    .venv/bin/python bench/workers.py --rounds 5 --duration 5 --redis redis://127.0.0.1:6379/0
    .venv/bin/python bench/workers.py --redis none
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lib  # noqa: E402
from ladder import Target, new_key, start_proxy  # noqa: E402


@dataclass
class Run:
    scenario: str
    rps: float
    cpu_per_request: float  # seconds, summed over the serving processes
    redis_reads: float  # Redis round trips per request
    preempted: float  # times per request a serving process was switched out against its will


def wrk(url: str, key: str, body: str, duration: float, connections: int) -> tuple[float, int]:
    """(requests per second, requests done) of one wrk run."""
    env = {**os.environ, "BENCH_BODY": body, "BENCH_KEY": key}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-s", str(HERE / "post.lua")]
    out = subprocess.run([*command, url], env=env, capture_output=True, text=True, check=True)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    done = re.search(r"(\d+) requests in", out.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    if rps is None or done is None or errors is not None:
        raise RuntimeError(f"wrk against {url}:\n{out.stdout}{out.stderr}")
    return float(rps.group(1)), int(done.group(1))


def preemptions(pid: int) -> int:
    """How often the process has been switched out while it could have run."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


def redis_reads(client: redis.Redis | None) -> int:
    """The read events Redis has served: one per batch of commands a client sent."""
    return int(client.info("stats")["total_reads_processed"]) if client is not None else 0


def measure(
    target: Target, key: str, stream: bool, args: argparse.Namespace, store: redis.Redis | None
) -> Run:
    body = lib.request_body(stream=stream)
    url = target.url + "/v1/chat/completions"
    wrk(url, key, body, 2, args.connections)  # warm-up
    pids = target.pids()
    # What the workers spend with no request (key cache refresh, usage flush, Redis state)
    # is taken out: at the few hundred requests a second this machine gives, it would
    # otherwise count double for two workers.
    cpu = sum(lib.cputime(pid) for pid in pids)
    time.sleep(args.idle)
    idle_rate = (sum(lib.cputime(pid) for pid in pids) - cpu) / args.idle
    cpu = sum(lib.cputime(pid) for pid in pids)
    reads = redis_reads(store)
    switches = sum(preemptions(pid) for pid in pids)
    began = time.monotonic()
    rps, done = wrk(url, key, body, args.duration, args.connections)
    cpu = sum(lib.cputime(pid) for pid in pids) - cpu - idle_rate * (time.monotonic() - began)
    reads = redis_reads(store) - reads
    switches = sum(preemptions(pid) for pid in pids) - switches
    kind = "streamed" if stream else "non-streamed"
    return Run(
        f"{kind}, {target.workers} worker(s)", rps, cpu / done, reads / done, switches / done
    )


async def admitted(url: str, key: str, count: int) -> dict[int, int]:
    """Statuses of ``count`` requests sent at once, each on a connection of its own."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(n: int) -> None:
            body = lib.request_body(prompt=f"exact {n}")
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(one(n) for n in range(count)))
    return statuses


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/workers.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU measured")
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/0", help="or none: limits in memory"
    )
    parser.add_argument("--rpm", type=int, default=200, help="the limit checked for exactness")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        hint = "Debian/Ubuntu: apt-get install -y wrk nginx-light; bench/run.sh installs them too"
        print(f"bench/workers.py needs {' and '.join(missing)} ({hint})", file=sys.stderr)
        return 2

    cgp = Path(sys.executable).parent / "chatgpt-proxy"
    tmp = Path(tempfile.mkdtemp(prefix="workers."))
    tmp.chmod(0o755)  # nginx's workers run as nobody when started as root
    json_port, sse_port = lib.free_ports(2)
    (tmp / "upstream.conf").write_text(lib.upstream_conf(tmp, json_port, sse_port))
    nginx = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(tmp / "upstream.conf")])
    targets: dict[tuple[bool, int], Target] = {}
    store = None if args.redis == "none" else redis.Redis.from_url(args.redis)
    try:
        db = f"sqlite:///{tmp}/workers.db"
        for stream, port in ((False, json_port), (True, sse_port)):
            for workers in (1, 2):
                upstream = f"http://127.0.0.1:{port}/v1"
                targets[stream, workers] = start_proxy(
                    tmp,
                    cgp,
                    upstream,
                    workers,
                    db=db,
                    redis=None if store is None else args.redis,
                    moderation=False,
                    key_name=None if targets else "bench-first",  # the first one makes the store
                )
        config = next(iter(targets.values())).config
        limits = ["--rpm", "100000000", "--tpm", "100000000000"]  # checked, never refusing
        key = new_key(cgp, config, "--name", "bench-limited", *limits)
        for target in targets.values():
            if lib.wait(target.url + "/healthz", 60.0):
                return 1
        time.sleep(2.0)  # the proxies' key caches refresh: the keys made after their start
        order = list(targets)
        runs: list[list[Run]] = []
        for number in range(args.rounds):
            shift = number % len(order)
            results = {}
            for which in order[shift:] + order[:shift]:
                stream, _ = which
                results[which] = measure(targets[which], key, stream, args, store)
            runs.append([results[which] for which in order])
            print(
                f"round {number + 1}: "
                + ", ".join(f"{r.scenario} {r.rps:,.0f} req/s" for r in runs[-1]),
                flush=True,
            )
        print()
        print(
            "| scenario | req/s (median) | CPU per request | 2 workers ÷ 1 (paired) "
            "| Redis round trips per request | preempted per request |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for index, which in enumerate(order):
            rps = [round_runs[index].rps for round_runs in runs]
            cpu = [round_runs[index].cpu_per_request for round_runs in runs]
            ratio = ""
            if which[1] == 2:
                single = order.index((which[0], 1))
                ratio = f"{statistics.median(r[index].rps / r[single].rps for r in runs):.2f}"
            name = runs[0][index].scenario
            reads = statistics.median(round_runs[index].redis_reads for round_runs in runs)
            preempted = statistics.median(round_runs[index].preempted for round_runs in runs)
            print(
                f"| {name} | {statistics.median(rps):,.0f} | "
                f"{statistics.median(cpu) * 1e6:,.0f} µs | {ratio} | {reads:.2f} | "
                f"{preempted:.3f} |"
            )
        if store is None:
            print("\nlimits in memory: the exactness of Redis limits is not checked")
            return 0
        limited = new_key(cgp, config, "--name", "bench-exact", "--rpm", str(args.rpm))
        time.sleep(2.0)  # as above
        url = targets[False, 2].url + "/v1/chat/completions"
        statuses = asyncio.run(admitted(url, limited, 3 * args.rpm))
        exact = statuses.get(200, 0) == args.rpm
        print(
            f"\nrpm {args.rpm} key, {3 * args.rpm} requests at once to 2 workers: {statuses} "
            f"({'exact' if exact else 'NOT exact'})"
        )
        return 0 if exact else 1
    finally:
        for target in targets.values():
            target.stop()
        lib.stop_processes([nginx])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
