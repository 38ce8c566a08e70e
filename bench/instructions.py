"""Instructions per request, counted by callgrind: the CPU cost of a request that the machine's
load does not move.

``bench/run.sh`` measures requests per second, which is what users feel, but on a shared
machine a neighbour's burst moves it by ±20% or more between runs. Instruction counts do not
move: run the same code twice and the totals agree to a fraction of a percent, whatever else
the machine is doing. So this is the yardstick for "did this change make the request path
cheaper or dearer", and run.sh the one for "how fast is it".

For the bare aiohttp pass-through (``bench/passthrough.py``) and chatgpt-proxy (access log off,
moderation off, SQLite), each run under ``valgrind --tool=callgrind`` in front of the canned
nginx upstream of run.sh: a warm-up, then ``N`` requests one after another on one keep-alive
connection between two ``callgrind_control`` marks. The background work a server does per
second (key refresh, usage flush) is measured on its own while it idles and subtracted, so the
figure is what one request costs::

    .venv/bin/python bench/instructions.py                 # 2,000 requests each, non-streamed
    .venv/bin/python bench/instructions.py --stream --requests 1000

To compare two revisions, run it in a worktree of each (each with its own ``make install``).
The ratio it prints, pass-through ÷ proxy, is the share of the bare pass-through's efficiency
the full path keeps: comparable to run.sh's throughput ratios on one core. Loopback only;
everything it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lib  # noqa: E402

from chatgpt_proxy.settings import ServerSettings  # noqa: E402

CHAT = "/v1/chat/completions"
_TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


class Counted:
    """A server under callgrind: marks, and the instructions counted since the last mark."""

    def __init__(self, process: subprocess.Popen[bytes], out: Path) -> None:
        self.pid = process.pid
        self.out = out
        self._dumps = 0

    def zero(self) -> None:
        subprocess.run(["callgrind_control", "-z", str(self.pid)], check=True, capture_output=True)

    def count(self) -> int:
        """Instructions since the last ``zero()`` (dumping also zeroes)."""
        subprocess.run(["callgrind_control", "-d", str(self.pid)], check=True, capture_output=True)
        self._dumps += 1
        dump = Path(f"{self.out}.{self._dumps}")
        deadline = time.monotonic() + 30
        while not (dump.exists() and _TOTALS.search(dump.read_bytes())):
            if time.monotonic() > deadline:
                raise RuntimeError(f"callgrind wrote no dump at {dump}")
            time.sleep(0.1)
        match = _TOTALS.search(dump.read_bytes())
        assert match is not None
        return int(match.group(1))


def send(port: int, body: bytes, key: str | None, count: int) -> None:
    """``count`` requests in turn on one keep-alive connection, each answer read whole."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(count):
            connection.request("POST", CHAT, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"answer {answer.status} from port {port}")
    finally:
        connection.close()


