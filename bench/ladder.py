"""The concurrency ladder: thousands of slow streams at once, through chatgpt-proxy and through
the bare aiohttp pass-through (``bench/passthrough.py``), in the same run.

For each rung (1,000 / 5,000 / 10,000 concurrent streams by default) both targets are started
fresh in front of the same fake upstream, warmed up, and sent that many chat streams at once by
several client processes (so that the load generator is not the bottleneck). The fake upstream
(aiohttp, ``--upstreams`` processes on one port) answers each stream with 9 events 250 ms apart
(7 content chunks, the finish chunk, the usage chunk, then ``[DONE]``) and moderation checks at
once. chatgpt-proxy runs with its default settings (SQLite, moderation on; every prompt differs,
so every moderation check is a call upstream); a rung above ``--one-process-max`` runs both
targets with 2 processes (``serve --workers 2``; two pass-throughs on one port), since an
HTTP/1.1 stream holds two file descriptors and a process may hold 20,000 here::

    .venv/bin/python bench/ladder.py                       # 1,000 / 5,000 / 10,000
    .venv/bin/python bench/ladder.py --ladder 500,2000 --clients 2

Two more targets split the proxy's added first byte into its parts: ``chatgpt-proxy/cached``
sends one prompt over and over (after the warm-up, every verdict comes from the moderation
cache) and ``chatgpt-proxy/unmoderated`` runs with moderation off::

    .venv/bin/python bench/ladder.py --ladder 2000 --gap 6 --ramp 20 \
        --targets pass-through,chatgpt-proxy,chatgpt-proxy/cached,chatgpt-proxy/unmoderated

Printed per rung and target: streams whole (every chunk, then [DONE]), refused (503), other
failures, first byte p50/p99 (request sent → first chunk; the upstream's own is 250 ms), total
time p50, peak RSS (summed over the serving processes), RSS per stream above the idle process,
and the most sockets the serving processes held open at once. The script raises its own
RLIMIT_NOFILE (and its children's) to the hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import uvloop
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lib  # noqa: E402
from first_chunk import _chunk, _pct  # noqa: E402

CHAT = "/v1/chat/completions"
CONTENT_CHUNKS = 7  # + the finish chunk and the usage chunk: 9 events


def raise_fd_limit() -> int:
    """The soft RLIMIT_NOFILE raised to the hard one (inherited by the children started)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- the fake upstream ---------------------------------------------------------------------


def upstream_app(gap: float) -> web.Application:
    events = [
        _chunk(
            {"role": "assistant", "content": "w0"} if n == 0 else {"content": f"w{n}"}, None, True
        )
        for n in range(CONTENT_CHUNKS)
    ]
    events.append(_chunk({}, "stop", True))
    usage = {"prompt_tokens": 19, "completion_tokens": CONTENT_CHUNKS, "total_tokens": 26}
    tail = {"id": "chatcmpl-ladder", "object": "chat.completion.chunk", "choices": []}
    events.append(b"data: " + orjson.dumps({**tail, "usage": usage}) + b"\n\n")
    events[-1] += b"data: [DONE]\n\n"

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await asyncio.sleep(gap)
            await response.write(event)
        await response.write_eof()
        return response

    async def moderations(request: web.Request) -> web.Response:
        document = orjson.loads(await request.read())
        inputs = document.get("input")
        verdict = orjson.loads(lib.moderation())
        result = verdict["results"][0]
        verdict["results"] = [result] * (len(inputs) if isinstance(inputs, list) else 1)
        return web.Response(body=orjson.dumps(verdict), content_type="application/json")

    async def models(_: web.Request) -> web.Response:
        return web.Response(text=lib.models(), content_type="application/json")

    app = web.Application()
    app.router.add_post(CHAT, chat)
    app.router.add_post("/v1/moderations", moderations)
    app.router.add_get("/v1/models", models)
    return app


async def serve_upstream(port: int, gap: float) -> None:
    runner = web.AppRunner(upstream_app(gap), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_port=True).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# --- the clients ---------------------------------------------------------------------------


