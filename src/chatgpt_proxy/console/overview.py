"""The overview: traffic of the last hour, latency, streams open now, upstream keys by state."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from chatgpt_proxy.console.guard import Signed
from chatgpt_proxy.console.render import page, render
from chatgpt_proxy.state import STATE, AppState

_WINDOW = timedelta(hours=1)


async def overview(request: web.Request, signed: Signed) -> web.StreamResponse:
    return render(request, "overview.html", await _figures(request.app[STATE]), signed=signed)


@page
async def overview_figures(request: web.Request, signed: Signed) -> web.StreamResponse:
    """The overview's numbers alone, which the page polls every few seconds."""
    return render(request, "_overview.html", await _figures(request.app[STATE]), signed=signed)


async def _figures(state: AppState) -> dict[str, Any]:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = await state.store.usage.by_minute(now - _WINDOW + timedelta(minutes=1))
    by_minute = {row["minute"]: row for row in minutes}
    labels = [
        (now - _WINDOW + timedelta(minutes=n + 1)).strftime("%Y-%m-%dT%H:%M") for n in range(60)
    ]
    series = [by_minute.get(label, {}) for label in labels]
    last = by_minute.get(labels[-1])
    requests = sum(int(row["requests"] or 0) for row in minutes)
    latency_ms = sum(int(row["latency_ms"] or 0) for row in minutes)
    states = Counter(
        str(status.state)
        for upstream in state.router.upstreams
        for status in upstream.pool.snapshot()
    )
    p50, p95 = _percentiles(state)
    return {
        "chart": {
            "labels": [label[11:] for label in labels],  # HH:MM, UTC
            "requests": [int(row.get("requests") or 0) for row in series],
            "errors": [int(row.get("errors") or 0) for row in series],
            "tokens": [int(row.get("tokens") or 0) // 100 for row in series],
        },
        "last_minute": last,
        "hour_requests": requests,
        "hour_errors": sum(int(row["errors"] or 0) for row in minutes),
        "hour_tokens": sum(int(row["tokens"] or 0) for row in minutes),
        "mean_latency_ms": latency_ms // requests if requests else None,
        "p50": p50,
        "p95": p95,
        "streams_open": len(state.drain.streams),
        "key_states": sorted(states.items()),
        "client_keys": await state.store.count(),
    }


def _percentiles(state: AppState) -> tuple[float | None, float | None]:
    """p50 and p95 of the proxied requests' latency since start, from /metrics' histogram
    (the upper bound of the bucket each falls in)."""
    buckets: dict[float, float] = {}
    for family in state.metrics.registry.collect():
        if family.name != "chatgpt_proxy_request_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("endpoint") not in (
                "admin",
                "-",
            ):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    if not buckets or max(buckets.values()) == 0:
        return None, None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]

    def quantile(q: float) -> float:
        return next(bound for bound in bounds if buckets[bound] >= q * total)

    return quantile(0.5), quantile(0.95)
