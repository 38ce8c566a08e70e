"""The Prometheus metrics: requests by endpoint and status, latency, upstream key states."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from chatgpt_proxy.metrics import Metrics
from chatgpt_proxy.periodic import TaskErrors
from harness import Proxy


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counts_and_latency_buckets_are_cumulative() -> None:
    metrics = Metrics([])
    for seconds in (0.003, 0.3, 200.0):
        metrics.observe("chat.completions", 200, seconds)
    metrics.observe("chat.completions", 429, 0.001)
    samples = _samples(metrics.render().decode())
    chat = (("endpoint", "chat.completions"),)
    assert samples[("chatgpt_proxy_requests_total", (*chat, ("status", "200")))] == 3
    assert samples[("chatgpt_proxy_requests_total", (*chat, ("status", "429")))] == 1
    bucket = "chatgpt_proxy_request_seconds_bucket"
    assert samples[(bucket, (*chat, ("le", "0.005")))] == 2  # 0.003 and 0.001
    assert samples[(bucket, (*chat, ("le", "0.5")))] == 3
    assert samples[(bucket, (*chat, ("le", "120.0")))] == 3
    assert samples[(bucket, (*chat, ("le", "+Inf")))] == 4
    assert samples[("chatgpt_proxy_request_seconds_count", chat)] == 4
    assert abs(samples[("chatgpt_proxy_request_seconds_sum", chat)] - 200.304) < 1e-9


def test_the_proxy_exports_requests_and_key_states(proxy: Proxy) -> None:
    proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    samples = _samples(proxy.http().get("/metrics").text)
    chat = ("endpoint", "chat.completions")
    assert samples[("chatgpt_proxy_requests_total", (chat, ("status", "200")))] == 1
    up = "chatgpt_proxy_upstream_key_up"
    assert samples[(up, (("key", "openai#1"), ("state", "active")))] == 1
    assert samples[(up, (("key", "openai#2"), ("state", "active")))] == 1


def test_background_errors_are_counted_by_task() -> None:
    errors = TaskErrors()
    metrics = Metrics([])
    metrics.watch_tasks(errors)
    assert "chatgpt_proxy_background_errors_total{" not in metrics.render().decode()
    errors.count("writing usage")
    errors.count("writing usage")
    errors.count("refreshing client keys")
    samples = _samples(metrics.render().decode())
    name = "chatgpt_proxy_background_errors_total"
    assert samples[(name, (("task", "writing usage"),))] == 2
    assert samples[(name, (("task", "refreshing client keys"),))] == 1


def test_the_proxy_exports_its_usage_writer(proxy: Proxy) -> None:
    samples = _samples(proxy.http().get("/metrics").text)
    for name in (
        "chatgpt_proxy_usage_pending_requests",
        "chatgpt_proxy_usage_written_requests_total",
        "chatgpt_proxy_usage_set_aside_rows_total",
        "chatgpt_proxy_usage_dropped_requests_total",
        "chatgpt_proxy_usage_failed_flushes_total",
    ):
        assert samples[(name, ())] == 0, name