async def one_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    delay: float = 0.0,
) -> tuple[str, float, float]:
    """(outcome, first byte, total) of one stream begun ``delay`` seconds late; outcome:
    whole, refused, or what broke."""
    await asyncio.sleep(delay)
    began = time.monotonic()
    first = 0.0
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                error = await response.read()
                code = orjson.loads(error).get("error", {}).get("code") if error[:1] == b"{" else ""
                # Refused is the proxy's answer past its capacity; other 503s (a moderation
                # check that timed out) are failures.
                refused = code == "server_overloaded"
                outcome = "refused" if refused else f"{response.status} {code or ''}".strip()
                return outcome, 0.0, time.monotonic() - began
            data = b""
            while chunk := await response.content.readany():
                if not first:
                    first = time.monotonic() - began
                data += chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        errno = getattr(exc, "errno", None)
        return f"{type(exc).__name__} {errno or ''}".strip(), 0.0, time.monotonic() - began
    total = time.monotonic() - began
    words = all(b'"content":"w%d"' % n in data for n in range(CONTENT_CHUNKS))
    whole = words and data.endswith(b"data: [DONE]\n\n") and b'"usage":{' in data
    return ("whole" if whole else "broken"), first, total


async def run_client(
    url: str, key: str, count: int, at: float, tag: str, ramp: float = 0.0, same: bool = False
) -> list[object]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=300)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    bodies = []
    for n in range(count):  # unless `same`, every prompt differs: no verdict from the cache
        prompt = "ladder: hello" if same else f"ladder {tag}-{n}: hello"
        document = orjson.loads(lib.request_body(stream=True, prompt=prompt))
        document["stream_options"] = {"include_usage": True}
        bodies.append(orjson.dumps(document))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.sleep(max(0.0, at - time.time()))
        results = await asyncio.gather(
            *(
                one_stream(session, url, body, headers, n * ramp / count)
                for n, body in enumerate(bodies)
            )
        )
    return [list(result) for result in results]


# --- the targets ---------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    processes: list[subprocess.Popen[bytes]]
    url: str
    key: str = "none"
    workers: int = 1
    config: Path | None = None
    same_prompt: bool = False  # one prompt for every stream: its verdict comes from the cache

    def pids(self) -> list[int]:
        """The serving processes: the workers of a ``serve --workers N``, else the processes."""
        pids = [p.pid for p in self.processes]
        if self.workers > 1 and len(pids) == 1:
            return [pid for pid in lib.children(pids[0]) if _is_worker(pid)]
        return pids

    def stop(self) -> None:
        lib.stop_processes(self.processes, grace=15.0)


