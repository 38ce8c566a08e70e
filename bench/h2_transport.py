"""HTTP/1.1 (aiohttp) against HTTP/2 (httpx2 + h2) to the upstream, at thousands of streams.

Everything runs on 127.0.0.1 and is stopped on exit. The fake upstream (``tests/asgi_upstream``:
hypercorn, its own process, HTTP/1.1 and h2c on one port, ``--upstream-streams`` streams per
HTTP/2 connection) streams ``--events`` chat chunks ``--gap`` seconds apart. One chatgpt-proxy
per transport (``server.upstream_http`` "1.1" and "2"; moderation on, so every chat request
also makes a ``/v1/moderations`` call, its timeout raised to ``--moderation-timeout``;
``max_upstream_connections`` raised to 20,000 so that HTTP/1.1 is limited by nothing but
itself); while one is measured the other is parked with
SIGSTOP. For each rung of the ladder and each transport, in turn::

    .venv/bin/python bench/h2_transport.py                       # 1,000 / 5,000 / 10,000
    .venv/bin/python bench/h2_transport.py --ladder 1000 --short-rounds 1

it opens N streams at once and prints: streams whole (``data: [DONE]`` seen), refused (an
HTTP error), failed (no answer), first-byte p50/p99 and total p50 as the client sees them, the
proxy's peak RSS and RSS per stream above its idle RSS before the rung, and the peak number of
the proxy's connections to the upstream (from ``/proc/net/tcp``). Then short non-streamed
chat requests at ``--short-conns`` connections for ``--short-seconds``, in ``--short-rounds``
interleaved rounds: requests/s of each, and the paired ratio HTTP/2 ÷ HTTP/1.1. The bare
clients' table has a pyreqwest row: ``pip install -e '.[bench]'`` first.

The script raises its file descriptor limit (and so the children's) to the hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import lib
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from asgi_upstream import asgi_app, serve_h2c
from chatgpt_proxy.upstream.httpx_transport import HttpxTransport
from chatgpt_proxy.upstream.transport import AiohttpTransport, Timeouts, TransportRequest

KINDS = ("1.1", "2")
RAW = ("aiohttp (1.1)", "httpx2 (h2)", "pyreqwest")


def serve_upstream(port: int, events: int, gap: float, streams: int) -> None:
    async def forever() -> None:
        async with serve_h2c(asgi_app(events=events, gap=gap), streams=streams, port=port):
            await asyncio.Event().wait()

    uvloop.run(forever())


def _raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` whose remote port is ``port``."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    wanted = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[3] == "01" and fields[2].endswith(wanted) and fields[9] in inodes:
                    count += 1
    return count


@dataclass
class Sampler:
    """Samples the proxy's RSS and its upstream connections in a thread, keeping the peaks."""

    pid: int
    upstream_port: int
    rss_peak: int = 0
    connections_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.rss_peak = max(self.rss_peak, lib.rss_kib(self.pid)[0])
            self.connections_peak = max(
                self.connections_peak, _connections_to(self.pid, self.upstream_port)
            )
            self._stop.wait(0.2)

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


@dataclass
class Rung:
    whole: int = 0
    refused: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # of the refused: status and code
    failed: int = 0
    first_byte: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)


def _body(stream: bool, n: int) -> bytes:
    message = {"role": "user", "content": f"Say hello, number {n}."}  # moderation cache misses
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [message], "stream": stream})


async def _one_stream(session: aiohttp.ClientSession, url: str, n: int, rung: Rung) -> None:
    start = time.perf_counter()
    try:
        async with session.post(url, data=_body(True, n)) as response:
            if response.status != 200:
                body = await response.read()
                rung.refused += 1
                code = body.partition(b'"code":')[2][:40].split(b",")[0].decode(errors="replace")
                what = f"{response.status} {code.strip()}"
                rung.statuses[what] = rung.statuses.get(what, 0) + 1
                return
            tail = b""
            first = True
            async for chunk in response.content.iter_any():
                if first:
                    rung.first_byte.append(time.perf_counter() - start)
                    first = False
                tail = (tail + chunk)[-64:]
            if b"data: [DONE]" in tail:
                rung.whole += 1
                rung.total.append(time.perf_counter() - start)
            else:
                rung.failed += 1
    except (aiohttp.ClientError, OSError, TimeoutError):
        rung.failed += 1


