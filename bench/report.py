"""Turns the raw output of bench/run.sh into a Markdown report (stdout and --out FILE).

    python bench/report.py TMPDIR [--out bench/results/latest.md]

TMPDIR holds ``meta.txt`` (machine, versions), ``runs.tsv`` (one line per scenario: id, group,
kind, label, RSS, peak RSS, note), ``wrk/<id>.txt`` (wrk's output) and, optionally,
``first_chunk.md`` (bench/first_chunk.py's section) and ``hotspots.md`` (bench/hotspots.py's).
Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_GROUPS = {
    "json": "Non-streaming (`chat.completion`, ~670 B answer)",
    "sse": "Streaming (`stream: true`, 22 SSE chunks + `[DONE]`, ~6.9 kB)",
}


@dataclass
class Wrk:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(text: str) -> Wrk:
    """The numbers of one ``wrk --latency`` run."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    requests = re.search(r"^\s+(\d+) requests in ([\d.]+(?:us|ms|s|m))", text, re.M)
    if not (rps and p50 and p99 and requests):
        raise ValueError("not the output of wrk --latency")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return Wrk(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        requests=int(requests.group(1)),
        seconds=_ms(requests.group(2)) / 1000,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


@dataclass
class Row:
    id: str
    kind: str
    label: str
    wrk: Wrk | None
    rss_kb: str
    hwm_kb: str
    cpu_s: float | None

    @property
    def per_cpu_second(self) -> float | None:
        """Requests per CPU-second of the serving process: robust to a busy machine."""
        if self.wrk is None or not self.cpu_s:
            return None
        return self.wrk.requests / self.cpu_s


def _mb(kb: str) -> str:
    return f"{int(kb) / 1024:.1f}" if kb and kb.isdigit() and int(kb) > 0 else "-"


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else "-"


def _added(value: float, base: float | None) -> str:
    return f"{value - base:+.2f}" if base is not None else "-"


def _first(rows: list[Row], kind: str) -> Row | None:
    return next((row for row in rows if row.kind == kind and row.wrk is not None), None)


def _table(rows: list[Row]) -> list[str]:
    direct, nginx, floor = (_first(rows, kind) for kind in ("direct", "nginx", "floor"))
    d = direct.wrk if direct else None
    out = [
        "| scenario | req/s | ÷ direct | ÷ nginx | ÷ bare aiohttp | p50 ms | p99 ms "
        "| added p50 | added p99 | server CPU | req per CPU-s | RSS MB | peak RSS MB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        w = row.wrk
        if w is None:
            out.append(f"| {row.label} | n/a |" + " |" * 13)
            continue
        errors = w.non_2xx + w.socket_errors
        behind = row.kind in ("proxy", "floor")
        cells = [
            row.label,
            f"{w.rps:,.0f}",
            _ratio(w.rps, d.rps if d else None),
            _ratio(w.rps, nginx.wrk.rps) if behind and nginx and nginx.wrk else "",
            _ratio(w.rps, floor.wrk.rps) if row.kind == "proxy" and floor and floor.wrk else "",
            f"{w.p50_ms:.2f}",
            f"{w.p99_ms:.2f}",
            _added(w.p50_ms, d.p50_ms if d else None) if row.kind != "direct" else "",
            _added(w.p99_ms, d.p99_ms if d else None) if row.kind != "direct" else "",
            f"{100 * row.cpu_s / w.seconds:.0f}%" if row.cpu_s and w.seconds else "-",
            f"{row.per_cpu_second:,.0f}" if row.per_cpu_second else "-",
            _mb(row.rss_kb),
            _mb(row.hwm_kb),
            f"**{errors}**" if errors else "0",
        ]
        out.append("| " + " | ".join(cells) + " |")
    if nginx or floor:
        out += [
            "",
            "Per CPU-second of the serving process (what the server would do with its core to "
            "itself):",
            "",
            "| scenario | req per CPU-s | ÷ nginx | ÷ bare aiohttp |",
            "|---|---:|---:|---:|",
        ]
        for row in rows:
            if row.kind not in ("nginx", "floor", "proxy") or row.per_cpu_second is None:
                continue
            base_nginx = nginx.per_cpu_second if nginx else None
            base_floor = floor.per_cpu_second if floor else None
            out.append(
                f"| {row.label} | {row.per_cpu_second:,.0f} "
                f"| {_ratio(row.per_cpu_second, base_nginx) if row.kind != 'nginx' else ''} "
                f"| {_ratio(row.per_cpu_second, base_floor) if row.kind == 'proxy' else ''} |"
            )
    return out


_HOW_TO_READ = [
    "How to read it:",
    "",
    "- *÷ direct*: the share of the fake upstream's own throughput a path keeps. Every path "
    "is bound by the one core its server runs on, except *direct*, whose server shares "
    "core 1 with wrk.",
    "- *÷ nginx*: against the reference reverse proxy (nginx proxy_pass), on the same core.",
    "- *÷ bare aiohttp*: against bench/passthrough.py, a bare aiohttp + uvloop pass-through "
    "on the same core: the share of the framework's own ceiling chatgpt-proxy keeps after "
    "its auth, routing, metering, metrics and logging.",
    "- *added* p50/p99 (ms): the scenario's percentile minus the direct one, same concurrency.",
    "- *server CPU*: CPU time the serving process (all its threads) used ÷ wall time. Below "
    "~95% for a Python server at full load, something else was using its core: compare "
    "*req per CPU-s* instead of req/s.",
    "- RSS: the serving process (nginx worker, Python process) from /proc/PID/status: VmRSS "
    "after the run, VmHWM (peak).",
    "- *errors*: non-2xx answers + socket errors. Any non-zero value makes the row meaningless.",
    "",
]


def render(tmp: Path) -> str:
    out = ["# chatgpt-proxy benchmark", ""]
    meta = tmp / "meta.txt"
    if meta.is_file():
        out += [f"- {line}" for line in meta.read_text().splitlines() if line.strip()]
        out.append("")
    with open(tmp / "runs.tsv", newline="") as handle:
        runs = list(csv.DictReader(handle, delimiter="\t"))
    notes: list[str] = []
    for group, title in _GROUPS.items():
        rows = []
        for run in (run for run in runs if run["group"] == group):
            try:
                result: Wrk | None = parse_wrk((tmp / "wrk" / f"{run['id']}.txt").read_text())
            except (OSError, ValueError):
                result = None
            label = run["label"]
            if run["note"]:
                notes.append(f"{label} ({group}): {run['note']}")
                label += f" [{len(notes)}]"
            cpu = float(run["cpu_s"]) if run.get("cpu_s") else None
            rows.append(
                Row(run["id"], run["kind"], label, result, run["rss_kb"], run["hwm_kb"], cpu)
            )
        if rows:
            out += [f"## {title}", "", *_table(rows), ""]
    if notes:
        out += [f"[{n}] {note}  " for n, note in enumerate(notes, 1)]
        out.append("")
    out += _HOW_TO_READ
    for section in ("first_chunk.md", "hotspots.md"):
        if (tmp / section).is_file():
            out += [(tmp / section).read_text().rstrip(), ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/report.py")
    parser.add_argument("tmp", type=Path, help="the directory bench/run.sh wrote its runs to")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    text = render(args.tmp)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"(written to {args.out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