def _is_worker(pid: int) -> bool:
    try:
        return b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def start_proxy(
    tmp: Path,
    cgp: Path,
    upstream: str,
    workers: int,
    *,
    db: str | None = None,
    redis: str | None = None,
    moderation: bool = True,
    key_name: str | None = "ladder",
) -> Target:
    """``chatgpt-proxy serve`` with default settings but these; its store a new SQLite file
    unless ``db`` is given; a key named ``key_name`` made before it starts."""
    (port,) = lib.free_ports(1)
    config = tmp / f"proxy-{port}.yaml"
    db = db or f"sqlite:///{tmp}/ladder-{port}.db"
    text = lib.proxy_conf(
        port=port, upstream=upstream, db=db, access_log=True, moderation_on=moderation, redis=redis
    )
    config.write_text(text)
    key = new_key(cgp, config, "--name", key_name) if key_name else "none"
    command = [str(cgp), "serve", "--config", str(config), "--workers", str(workers)]
    with open(tmp / f"proxy-{port}.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
    return Target("chatgpt-proxy", [process], f"http://127.0.0.1:{port}", key, workers, config)


def new_key(cgp: Path, config: Path, *options: str) -> str:
    """A client key made by ``chatgpt-proxy keys create`` (its secret is the last line)."""
    command = [str(cgp), "keys", "create", "--config", str(config), *options]
    created = subprocess.run(command, check=True, capture_output=True, text=True)
    return created.stdout.strip().splitlines()[-1]


def start_passthrough(tmp: Path, upstream: str, workers: int) -> Target:
    (port,) = lib.free_ports(1)
    command = [sys.executable, str(HERE / "passthrough.py"), "--port", str(port)]
    command += ["--upstream", upstream.removesuffix("/v1"), "--connections", "0"]
    command += ["--reuse-port"] if workers > 1 else []
    processes = []
    with open(tmp / f"passthrough-{port}.log", "wb") as log:
        for _ in range(workers):
            processes.append(subprocess.Popen(command, stdout=log, stderr=log))
    return Target("pass-through", processes, f"http://127.0.0.1:{port}", workers=workers)


# --- measuring -----------------------------------------------------------------------------


def rss_kib(pids: list[int]) -> tuple[int, int]:
    """(current, peak) RSS in KiB, summed over ``pids``."""
    now = peak = 0
    for pid in pids:
        current, high = lib.rss_kib(pid)
        now, peak = now + current, peak + high
    return now, peak


def sockets(pids: list[int]) -> int:
    count = 0
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                        count += 1
                except OSError:
                    pass
        except OSError:
            pass
    return count


@dataclass
class Rung:
    target: str
    streams: int
    workers: int
    outcomes: dict[str, int] = field(default_factory=dict)
    first: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    idle_kib: int = 0
    peak_kib: int = 0
    peak_sockets: int = 0
    cpu_seconds: float = 0.0  # spent by the serving processes during the rung


def warm_up(target: Target) -> None:
    client = run_client(
        target.url + CHAT, target.key, 50, time.time(), "warm", same=target.same_prompt
    )
    asyncio.run(client)


def load(target: Target, streams: int, clients: int, ramp: float) -> Rung:
    rung = Rung(target.name, streams, target.workers)
    warm_up(target)
    pids = target.pids()
    rung.idle_kib = rss_kib(pids)[0]
    cpu = sum(lib.cputime(pid) for pid in pids)
    at = time.time() + 1.0 + streams / 5000  # every client process ready to go
    share = [streams // clients + (1 if n < streams % clients else 0) for n in range(clients)]
    runners = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                target.url + CHAT,
                target.key,
                str(count),
                repr(at),
                f"{target.name}-{n}-{streams}",
                repr(ramp),
                "same" if target.same_prompt else "distinct",
            ],
            stdout=subprocess.PIPE,
        )
        for n, count in enumerate(share)
        if count
    ]
    # Each client's results are read as they come: a pipe left unread would block its writer.
    outputs = [ThreadPoolExecutor(1).submit(runner.communicate) for runner in runners]
    while any(runner.poll() is None for runner in runners):
        rung.peak_sockets = max(rung.peak_sockets, sockets(pids))
        time.sleep(0.25)
    for output in outputs:
        for outcome, first, total in json.loads(output.result()[0]):
            rung.outcomes[outcome] = rung.outcomes.get(outcome, 0) + 1
            if outcome == "whole":
                rung.first.append(first)
                rung.total.append(total)
    rung.peak_kib = rss_kib(pids)[1]
    rung.cpu_seconds = sum(lib.cputime(pid) for pid in pids) - cpu
    return rung