def measure(
    name: str, argv: list[str], port: int, key: str | None, args: argparse.Namespace, tmp: Path
) -> float:
    """Instructions per request of the server that ``argv`` starts on ``port``."""
    out = tmp / f"callgrind.{name}"
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--dump-instr=no",
        "--dump-line=no",
    ]
    body = lib.request_body(stream=args.stream).encode()
    with lib.running(valgrind + argv, log=tmp / f"{name}.log", grace=30.0) as process:
        if lib.wait(f"http://127.0.0.1:{port}/healthz", 300.0):
            sys.stderr.write((tmp / f"{name}.log").read_text()[-3000:])
            raise RuntimeError(f"{name} did not come up under valgrind")
        counted = Counted(process, out)
        send(port, body, key, args.warmup)
        counted.zero()
        time.sleep(args.idle)
        idle_rate = counted.count() / args.idle  # background work, per second
        started = time.monotonic()
        send(port, body, key, args.requests)
        elapsed = time.monotonic() - started
        total = counted.count()
    per_request = (total - idle_rate * elapsed) / args.requests
    print(
        f"{name}: {per_request / 1000:,.0f}k instructions per request "
        f"({args.requests} requests in {elapsed:.1f} s; idle work {idle_rate / 1e6:.1f}M/s, "
        f"{idle_rate * elapsed / total:.1%} of the total, subtracted)",
        flush=True,
    )
    return per_request


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/instructions.py", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests measured per server")
    parser.add_argument("--warmup", type=int, default=300, help="requests before the marks")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measured")
    parser.add_argument("--stream", action="store_true", help="SSE answers instead of JSON")
    parser.add_argument(
        "--event-gap",
        type=float,
        metavar="SECONDS",
        help="streams from bench/ladder.py's fake upstream instead of nginx: 9 events, each "
        "written on its own this long apart, as a model streams (nginx sends its canned 6.9 kB "
        "answer in one piece); implies --stream",
    )
    parser.add_argument(
        "--skip-passthrough",
        action="store_true",
        help="measure only chatgpt-proxy (the pass-through's count does not change with our code)",
    )
    parser.add_argument(
        "--upstream-http",
        choices=("1.1", "2"),
        default="1.1",
        help="the proxy's server.upstream_http; with 2 the nginx upstream speaks h2c and the "
        "pass-through (HTTP/1.1 only) is skipped",
    )
    args = parser.parse_args(argv)
    args.stream = args.stream or args.event_gap is not None
    if args.upstream_http == "2":
        args.skip_passthrough = True
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is missing: apt-get install valgrind")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        parser.error("nginx is missing: apt-get install nginx-light")
    python = Path(sys.executable)
    cgp = python.with_name("chatgpt-proxy")
    tmp = Path(tempfile.mkdtemp(prefix="cgp-instr-"))
    tmp.chmod(0o755)  # nginx workers run as nobody when started as root: the SSE file is here
    try:
        json_port, sse_port, pass_port, proxy_port = lib.free_ports(4)
        http2 = args.upstream_http == "2"
        (tmp / "upstream.conf").write_text(lib.upstream_conf(tmp, json_port, sse_port, http2=http2))
        upstream = sse_port if args.stream else json_port
        nginx_argv = [nginx, "-p", str(tmp), "-e", str(tmp / "nginx.err"), "-c"]
        with contextlib.ExitStack() as started:
            started.enter_context(
                lib.running([*nginx_argv, str(tmp / "upstream.conf")], log=tmp / "nginx.log")
            )
            if args.event_gap is not None:
                (upstream,) = lib.free_ports(1)
                fake = [sys.executable, str(HERE / "ladder.py"), "--upstream-only", str(upstream)]
                fake += ["--gap", repr(args.event_gap)]
                started.enter_context(lib.running(fake, log=tmp / "events.log"))
                if lib.wait(f"http://127.0.0.1:{upstream}/v1/models", 30.0):
                    raise RuntimeError("the fake upstream of bench/ladder.py did not come up")
            if not http2 and lib.wait(f"http://127.0.0.1:{json_port}/v1/models", 30.0):
                raise RuntimeError("the nginx upstream did not come up")
            config = tmp / "proxy.yaml"
            settings = json.loads(
                lib.proxy_conf(
                    port=proxy_port,
                    upstream=f"http://127.0.0.1:{upstream}/v1",
                    db=f"sqlite:///{tmp}/proxy.db",
                    access_log=False,
                    moderation_on=False,
                    redis=None,
                )
            )
            # The once-a-second reload of client keys (a database query) is most of the idle
            # work, and the idle rate, measured over a few ticks, is only as exact as their
            # count: a tick more or less moved the figure by ±10k per request on a loaded
            # machine. Without it, the idle work left is small and its error with it.
            settings["auth"] = {"cache_refresh_seconds": 3600}
            if http2:
                settings["server"]["upstream_http"] = "2"
            # Likewise the once-a-second usage write: it runs only while requests are counted,
            # so the idle rate cannot take it out, and under valgrind (a hundred requests a
            # second, not thousands) each write lands on few requests. Written at exit instead.
            if "usage_flush_seconds" in ServerSettings.model_fields:  # not in older revisions
                settings["server"]["usage_flush_seconds"] = 3600
            config.write_text(json.dumps(settings))
            key = lib.create_key(cgp, config, "instructions")
            passthrough = [
                str(python),
                str(HERE / "passthrough.py"),
                "--port",
                str(pass_port),
                "--upstream",
                f"http://127.0.0.1:{upstream}",
            ]
            bare = None
            if not args.skip_passthrough:
                bare = measure("bare aiohttp pass-through", passthrough, pass_port, None, args, tmp)
            proxy_argv = [str(cgp), "serve", "--config", str(config)]
            full = measure("chatgpt-proxy", proxy_argv, proxy_port, key, args, tmp)
        if bare is not None:
            kept = bare / full
            print(f"pass-through ÷ chatgpt-proxy: {kept:.3f} (the share of its efficiency kept)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
