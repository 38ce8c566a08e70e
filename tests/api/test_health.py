"""Liveness, readiness and metrics: answered without a key, readiness naming what is wrong."""

from __future__ import annotations

from chatgpt_proxy.metrics import CONTENT_TYPE
from harness import Proxy


def test_liveness_needs_no_key_and_says_ok(proxy: Proxy) -> None:
    response = proxy.http().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_a_started_proxy_with_usable_keys_is_ready(proxy: Proxy) -> None:
    response = proxy.http().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "problems": []}


def test_a_stopping_proxy_is_not_ready(proxy: Proxy) -> None:
    proxy.state.ready = False
    try:
        response = proxy.http().get("/readyz")
    finally:
        proxy.state.ready = True
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "problems": ["starting or stopping"]}


def test_without_a_usable_upstream_key_the_proxy_is_not_ready(proxy: Proxy) -> None:
    pool = proxy.state.router.upstreams[0].pool

    async def retire_all() -> None:
        for key in pool.keys():
            pool.report_retired(key, "invalid")

    proxy.loop.run(retire_all())
    response = proxy.http().get("/readyz")
    assert response.status_code == 503
    assert response.json()["problems"] == ["no upstream key is usable"]


def test_metrics_are_prometheus_text(proxy: Proxy) -> None:
    response = proxy.http().get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    assert "# TYPE chatgpt_proxy_" in response.text