def render(rungs: list[Rung], gap: float) -> str:
    head = (
        "| streams | target | processes | whole | refused | other | first byte p50 | p99 "
        "| total p50 | peak RSS | RSS/stream above idle | open sockets (peak) | CPU/stream |"
    )
    lines = [head, "|---:|---|" + "---:|" * 11]
    for r in rungs:
        other = sum(v for k, v in r.outcomes.items() if k not in ("whole", "refused"))
        ms = (lambda v: f"{v * 1000:,.0f} ms") if r.first else (lambda v: "-")
        p50 = statistics.median(r.first) if r.first else 0.0
        p99 = _pct(r.first, 0.99) if r.first else 0.0
        total = statistics.median(r.total) if r.total else 0.0
        per_stream = (r.peak_kib - r.idle_kib) / r.streams
        lines.append(
            f"| {r.streams:,} | {r.target} | {r.workers} | {r.outcomes.get('whole', 0):,} "
            f"| {r.outcomes.get('refused', 0):,} | {other:,} | {ms(p50)} | {ms(p99)} "
            f"| {ms(total)} | {r.peak_kib / 1024:,.0f} MiB | {per_stream:,.1f} KiB "
            f"| {r.peak_sockets:,} | {r.cpu_seconds / r.streams * 1000:.2f} ms |"
        )
    notes = [
        f"{r.target} at {r.streams:,}: {r.outcomes}"
        for r in rungs
        if set(r.outcomes) - {"whole", "refused"}
    ]
    by_rung: dict[int, dict[str, float]] = {}
    for r in rungs:
        if r.first:
            by_rung.setdefault(r.streams, {})[r.target] = statistics.median(r.first)
    own = gap  # the upstream's own first byte: its first event comes after one gap
    for streams, medians in by_rung.items():
        bare = medians.pop("pass-through", None)
        if bare is None:
            continue
        for name, median in medians.items():
            notes.append(
                f"{streams:,}: first byte p50 over the upstream's own, {name} +"
                f"{(median - own) * 1000:.1f} ms, pass-through +{(bare - own) * 1000:.1f} ms: "
                f"{(median - own) / max(bare - own, 1e-3):.2f}x"
            )
    return "\n".join([*lines, "", *notes])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/ladder.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ladder", default="1000,5000,10000", help="concurrent streams per rung")
    parser.add_argument("--clients", type=int, default=4, help="load generator processes")
    parser.add_argument("--upstreams", type=int, default=2, help="fake upstream processes")
    parser.add_argument(
        "--one-process-max",
        type=int,
        default=5000,
        help="above this many streams, both targets run 2 processes",
    )
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between events")
    parser.add_argument("--targets", default="pass-through,chatgpt-proxy")
    parser.add_argument("--tmp", type=Path)
    parser.add_argument(
        "--ramp",
        type=float,
        default=1.0,
        help="seconds over which each client opens its streams (0: all in the same instant, "
        "which overflows the kernel's accept queues here and costs SYN retries and resets)",
    )
    parser.add_argument("--client", nargs=7, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-only", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.client:
        url, key, count, at, tag, ramp, prompts = args.client
        client = run_client(url, key, int(count), float(at), tag, float(ramp), prompts == "same")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(client)
        sys.stdout.write(json.dumps(results))
        return 0
    if args.upstream_only:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve_upstream(args.upstream_only, args.gap))
        return 0

    cgp = Path(sys.executable).parent / "chatgpt-proxy"
    own_tmp = args.tmp is None
    tmp = Path(tempfile.mkdtemp(prefix="ladder.")) if own_tmp else args.tmp
    tmp.mkdir(parents=True, exist_ok=True)
    (up_port,) = lib.free_ports(1)
    upstream = f"http://127.0.0.1:{up_port}/v1"
    command = [sys.executable, __file__, "--upstream-only", str(up_port), "--gap", str(args.gap)]
    fakes = [subprocess.Popen(command) for _ in range(args.upstreams)]
    rungs: list[Rung] = []
    try:
        if lib.wait(upstream + "/models", 30.0):
            return 1
        print(f"fd limit {raise_fd_limit()}; {lib.versions()}", flush=True)
        for streams in (int(n) for n in args.ladder.split(",")):
            workers = 1 if streams <= args.one_process_max else 2
            for name in args.targets.split(","):
                target = (
                    start_passthrough(tmp, upstream, workers)
                    if name == "pass-through"
                    else start_proxy(
                        tmp, cgp, upstream, workers, moderation=name != "chatgpt-proxy/unmoderated"
                    )
                )
                target.name = name
                target.same_prompt = name == "chatgpt-proxy/cached"
                try:
                    if lib.wait(target.url + "/healthz", 60.0):
                        return 1
                    rungs.append(load(target, streams, args.clients, args.ramp))
                finally:
                    target.stop()
                print(render(rungs, args.gap) + "\n", flush=True)
        return 0
    finally:
        lib.stop_processes(fakes)
        if own_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
