"""Helpers for bench/run.sh: canned upstream answers, config files, ports, probes, RSS.

Standard library only (run.sh may call it before the venv has the project installed)::

    python bench/lib.py ports 3                       # three free 127.0.0.1 ports
    python bench/lib.py upstream-conf TMP JSON_PORT SSE_PORT
    python bench/lib.py nginx-proxy-conf TMP PORT_A UP_A PORT_B UP_B
    python bench/lib.py proxy-conf FILE --port P --upstream URL --db URL [--access-log]
                                        [--moderation] [--redis URL]
    python bench/lib.py wait URL [--timeout S]        # until URL answers (any status)
    python bench/lib.py probe URL [--key K] [--stream] [--expect 200]
    python bench/lib.py rss PID                       # "VmRSS_kB VmHWM_kB"
    python bench/lib.py cputime PID                   # CPU seconds used so far
    python bench/lib.py children PID                  # pids whose parent is PID
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

MODEL = "gpt-4o-mini"
PROMPT = "Say hello to the benchmark in one short sentence."


def request_body(*, stream: bool = False, prompt: str = PROMPT) -> str:
    """The short chat request every scenario sends (post.lua builds the same one)."""
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 64,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


def chat_completion() -> str:
    """A realistic non-streamed chat.completion (~600 bytes), usage included."""
    answer = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello, benchmark! I hope your numbers come out fast, steady and "
                    "easy to read today.",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 18,
            "total_tokens": 37,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
    return json.dumps(answer, separators=(",", ":"))


WORDS = (
    "Hello", ",", " benchmark", "!", " I", " hope", " your", " numbers", " come", " out",
    " fast", ",", " steady", " and", " easy", " to", " read", " today", ".",
)  # fmt: skip


def sse_stream() -> str:
    """~20 chat.completion.chunk events, a usage-only chunk, then [DONE] (include_usage shape).

    The proxy asks streams for their usage (stream_options.include_usage), so a real upstream
    answers with ``"usage":null`` on each chunk and a final usage chunk: that is what is canned.
    """
    base = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
    events = []

    def chunk(delta: dict[str, object], finish: str | None) -> None:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        events.append({**base, "choices": [choice], "usage": None})

    chunk({"role": "assistant", "content": "", "refusal": None}, None)
    for word in WORDS:
        chunk({"content": word}, None)
    chunk({}, "stop")
    usage = {
        "prompt_tokens": 19,
        "completion_tokens": 18,
        "total_tokens": 37,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    events.append({**base, "choices": [], "usage": usage})
    out = "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events)
    return out + "data: [DONE]\n\n"


CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)  # fmt: skip


def moderation() -> str:
    """A clean verdict of omni-moderation-latest for ONE input."""
    result = {
        "flagged": False,
        "categories": {c: False for c in CATEGORIES},
        "category_scores": {c: 1.2e-06 for c in CATEGORIES},
        "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
    }
    answer = {"id": "modr-bench", "model": "omni-moderation-latest", "results": [result]}
    return json.dumps(answer, separators=(",", ":"))


def models() -> str:
    return json.dumps(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "system"}]}
    )


def _nginx_literal(text: str) -> str:
    """``text`` as a single-quoted nginx string for ``return``: no $, ', \\ allowed inside."""
    for bad in ("$", "'", "\\"):
        assert bad not in text, f"canned answer contains {bad!r}"
    return "'" + text.replace("\n", "\\n") + "'"


def _nginx_main(tmp: Path, name: str) -> str:
    return f"""\
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
"""


_HTTP_COMMON = """\
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    open_file_cache max=16;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
"""


