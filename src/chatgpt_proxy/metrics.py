"""Prometheus metrics, on a registry of the app's own (no process-global collectors).

Hot-path cost is two dict lookups and a bisect per request; the Prometheus families, and the
state of every upstream key, are built only when ``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from chatgpt_proxy.periodic import TaskErrors
from chatgpt_proxy.upstream.router import Upstream

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


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


class _TaskErrorCollector(Collector):
    def __init__(self, errors: TaskErrors) -> None:
        self._errors = errors

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "chatgpt_proxy_background_errors",
            "failed runs of a background task (it goes on), by task",
            labels=["task"],
        )
        for task, count in self._errors.counts.items():
            family.add_metric([task], count)
        yield family


class _Latency:
    """One endpoint's latency histogram: plain counts, summed up only when scraped."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0


class _RequestCollector(Collector):
    def __init__(self, counts: dict[tuple[str, int], int], latency: dict[str, _Latency]) -> None:
        self._counts = counts
        self._latency = latency

    def collect(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "chatgpt_proxy_requests", "answered requests", labels=["endpoint", "status"]
        )
        for (endpoint, status), count in self._counts.items():
            requests.add_metric([endpoint, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "chatgpt_proxy_request_seconds", "time to the end of the answer", labels=["endpoint"]
        )
        bounds = [*(repr(float(bound)) for bound in LATENCY_BUCKETS), "+Inf"]  # as Go prints
        for endpoint, histogram in self._latency.items():
            cumulative = itertools.accumulate(histogram.buckets)
            buckets = list(zip(bounds, cumulative, strict=True))
            latency.add_metric([endpoint], buckets, histogram.total)
        yield latency


class Metrics:
    """The proxy's metrics.

    The hot path only adds to plain numbers (the event loop is one thread, so no locks);
    the Prometheus families are built from them when ``/metrics`` is scraped.

    >>> metrics = Metrics(router.upstreams)
    >>> metrics.observe("chat.completions", 200, 0.012)
    """

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._counts: dict[tuple[str, int], int] = {}
        self._latency: dict[str, _Latency] = {}
        self.registry.register(_RequestCollector(self._counts, self._latency))
        self.registry.register(_PoolCollector(upstreams))

    def watch(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Export a number another component keeps, read at scrape time."""
        self.registry.register(_CallbackCounter(name, help_text, read))

    def watch_tasks(self, errors: TaskErrors) -> None:
        """Export the failed runs of the app's background tasks, by task name."""
        self.registry.register(_TaskErrorCollector(errors))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        group = (endpoint, status)
        self._counts[group] = self._counts.get(group, 0) + 1
        histogram = self._latency.get(endpoint)
        if histogram is None:
            histogram = self._latency[endpoint] = _Latency()
        histogram.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        histogram.total += seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)
