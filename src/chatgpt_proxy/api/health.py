"""Liveness, readiness and metrics: what an orchestrator and Prometheus ask."""

from __future__ import annotations

import orjson
from aiohttp import web

from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.exchange import context
from chatgpt_proxy.metrics import CONTENT_TYPE
from chatgpt_proxy.state import STATE


async def healthz(request: web.Request) -> web.Response:
    context(request).endpoint = "healthz"
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    """Ready when started, the key store answers and some upstream key can take requests."""
    state = request.app[STATE]
    context(request).endpoint = "readyz"
    problems = []
    if not state.ready:
        problems.append("starting or stopping")
    try:
        await state.store.ping()
    except ProxyError:
        problems.append("key store unreachable")
    usable = sum(
        1
        for upstream in state.router.upstreams
        for status in upstream.pool.snapshot()
        if status.state == "active"
    )
    if usable == 0:
        problems.append("no upstream key is usable")
    if state.meter.failing:
        problems.append(f"usage writer failing ({state.meter.pending} requests not yet written)")
    body = {"status": "ready" if not problems else "not ready", "problems": problems}
    return web.Response(
        body=orjson.dumps(body), status=503 if problems else 200, content_type="application/json"
    )


async def metrics(request: web.Request) -> web.Response:
    context(request).endpoint = "metrics"
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def health_routes() -> list[web.RouteDef]:
    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]