async def streams(url: str, key: str, count: int) -> Rung:
    rung = Rung()
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:
        await asyncio.gather(*(_one_stream(session, url, n, rung) for n in range(count)))
    return rung


async def short_calls(
    url: str, key: str, connections: int, seconds: float, pid: int
) -> tuple[float, float]:
    """Non-streamed chat requests per second at ``connections`` at once, and the proxy's CPU
    milliseconds per request (which the machine's other load changes far less)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    done = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections), headers=headers
    ) as session:

        async def worker(w: int) -> None:
            nonlocal done
            n = 0
            while time.perf_counter() < end:
                async with session.post(url, data=_body(False, w * 1_000_000 + n)) as response:
                    await response.read()
                    done += response.status == 200
                n += 1

        await asyncio.sleep(0)
        end = time.perf_counter() + 1.0  # warm-up
        await asyncio.gather(*(worker(w) for w in range(connections)))
        done = 0
        cpu = lib.cputime(pid)
        start = time.perf_counter()
        end = start + seconds
        await asyncio.gather(*(worker(w) for w in range(connections)))
        elapsed = time.perf_counter() - start
        return done / elapsed, (lib.cputime(pid) - cpu) / max(done, 1) * 1000


async def _raw_stream(kind: str, client: object, url: str, rung: Rung) -> None:
    """One stream straight to the upstream with the bare client ``kind``."""
    start = time.perf_counter()
    tail = b""
    try:
        if kind == "pyreqwest":
            # Without a small read buffer limit pyreqwest hands over nothing of a streamed body
            # until its default buffer (far larger than a chat stream) is full or the body ends.
            builder = client.post(url).body_bytes(_body(True, 0))  # type: ignore[attr-defined]
            request = builder.streamed_read_buffer_limit(1).build_streamed()
            async with request as response:
                while (chunk := await response.body_reader.read_chunk()) is not None:
                    if not tail:
                        rung.first_byte.append(time.perf_counter() - start)
                    tail = (tail + bytes(chunk))[-64:]
        else:
            sent = TransportRequest("POST", url, {}, _body(True, 0), Timeouts(60.0, 300.0))
            answer = await client.send(sent)  # type: ignore[attr-defined]
            try:
                while chunk := await answer.read_chunk():
                    if not tail:
                        rung.first_byte.append(time.perf_counter() - start)
                    tail = (tail + chunk)[-64:]
            finally:
                answer.release()
    except Exception:
        rung.failed += 1
        return
    if b"data: [DONE]" in tail:
        rung.whole += 1
        rung.total.append(time.perf_counter() - start)
    else:
        rung.failed += 1


async def raw_clients(kind: str, base: str, count: int) -> Rung:
    """``count`` streams at once from the bare client ``kind`` in this process."""
    rung = Rung()
    if kind == "pyreqwest":
        from pyreqwest.client import ClientBuilder

        client: object = ClientBuilder().http2_prior_knowledge().max_connections(None).build()
    elif kind == "httpx2 (h2)":
        client = HttpxTransport(max_connections=20_000)
    else:
        client = AiohttpTransport(max_connections=20_000)
    url = base + "/v1/chat/completions"
    try:
        await asyncio.gather(*(_raw_stream(kind, client, url, rung) for _ in range(count)))
    finally:
        await client.close()  # type: ignore[attr-defined]
    return rung


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Proxy:
    kind: str
    port: int
    key: str
    process: subprocess.Popen[bytes]

    def park(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def wake(self) -> None:
        self.process.send_signal(signal.SIGCONT)


def _start_proxy(
    cgp: Path, tmp: Path, kind: str, port: int, upstream: int, moderation_timeout: float
) -> Proxy:
    config = tmp / f"proxy-{kind}.yaml"
    text = lib.proxy_conf(
        port=port,
        upstream=f"http://127.0.0.1:{upstream}/v1",
        db=f"sqlite:///{tmp}/proxy-{kind}.db",
        access_log=False,
        moderation_on=True,
        redis=None,
    )
    settings = orjson.loads(text)
    settings["server"] |= {"upstream_http": kind, "max_upstream_connections": 20_000}
    settings["moderation"]["timeout"] = moderation_timeout
    # A starved machine reads the clients' requests late: no 408 for what is the CPU's delay.
    settings["server"] |= {"header_timeout": moderation_timeout}
    settings["server"] |= {"body_idle_timeout": moderation_timeout}
    config.write_text(orjson.dumps(settings).decode())
    key = lib.create_key(cgp, config, f"h2-bench-{kind}")
    log = open(tmp / f"proxy-{kind}.log", "wb")  # noqa: SIM115 (lives as long as the proxy)
    process = subprocess.Popen([str(cgp), "serve", "--config", str(config)], stdout=log, stderr=log)
    return Proxy(kind, port, key, process)


def _raw(args: argparse.Namespace, up_port: int) -> int:
    """Each bare client in a process of its own, straight to the upstream."""
    print(
        "| streams | client | whole | failed | first byte p50 | total p50 | client RSS idle → peak "
        "| RSS per stream | connections | client CPU per stream |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = f"http://127.0.0.1:{up_port}"
    for count in (int(n) for n in args.ladder.split(",")):
        for kind in RAW:
            command = [sys.executable, __file__, "--client-only", kind, base, str(count)]
            process = subprocess.Popen(command, stdout=subprocess.PIPE)
            time.sleep(1.0)  # imported, not yet sending
            idle = lib.rss_kib(process.pid)[0]
            cpu = lib.cputime(process.pid)
            spent = cpu
            with Sampler(process.pid, up_port).running() as sampler:
                while process.poll() is None:
                    spent = lib.cputime(process.pid) or spent
                    time.sleep(0.2)
            out, _ = process.communicate()
            rung = Rung(**orjson.loads(out.splitlines()[-1]))
            print(
                f"| {count:,} | {kind} | {rung.whole:,} | {rung.failed:,} "
                f"| {_pct(rung.first_byte, 0.5):.2f} s | {_pct(rung.total, 0.5):.2f} s "
                f"| {idle / 1024:.0f} → {sampler.rss_peak / 1024:.0f} MiB "
                f"| {(sampler.rss_peak - idle) / count:.1f} KiB | {sampler.connections_peak:,} "
                f"| {(spent - cpu) / count * 1000:.2f} ms |",
                flush=True,
            )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/h2_transport.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ladder", default="1000,5000,10000", help="concurrent streams")
    parser.add_argument("--events", type=int, default=9, help="chat chunks per stream")
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between chunks")
    parser.add_argument("--upstream-streams", type=int, default=100, help="per h2 connection")
    parser.add_argument(
        "--moderation-timeout",
        type=float,
        default=120.0,
        help="seconds (the default 10 s refuses streams when the machine is slow: this bench "
        "measures the transports, not the queue in front of moderation)",
    )
    parser.add_argument("--short-conns", type=int, default=50)
    parser.add_argument("--short-seconds", type=float, default=5.0)
    parser.add_argument("--short-rounds", type=int, default=3)
    parser.add_argument(
        "--raw", action="store_true", help="the bare clients straight to the upstream, no proxy"
    )
    parser.add_argument("--upstream-only", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--client-only", nargs=3, metavar=("KIND", "BASE", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    limit = _raise_fd_limit()
    if args.upstream_only:
        serve_upstream(args.upstream_only, args.events, args.gap, args.upstream_streams)
        return 0
    if args.client_only:
        kind, base, count = args.client_only
        rung = uvloop.run(raw_clients(kind, base, int(count)))
        sys.stdout.write(orjson.dumps(rung.__dict__).decode() + "\n")
        return 0

    cgp = Path(sys.executable).parent / "chatgpt-proxy"
    tmp = Path(tempfile.mkdtemp(prefix="h2-bench."))
    up_port, *proxy_ports = lib.free_ports(1 + len(KINDS))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream_cmd = [sys.executable, __file__, "--upstream-only", str(up_port)]
        upstream_cmd += ["--events", str(args.events), "--gap", str(args.gap)]
        upstream_cmd += ["--upstream-streams", str(args.upstream_streams)]
        processes.append(subprocess.Popen(upstream_cmd))
        if lib.wait(f"http://127.0.0.1:{up_port}/v1/models", 180.0):
            return 1
        if args.raw:
            return _raw(args, up_port)
        proxies = [
            _start_proxy(cgp, tmp, kind, port, up_port, args.moderation_timeout)
            for kind, port in zip(KINDS, proxy_ports, strict=True)
        ]
        processes += [proxy.process for proxy in proxies]
        for proxy in proxies:
            if lib.wait(f"http://127.0.0.1:{proxy.port}/healthz", 180.0):
                return 1
            proxy.park()

        print(
            f"fd limit {limit}; upstream: {args.events} events {args.gap} s apart, "
            f"{args.upstream_streams} streams per HTTP/2 connection; moderation on\n"
        )
        print(
            "| streams | upstream_http | whole | refused | failed | first byte p50 / p99 "
            "| total p50 | proxy RSS idle → peak | RSS per stream | upstream connections |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for count in (int(n) for n in args.ladder.split(",")):
            for proxy in proxies:
                proxy.wake()
                url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
                idle = lib.rss_kib(proxy.process.pid)[0]
                cpu = lib.cputime(proxy.process.pid)
                with Sampler(proxy.process.pid, up_port).running() as sampler:
                    rung = asyncio.run(streams(url, proxy.key, count))
                cpu = (lib.cputime(proxy.process.pid) - cpu) / count * 1000
                proxy.park()
                per_stream = (sampler.rss_peak - idle) / count
                print(
                    f"| {count:,} | {proxy.kind} | {rung.whole:,} | {rung.refused:,} "
                    f"| {rung.failed:,} | {_pct(rung.first_byte, 0.5):.2f} s / "
                    f"{_pct(rung.first_byte, 0.99):.2f} s | {_pct(rung.total, 0.5):.2f} s "
                    f"| {idle / 1024:.0f} → {sampler.rss_peak / 1024:.0f} MiB "
                    f"| {per_stream:.1f} KiB | {sampler.connections_peak:,} | {cpu:.2f} ms |",
                    flush=True,
                )
                if rung.statuses:
                    print(f"  refused: {rung.statuses}", flush=True)
                time.sleep(2.0)  # the closed connections leave the tables

        rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
        costs: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for r in range(args.short_rounds):
            order = proxies[r % len(proxies) :] + proxies[: r % len(proxies)]
            for proxy in order:
                proxy.wake()
                url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
                rate, cost = asyncio.run(
                    short_calls(
                        url, proxy.key, args.short_conns, args.short_seconds, proxy.process.pid
                    )
                )
                rates[proxy.kind].append(rate)
                costs[proxy.kind].append(cost)
                proxy.park()
        paired = [two / one for one, two in zip(rates["1.1"], rates["2"], strict=True)]
        print(
            f"\nshort non-streamed chat calls, {args.short_conns} connections, "
            f"{args.short_seconds:.0f} s x {args.short_rounds} rounds (moderation call each):"
        )
        for kind in KINDS:
            values = ", ".join(f"{v:.0f}" for v in rates[kind])
            cost = statistics.median(costs[kind])
            print(
                f"- HTTP/{kind}: median {statistics.median(rates[kind]):.0f} req/s ({values}); "
                f"proxy CPU {cost:.2f} ms per request"
            )
        print(
            f"- HTTP/2 ÷ HTTP/1.1, paired: median {statistics.median(paired):.2f} "
            f"({', '.join(f'{p:.2f}' for p in paired)})"
        )
        return 0
    finally:
        lib.stop_processes(processes)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