def upstream_conf(tmp: Path, json_port: int, sse_port: int, *, http2: bool = False) -> str:
    """The fake OpenAI: one nginx, two ports (JSON answers on one, SSE answers on the other);
    with ``http2`` they speak HTTP/2 in clear (h2c, prior knowledge) instead of HTTP/1.1."""
    version = " http2" if http2 else ""
    common = f"""\
        location = /v1/moderations {{
            default_type application/json;
            return 200 {_nginx_literal(moderation())};
        }}
        location = /v1/models {{
            default_type application/json;
            return 200 {_nginx_literal(models())};
        }}
"""
    name = "upstream"
    (tmp / "stream.sse").write_text(sse_stream())
    return (
        _nginx_main(tmp, name)
        + "http {\n"
        + _HTTP_COMMON.format(tmp=tmp, name=name)
        + f"""\
    server {{
        listen 127.0.0.1:{json_port} backlog=4096{version};
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 {_nginx_literal(chat_completion())};
        }}
{common}    }}
    server {{
        listen 127.0.0.1:{sse_port} backlog=4096{version};
        # Too long for `return` (nginx caps a config token at 4 kB): a static file. nginx's
        # static handler refuses POST with a 405, so that error redirects to the same URI,
        # which nginx does as a GET.
        location = /v1/chat/completions {{
            alias {tmp}/stream.sse;
            types {{ }}
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            error_page 405 =200 $uri;
        }}
{common}    }}
}}
"""
    )


def nginx_proxy_conf(tmp: Path, pairs: list[tuple[int, int]]) -> str:
    """The reference reverse proxy: nginx proxy_pass with upstream keep-alive, one per pair."""
    name = "nginxproxy"
    blocks = []
    for index, (listen, upstream) in enumerate(pairs):
        blocks.append(
            f"""\
    upstream fake{index} {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{listen} backlog=4096;
        location / {{
            proxy_pass http://fake{index};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
"""
        )
    return (
        _nginx_main(tmp, name)
        + "http {\n"
        + _HTTP_COMMON.format(tmp=tmp, name=name)
        + "".join(blocks)
        + "}\n"
    )


def proxy_conf(
    *,
    port: int,
    upstream: str,
    db: str,
    access_log: bool,
    moderation_on: bool,
    redis: str | None,
) -> str:
    config: dict[str, object] = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "workers": 1,
            "access_log": access_log,
            "grace_seconds": 1,
        },
        "upstreams": [
            {"name": "fake", "base_url": upstream, "keys": ["sk-bench-upstream-0000000000000001"]}
        ],
        "moderation": {"enabled": moderation_on},
        "database_url": db,
    }
    if redis:
        config["redis_url"] = redis
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


