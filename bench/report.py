"""Turns the raw output of bench/run.sh into a Markdown report (stdout and --out FILE).

    python bench/report.py TMPDIR [--out bench/results/latest.md]

TMPDIR holds ``meta.txt`` (machine, versions, settings), ``runs.tsv`` (one line per measured
throughput run: id, round, group, kind, label, RSS, peak RSS, CPU seconds, note; round 0 marks
a scenario that could not run), ``wrk/<id>.r<round>.txt`` (wrk's output of that run),
``latency.tsv`` and ``wrk/lat-<id>.txt`` (the runs at one connection) and, optionally,
``first_chunk.md`` (bench/first_chunk.py's section) and ``hotspots.md`` (bench/hotspots.py's).

A scenario measured in several rounds is reported by its median and its best run; ratios
between two such scenarios are the median of their per-round ratios (paired: both measured in
the same round, a few seconds apart), which cancels most of the machine's slow and fast spells.
Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_GROUPS = {
    "json": "Non-streaming (`chat.completion`, ~670 B answer)",
    "sse": "Streaming (`stream: true`, 22 SSE chunks + `[DONE]`, ~6.9 kB)",
}
# the order of the rows, by id without its group prefix
_ORDER = (
    "direct", "nginx", "floor", "proxy-logoff", "proxy-logon", "proxy-redis", "proxy-mod-hit",
    "proxy-mod-miss",
)  # fmt: skip
# paired comparisons: (numerator, denominator, label), ids without the group prefix
_PAIRS = (
    ("proxy-logoff", "floor", "chatgpt-proxy (access_log off) ÷ bare aiohttp"),
    ("proxy-logon", "floor", "chatgpt-proxy (access_log on) ÷ bare aiohttp"),
    ("proxy-logon", "proxy-logoff", "access_log on ÷ access_log off"),
    ("proxy-redis", "proxy-logoff", "Redis limits ÷ no Redis (access_log off)"),
    ("proxy-mod-hit", "proxy-logoff", "moderation cache hit ÷ moderation off (access_log off)"),
    ("proxy-mod-miss", "proxy-logoff", "moderation cache miss ÷ moderation off (access_log off)"),
)


@dataclass
class Wrk:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(text: str) -> Wrk:
    """The numbers of one ``wrk --latency`` run."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p90 = re.search(r"^\s+90%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    requests = re.search(r"^\s+(\d+) requests in ([\d.]+(?:us|ms|s|m))", text, re.M)
    if not (rps and p50 and p90 and p99 and requests):
        raise ValueError("not the output of wrk --latency")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return Wrk(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p90_ms=_ms(p90.group(1)),
        p99_ms=_ms(p99.group(1)),
        requests=int(requests.group(1)),
        seconds=_ms(requests.group(2)) / 1000,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def _read_wrk(path: Path) -> Wrk | None:
    try:
        return parse_wrk(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class Run:
    round: int
    wrk: Wrk
    rss_kb: str
    hwm_kb: str
    cpu_s: float | None

    @property
    def per_cpu_second(self) -> float | None:
        """Requests per CPU-second of the serving process: robust to a busy machine."""
        return self.wrk.requests / self.cpu_s if self.cpu_s else None

    @property
    def cpu_share(self) -> float | None:
        return self.cpu_s / self.wrk.seconds if self.cpu_s and self.wrk.seconds else None


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _best(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


@dataclass
class Scenario:
    id: str
    group: str
    kind: str
    label: str
    note: str = ""
    runs: list[Run] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return self.id.removeprefix(self.group + "-")

    @property
    def rounds(self) -> bool:
        """Measured in the interleaved rounds (the others run once)."""
        return self.kind in ("floor", "proxy")

    def median(self, metric: Callable[[Run], float | None]) -> float | None:
        return _median([metric(run) for run in self.runs])

    def best(self, metric: Callable[[Run], float | None]) -> float | None:
        return _best([metric(run) for run in self.runs])

    @property
    def errors(self) -> int:
        return sum(run.wrk.errors for run in self.runs)


def _rps(run: Run) -> float:
    return run.wrk.rps


def _pcs(run: Run) -> float | None:
    return run.per_cpu_second


def paired(
    top: Scenario, bottom: Scenario, metric: Callable[[Run], float | None]
) -> tuple[float | None, list[float]]:
    """Median of the per-round ratios top ÷ bottom, over the rounds both were measured in."""
    below = {run.round: metric(run) for run in bottom.runs}
    ratios = []
    for run in sorted(top.runs, key=lambda r: r.round):
        a, b = metric(run), below.get(run.round)
        if a and b:
            ratios.append(a / b)
    return (statistics.median(ratios) if ratios else None), ratios


def _mb(kb: str) -> str:
    return f"{int(kb) / 1024:.1f}" if kb and kb.isdigit() and int(kb) > 0 else "-"


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else "-"


def _num(value: float | None) -> str:
    return f"{value:,.0f}" if value else "-"


def _added(value: float | None, base: float | None, digits: int = 2) -> str:
    if value is None or base is None:
        return "-"
    return f"{value - base:+.{digits}f}"


def _runs_cell(scenario: Scenario) -> str:
    n = len(scenario.runs)
    return f"{n} (median)" if scenario.rounds and n > 1 else str(n)


def _first(rows: list[Scenario], kind: str) -> Scenario | None:
    return next((row for row in rows if row.kind == kind and row.runs), None)


def _table(rows: list[Scenario], label_of: Callable[[Scenario], str]) -> list[str]:
    direct, nginx, floor = (_first(rows, kind) for kind in ("direct", "nginx", "floor"))
    d_rps = direct.median(_rps) if direct else None
    d_p50 = direct.median(lambda r: r.wrk.p50_ms) if direct else None
    d_p99 = direct.median(lambda r: r.wrk.p99_ms) if direct else None
    out = [
        "| scenario | runs | req/s median | req/s best | ÷ direct | ÷ nginx | ÷ bare aiohttp "
        "| p50 ms | p99 ms | added p50 | added p99 | server CPU | RSS MB | peak RSS MB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if not row.runs:
            out.append(f"| {label_of(row)} | 0 | n/a |" + " |" * 12)
            continue
        rps = row.median(_rps)
        behind = row.kind in ("proxy", "floor")
        p50 = row.median(lambda r: r.wrk.p50_ms)
        p99 = row.median(lambda r: r.wrk.p99_ms)
        share = row.median(lambda r: r.cpu_share)
        last = max(row.runs, key=lambda r: r.round)
        hwm = max((int(r.hwm_kb) for r in row.runs if r.hwm_kb.isdigit()), default=0)
        cells = [
            label_of(row),
            _runs_cell(row),
            _num(rps),
            _num(row.best(_rps)),
            _ratio(rps, d_rps),
            _ratio(rps, nginx.median(_rps)) if behind and nginx else "",
            _x(paired(row, floor, _rps)[0]) if row.kind == "proxy" and floor else "",
            f"{p50:.2f}" if p50 is not None else "-",
            f"{p99:.2f}" if p99 is not None else "-",
            _added(p50, d_p50) if row.kind != "direct" else "",
            _added(p99, d_p99) if row.kind != "direct" else "",
            f"{100 * share:.0f}%" if share else "-",
            _mb(last.rss_kb),
            _mb(str(hwm)),
            f"**{row.errors}**" if row.errors else "0",
        ]
        out.append("| " + " | ".join(cells) + " |")
    if nginx or floor:
        out += [
            "",
            "Per CPU-second of the serving process (what the server would do with its core to "
            "itself):",
            "",
            "| scenario | runs | req per CPU-s median | req per CPU-s best | ÷ nginx "
            "| ÷ bare aiohttp |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        base_nginx = nginx.median(_pcs) if nginx else None
        for row in rows:
            if row.kind not in ("nginx", "floor", "proxy") or row.median(_pcs) is None:
                continue
            pcs = row.median(_pcs)
            by_floor = _x(paired(row, floor, _pcs)[0]) if floor and row.kind == "proxy" else ""
            out.append(
                f"| {label_of(row)} | {_runs_cell(row)} | {_num(pcs)} | {_num(row.best(_pcs))} "
                f"| {_ratio(pcs, base_nginx) if row.kind != 'nginx' else ''} | {by_floor} |"
            )
    by_id = {row.short_id: row for row in rows if row.runs}
    pairs = [(by_id[a], by_id[b], text) for a, b, text in _PAIRS if a in by_id and b in by_id]
    if pairs:
        out += [
            "",
            "Paired ratios (each round's ratio of two runs a few seconds apart; the median of "
            "the rounds, and every round's value in round order):",
            "",
            "| comparison | rounds | req/s | per round | req per CPU-s | per round |",
            "|---|---:|---:|---|---:|---|",
        ]
        for top, bottom, text in pairs:
            rps, rps_each = paired(top, bottom, _rps)
            pcs, pcs_each = paired(top, bottom, _pcs)
            out.append(
                f"| {text} | {len(rps_each)} | {_x(rps)} "
                f"| {' '.join(f'{v:.2f}' for v in rps_each)} | {_x(pcs)} "
                f"| {' '.join(f'{v:.2f}' for v in pcs_each)} |"
            )
    return out


_HOW_TO_READ = [
    "How to read it:",
    "",
    "- *runs*: how many measured runs a row sums up. `N (median)`: the bare aiohttp "
    "pass-through and the chatgpt-proxy variants are measured in N interleaved rounds (every "
    "variant once per round, the order rotated by one each round), and the row shows the "
    "median run (p50, p99, server CPU: medians too; RSS: after the last round, peak: over all "
    "rounds) and the best one. The direct and nginx rows are single runs.",
    "- *÷ direct*: the share of the fake upstream's own throughput a path keeps. Every path "
    "is bound by the one core its server runs on, except *direct*, whose server shares "
    "core 1 with wrk.",
    "- *÷ nginx*: against the reference reverse proxy (nginx proxy_pass), on the same core. "
    "*÷ direct* and *÷ nginx* divide a row's median by that single run.",
    "- *÷ bare aiohttp*: against bench/passthrough.py, a bare aiohttp + uvloop pass-through "
    "on the same core: the share of the framework's own ceiling chatgpt-proxy keeps after "
    "its auth, routing, metering, metrics and logging. It is a paired ratio: the median over "
    "the rounds of that round's proxy run ÷ that round's pass-through run, as are all the "
    "*Paired ratios*.",
    "- *added* p50/p99 (ms): the scenario's percentile minus the direct one, at the same "
    "concurrency. At 50 connections that is mostly queueing (connections ÷ req/s); the "
    "latency a user sees added is in *Latency at one connection*.",
    "- *server CPU*: CPU time the serving process (all its threads) used ÷ wall time. Below "
    "~95% for a Python server at full load, something else was using its core: compare "
    "*req per CPU-s* instead of req/s.",
    "- RSS: the serving process (nginx worker, Python process) from /proc/PID/status: VmRSS "
    "after the run, VmHWM (peak). Each Python variant is its own process, up for all rounds.",
    "- *errors*: non-2xx answers + socket errors, summed over the runs. Any non-zero value "
    "makes the row meaningless.",
    "",
]


@dataclass
class LatencyScenario:
    id: str
    label: str
    runs: dict[int, tuple[Wrk, float | None]] = field(default_factory=dict)  # round: (wrk, cpu)

    def median(self, metric: Callable[[Wrk], float]) -> float | None:
        return _median([metric(w) for w, _ in self.runs.values()])

    @property
    def cpu_us_per_request(self) -> float | None:
        return _median(
            [1e6 * cpu / w.requests for w, cpu in self.runs.values() if cpu and w.requests]
        )

    @property
    def errors(self) -> int:
        return sum(w.errors for w, _ in self.runs.values())


def _p50(w: Wrk) -> float:
    return w.p50_ms


def _p90(w: Wrk) -> float:
    return w.p90_ms


def _p99(w: Wrk) -> float:
    return w.p99_ms


def paired_difference(
    top: LatencyScenario, bottom: LatencyScenario, metric: Callable[[Wrk], float]
) -> tuple[float | None, list[float]]:
    """Median of the per-round differences top - bottom, over the rounds both ran in."""
    diffs = [
        metric(w) - metric(bottom.runs[round_][0])
        for round_, (w, _) in sorted(top.runs.items())
        if round_ in bottom.runs
    ]
    return (statistics.median(diffs) if diffs else None), diffs


def _signed(value: float | None) -> str:
    return f"{value:+.3f}" if value is not None else "-"


def _latency(tmp: Path) -> list[str]:
    path, runs_path = tmp / "latency.tsv", tmp / "latency-runs.tsv"
    if not (path.is_file() and runs_path.is_file()):
        return []
    scenarios: dict[str, LatencyScenario] = {}
    notes: dict[str, str] = {}
    with open(path, newline="") as handle:
        for line in csv.DictReader(handle, delimiter="\t"):
            scenarios[line["id"]] = LatencyScenario(line["id"], line["label"])
            notes[line["id"]] = line["note"]
    with open(runs_path, newline="") as handle:
        for line in csv.DictReader(handle, delimiter="\t"):
            scenario = scenarios.get(line["id"])
            result = _read_wrk(tmp / "wrk" / f"lat-{line['id']}.r{line['round']}.txt")
            if scenario and result:
                cpu = float(line["cpu_s"]) if line["cpu_s"] else None
                scenario.runs[int(line["round"])] = (result, cpu)
    if not scenarios:
        return []
    rounds = max(len(s.runs) for s in scenarios.values())
    direct = scenarios.get("direct")
    if direct is not None and not direct.runs:
        direct = None
    how = (
        f"medians of {rounds} interleaved rounds (the order rotated by one each round); "
        "*added p50* and the differences below are medians of same-round (paired) differences"
        if rounds > 1
        else "from one run each"
    )
    out = [
        "## Latency at one connection",
        "",
        "`wrk -t1 -c1 --latency`, non-streamed requests, one at a time: no queueing, so this is "
        "the time a user waits, and *added p50* is what the path adds to a request. Percentiles "
        f"are {how}. Run after the throughput rounds, every server warm.",
        "",
        "| scenario | runs | requests per run | p50 ms | p90 ms | p99 ms | added p50 vs direct "
        "| server CPU per request µs | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios.values():
        label = scenario.label + (f" ({notes[scenario.id]})" if notes[scenario.id] else "")
        if not scenario.runs:
            out.append(f"| {label} | 0 | n/a |" + " |" * 6)
            continue
        n = len(scenario.runs)
        requests = _median([float(w.requests) for w, _ in scenario.runs.values()])
        cpu = scenario.cpu_us_per_request
        added = ""
        if scenario.id != "direct":
            added = _signed(paired_difference(scenario, direct, _p50)[0]) if direct else "-"
        cells = [
            label,
            f"{n} (median)" if n > 1 else str(n),
            _num(requests),
            f"{scenario.median(_p50):.3f}",
            f"{scenario.median(_p90):.3f}",
            f"{scenario.median(_p99):.3f}",
            added,
            _num(cpu),
            f"**{scenario.errors}**" if scenario.errors else "0",
        ]
        out.append("| " + " | ".join(cells) + " |")

    diffs = [
        ("floor", "direct", "bare aiohttp pass-through - direct (the framework's own)"),
        ("proxy", "direct", "chatgpt-proxy - direct (what the proxy adds)"),
        ("proxy", "floor", "chatgpt-proxy - bare aiohttp pass-through"),
        ("mod-hit", "proxy", "moderation cache hit - moderation off"),
        ("mod-miss", "proxy", "**moderation cache miss - moderation off**"),
        ("redis", "proxy", "Redis limits - no Redis"),
    ]
    lines = []
    found: dict[tuple[str, str], float | None] = {}
    for top_id, bottom_id, text in diffs:
        top, bottom = scenarios.get(top_id), scenarios.get(bottom_id)
        if not (top and bottom and top.runs and bottom.runs):
            continue
        p50, each = paired_difference(top, bottom, _p50)
        found[top_id, bottom_id] = p50
        p90 = paired_difference(top, bottom, _p90)[0]
        p99 = paired_difference(top, bottom, _p99)[0]
        lines.append(
            f"| {text} | {len(each)} | {_signed(p50)} | {' '.join(f'{v:+.3f}' for v in each)} "
            f"| {_signed(p90)} | {_signed(p99)} |"
        )
    if lines:
        out += [
            "",
            "| difference | rounds | p50 ms | p50 per round | p90 ms | p99 ms |",
            "|---|---:|---:|---|---:|---:|",
            *lines,
        ]
    extra = found.get(("mod-miss", "proxy"))
    if extra is not None and direct:
        direct_p50 = direct.median(_p50) or 0.0
        text = (
            f"A moderation cache miss adds {extra:.3f} ms at p50 to a request: one "
            "`/v1/moderations` round trip to the same upstream nginx (the target: about one "
            "round trip, no more). A whole round trip to that nginx from a C client (wrk: the "
            f"direct p50) takes {direct_p50:.3f} ms, so about {max(extra - direct_p50, 0):.3f} "
            "ms is the proxy's own work around the call (aiohttp client request, JSON verdict, "
            "cache)"
        )
        framework = found.get(("floor", "direct"))
        if framework is not None:
            text += (
                "; for scale, a whole request forwarded by the bare aiohttp pass-through "
                f"(its server and its client side) adds {framework:.3f} ms"
            )
        out += ["", text + "."]
    return [*out, ""]


def render(tmp: Path) -> str:
    out = ["# chatgpt-proxy benchmark", ""]
    meta = tmp / "meta.txt"
    if meta.is_file():
        out += [f"- {line}" for line in meta.read_text().splitlines() if line.strip()]
        out.append("")
    with open(tmp / "runs.tsv", newline="") as handle:
        lines = list(csv.DictReader(handle, delimiter="\t"))
    scenarios: dict[str, Scenario] = {}
    for line in lines:
        scenario = scenarios.setdefault(
            line["id"],
            Scenario(line["id"], line["group"], line["kind"], line["label"], line["note"]),
        )
        round_ = int(line["round"] or 0)
        if round_ < 1:
            scenario.note = scenario.note or line["note"]
            continue
        result = _read_wrk(tmp / "wrk" / f"{line['id']}.r{round_}.txt")
        if result is None:
            continue
        cpu = float(line["cpu_s"]) if line.get("cpu_s") else None
        scenario.runs.append(Run(round_, result, line["rss_kb"], line["hwm_kb"], cpu))

    rounds = max((len(s.runs) for s in scenarios.values() if s.rounds), default=0)
    if rounds > 1:
        out += [
            f"Rows marked *{rounds} (median)* are the median of {rounds} interleaved rounds "
            "(best run alongside); the direct and nginx rows are one run each. Ratios between "
            "chatgpt-proxy variants are medians of same-round (paired) ratios.",
            "",
        ]
    notes: list[str] = []
    numbered: dict[str, int] = {}

    def label_of(scenario: Scenario) -> str:
        if not scenario.note:
            return scenario.label
        if scenario.id not in numbered:
            notes.append(f"{scenario.label} ({scenario.group}): {scenario.note}")
            numbered[scenario.id] = len(notes)
        return f"{scenario.label} [{numbered[scenario.id]}]"

    def order(scenario: Scenario) -> int:
        short = scenario.short_id
        return _ORDER.index(short) if short in _ORDER else len(_ORDER)

    for group, title in _GROUPS.items():
        rows = sorted((s for s in scenarios.values() if s.group == group), key=order)
        if rows:
            out += [f"## {title}", "", *_table(rows, label_of), ""]
    if notes:
        out += [f"[{n}] {note}  " for n, note in enumerate(notes, 1)]
        out.append("")
    out += _HOW_TO_READ
    out += _latency(tmp)
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
