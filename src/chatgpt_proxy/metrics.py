"""Prometheus metrics, on a registry of the app's own (no process-global collectors).

Hot-path cost is one counter increment and one histogram observation per request; the state
of every upstream key is read only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from chatgpt_proxy.upstream.router import Upstream

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _PoolCollector(Collector):
    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self._upstreams = upstreams

    def collect(self) -> Iterable[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "chatgpt_proxy_upstream_key_up",
            "1 when the upstream key can take requests now",
            labels=["key", "state"],
        )
        inflight = GaugeMetricFamily(
            "chatgpt_proxy_upstream_key_inflight", "requests in flight", labels=["key"]
        )
        for upstream in self._upstreams:
            for status in upstream.pool.snapshot():
                up = 1.0 if status.state == "active" else 0.0
                state.add_metric([status.alias, str(status.state)], up)
                inflight.add_metric([status.alias], float(status.inflight))
        yield state
        yield inflight


class _CallbackCounter(Collector):
    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._name, self._help, self._read = name, help_text, read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(self._name, self._help, value=self._read())


class Metrics:
    """The proxy's metrics.

    >>> metrics = Metrics(router.upstreams)
    >>> metrics.observe("chat.completions", 200, 0.012)
    """

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "chatgpt_proxy_requests",
            "answered requests",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "chatgpt_proxy_request_seconds",
            "time to the end of the answer",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.tokens = Counter(
            "chatgpt_proxy_tokens", "tokens reported by upstreams", ["kind"], registry=self.registry
        )
        self.registry.register(_PoolCollector(upstreams))
        # Looking a labelled child up takes a lock and builds a tuple: keep them at hand.
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def watch(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Export a number another component keeps, read at scrape time."""
        self.registry.register(_CallbackCounter(name, help_text, read))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        children = self._children.get((endpoint, status))
        if children is None:
            children = (self.requests.labels(endpoint, str(status)), self.latency.labels(endpoint))
            self._children[(endpoint, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