@contextlib.contextmanager
def running(
    argv: Sequence[str], *, log: Path | None = None, grace: float = 10.0
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` started, its output (stdout and stderr) in ``log`` if given; on leaving, however
    left, stopped as ``stop_processes`` stops it::

        with lib.running([cgp, "serve", "--config", conf], log=tmp / "proxy.log") as proxy:
            lib.wait(url, 30.0)
            print(lib.rss_kib(proxy.pid))
    """
    if log is None:
        process = subprocess.Popen(argv)
    else:
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_processes([process], grace)


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """Stop ``processes`` in reverse order of start (woken first, if parked with SIGSTOP);
    killed when one does not end within ``grace`` seconds."""
    for process in reversed(processes):
        process.send_signal(signal.SIGCONT)
        process.terminate()
    for process in reversed(processes):
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def create_key(cgp: Path, config: Path, name: str) -> str:
    """A new client key, made by ``chatgpt-proxy keys create`` (the key is its last line)."""
    created = subprocess.run(
        [str(cgp), "keys", "create", "--name", name, "--config", str(config)],
        check=True,
        capture_output=True,
        text=True,
    )
    return created.stdout.strip().splitlines()[-1]


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _request(url: str, *, key: str | None, stream: bool, prompt: str = PROMPT) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        url, data=request_body(stream=stream, prompt=prompt).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def probe(url: str, key: str | None, stream: bool, expect: int) -> int:
    status, body = _request(url, key=key, stream=stream)
    ok = status == expect
    if ok and expect == 200:
        text = body.decode(errors="replace")
        ok = "[DONE]" in text if stream else '"chat.completion"' in text
    if not ok:
        print(f"probe {url}: status {status}, body {body[:300]!r}", file=sys.stderr)
        return 1
    return 0


def limits_probe(url: str, key: str, tries: int) -> int:
    """Exit 0 if a key limited to 1 request a minute gets a 429 within ``tries`` requests."""
    statuses = []
    for n in range(tries):
        status, _ = _request(url, key=key, stream=False, prompt=f"limits probe {n}")
        statuses.append(status)
        if status == 429:
            print(f"limits enforced: statuses {statuses}")
            return 0
    print(f"limits NOT enforced: statuses {statuses}")
    return 1


def wait(url: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return 0
        except urllib.error.HTTPError:
            return 0  # it answers: up
        except OSError:
            time.sleep(0.1)
    print(f"{url} did not answer within {timeout:.0f}s", file=sys.stderr)
    return 1


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) RSS of ``pid`` in KiB, from /proc (VmRSS, VmHWM); zeros once it is gone."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0])
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


def rss(pid: int) -> str:
    """``rss_kib`` as the "VmRSS_kB VmHWM_kB" line the shell scripts read."""
    return "{} {}".format(*rss_kib(pid))


def cputime(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def versions() -> str:
    """Python and the serving libraries, as the venv running this sees them."""
    from importlib.metadata import PackageNotFoundError, version

    found = [f"Python {sys.version.split()[0]}"]
    for package in ("chatgpt-proxy", "aiohttp", "uvloop", "orjson"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/lib.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ports")
    p.add_argument("count", type=int)
    p = sub.add_parser("upstream-conf")
    p.add_argument("tmp", type=Path)
    p.add_argument("json_port", type=int)
    p.add_argument("sse_port", type=int)
    p = sub.add_parser("nginx-proxy-conf")
    p.add_argument("tmp", type=Path)
    p.add_argument("ports", type=int, nargs="+", help="listen upstream [listen upstream...]")
    p = sub.add_parser("proxy-conf")
    p.add_argument("file", type=Path)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--access-log", action="store_true")
    p.add_argument("--moderation", action="store_true")
    p.add_argument("--redis")
    p = sub.add_parser("wait")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=30.0)
    p = sub.add_parser("probe")
    p.add_argument("url")
    p.add_argument("--key")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--expect", type=int, default=200)
    p = sub.add_parser("limits-probe")
    p.add_argument("url")
    p.add_argument("--key", required=True)
    p.add_argument("--tries", type=int, default=5)
    p = sub.add_parser("body")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--unique", action="store_true", help="mark the prompt with @N@ for post.lua")
    p = sub.add_parser("rss")
    p.add_argument("pid", type=int)
    sub.add_parser("versions")
    p = sub.add_parser("cputime")
    p.add_argument("pid", type=int)
    p = sub.add_parser("children")
    p.add_argument("pid", type=int)
    args = parser.parse_args(argv)

    if args.command == "ports":
        print(" ".join(map(str, free_ports(args.count))))
    elif args.command == "upstream-conf":
        (args.tmp / "upstream.conf").write_text(
            upstream_conf(args.tmp, args.json_port, args.sse_port)
        )
    elif args.command == "nginx-proxy-conf":
        if len(args.ports) % 2:
            parser.error("ports come in pairs: listen upstream")
        pairs = list(zip(args.ports[::2], args.ports[1::2], strict=True))
        (args.tmp / "nginxproxy.conf").write_text(nginx_proxy_conf(args.tmp, pairs))
    elif args.command == "proxy-conf":
        args.file.write_text(
            proxy_conf(
                port=args.port,
                upstream=args.upstream,
                db=args.db,
                access_log=args.access_log,
                moderation_on=args.moderation,
                redis=args.redis,
            )
        )
    elif args.command == "wait":
        return wait(args.url, args.timeout)
    elif args.command == "probe":
        return probe(args.url, args.key, args.stream, args.expect)
    elif args.command == "limits-probe":
        return limits_probe(args.url, args.key, args.tries)
    elif args.command == "body":
        prompt = PROMPT + " @N@" if args.unique else PROMPT
        print(request_body(stream=args.stream, prompt=prompt))
    elif args.command == "rss":
        print(rss(args.pid))
    elif args.command == "cputime":
        print(f"{cputime(args.pid):.2f}")
    elif args.command == "versions":
        print(versions())
    elif args.command == "children":
        print(" ".join(map(str, children(args.pid))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
