"""What every limiter does, the same in memory and in Redis, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from limits_rig import Rig

from chatgpt_proxy.errors import QuotaExceeded, RateLimited
from chatgpt_proxy.limits import UNLIMITED


def test_a_key_without_limits_costs_nothing(rig: Rig) -> None:
    key = rig.key(models=("gpt-4o*",))
    assert rig.admit(key, 10_000) is UNLIMITED
    if rig.link is not None:
        assert rig.redis("KEYS", rig.link.prefix + "*") == []


def test_rpm_admits_exactly_the_limit_then_refuses_with_retry_after(rig: Rig) -> None:
    key = rig.key(rpm=3)
    remaining = []
    for _ in range(3):
        admission = rig.admit(key, 1)
        remaining.append(admission.headers["x-ratelimit-remaining-requests"])
        assert admission.headers["x-ratelimit-limit-requests"] == "3"
        rig.finish(admission, 1)
    assert remaining == ["2", "1", "0"]
    error = rig.refused(key, 1)
    assert type(error) is RateLimited
    assert error.code == "rate_limit_exceeded"
    assert 1 <= int(error.headers["retry-after"]) <= 60
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "RPM" in error.message


def test_tpm_reserves_the_estimate_and_settles_to_the_actual(rig: Rig) -> None:
    key = rig.key(tpm=100)
    first = rig.admit(key, 60)
    assert first.headers["x-ratelimit-remaining-tokens"] == "40"
    error = rig.refused(key, 50)  # 60 reserved + 50 > 100
    assert error.code == "rate_limit_exceeded" and "TPM" in error.message
    rig.finish(first, 30)  # it used less than reserved: the rest is free again
    second = rig.admit(key, 50)
    assert second.headers["x-ratelimit-remaining-tokens"] == "20"
    rig.finish(second, 50)


def test_a_request_larger_than_tpm_is_told_not_to_retry(rig: Rig) -> None:
    key = rig.key(tpm=100)
    error = rig.refused(key, 150)
    assert error.code == "rate_limit_exceeded"
    assert error.headers["x-should-retry"] == "false"
    assert "too large" in error.message


def test_concurrency_counts_requests_in_flight(rig: Rig) -> None:
    key = rig.key(max_concurrency=2)
    first, second = rig.admit(key, 1), rig.admit(key, 1)
    error = rig.refused(key, 1)
    assert error.code == "rate_limit_exceeded" and "in flight" in error.message
    rig.finish(first, 1)
    third = rig.admit(key, 1)
    rig.finish(second, 1)
    rig.finish(third, 1)


def test_a_total_token_budget_starts_from_the_stored_usage(rig: Rig) -> None:
    key = rig.key(total_token_budget=100)
    rig.record(key, 90)
    admission = rig.admit(key, 5)
    rig.finish(admission, 20)  # 110: spent
    error = rig.refused(key, 1)
    assert type(error) is QuotaExceeded
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert error.headers["x-should-retry"] == "false"


def test_reservations_stop_concurrent_requests_at_the_budget(rig: Rig) -> None:
    key = rig.key(total_token_budget=100)
    admitted = [rig.admit(key, 30) for _ in range(4)]  # 0, 30, 60, 90 spent: each sees some left
    assert rig.refused(key, 30).code == "insufficient_quota"  # 120 reserved
    for admission in admitted:
        rig.finish(admission, 10)  # 40 used in all: the budget has room again
    rig.finish(rig.admit(key, 30), 30)


def test_a_daily_budget_counts_today_only(rig: Rig) -> None:
    key = rig.key(daily_token_budget=50)
    rig.record(key, 1_000, at=datetime.now(UTC) - timedelta(days=2))
    rig.record(key, 10)
    admission = rig.admit(key, 5)
    rig.finish(admission, 45)  # 55 today
    error = rig.refused(key, 1)
    assert error.code == "insufficient_quota" and "00:00 UTC" in error.message


def test_a_cost_budget_is_priced_by_the_pricing_table(rig: Rig) -> None:
    key = rig.key(total_cost_budget=0.001)
    rig.record(key, 100, cost=0.0009)
    admission = rig.admit(key, 1_000, "priced-model")  # reserves 1000 * 2e-6 = 0.002
    assert rig.refused(key, 1, "priced-model").code == "insufficient_quota"
    rig.finish(admission, 10, cost=0.00001)  # 0.00091 spent: some left
    rig.finish(rig.admit(key, 1, "priced-model"), 1, cost=0.000001)


def test_unpriced_models_cost_nothing_against_a_cost_budget(rig: Rig) -> None:
    key = rig.key(daily_cost_budget=0.0)
    assert rig.refused(key, 1, "gpt-4o-mini").code == "insufficient_quota"  # a zero budget
    key = rig.key(daily_cost_budget=0.5)
    for _ in range(3):
        rig.finish(rig.admit(key, 1_000_000, "unpriced-model"), 1_000_000)


def test_a_policy_change_reads_the_usage_again(rig: Rig) -> None:
    key = rig.key(total_token_budget=100)
    rig.finish(rig.admit(key, 10), 10)
    rig.record(key, 95)  # written by someone else: this policy's counter still says 10
    rig.finish(rig.admit(key, 1), 1)
    key = rig.update(key, total_token_budget=90)
    assert rig.refused(key, 1).code == "insufficient_quota"  # the new policy re-read 95


@pytest.mark.parametrize(
    ("limits", "headers"),
    [
        ({"rpm": 5}, {"x-ratelimit-limit-requests"}),
        ({"tpm": 500}, {"x-ratelimit-limit-tokens"}),
        ({"rpm": 5, "tpm": 500}, {"x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"}),
        ({"max_concurrency": 5}, set()),
    ],
)
def test_headers_name_only_the_limits_the_key_has(
    rig: Rig, limits: dict[str, int], headers: set[str]
) -> None:
    admission = rig.admit(rig.key(**limits), 10)
    assert {h for h in admission.headers if h.startswith("x-ratelimit-limit")} == headers
    rig.finish(admission, 10)
