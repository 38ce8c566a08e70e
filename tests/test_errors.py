"""The exception tree: statuses, codes, and what each error tells the SDKs about retrying."""

from __future__ import annotations

import pytest

from chatgpt_proxy.errors import (
    AuthenticationFailed,
    InvalidJSON,
    ModelNotFound,
    NoUpstreamKeys,
    PermissionDenied,
    ProxyError,
    RequestTooLarge,
    UpstreamError,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamTimeout,
)


@pytest.mark.parametrize(
    "error",
    [
        InvalidJSON("bad"),
        RequestTooLarge("big"),
        ModelNotFound("none"),
        AuthenticationFailed("who"),
        PermissionDenied("no"),
        NoUpstreamKeys("none left"),
        UpstreamQuotaExhausted("spent"),
    ],
)
def test_errors_a_retry_cannot_fix_say_so(error: ProxyError) -> None:
    assert error.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("error", [UpstreamError("down"), UpstreamTimeout("slow")])
def test_upstream_failures_ask_for_a_spaced_retry(error: ProxyError) -> None:
    assert error.headers == {"x-should-retry": "true", "retry-after": "1", "retry-after-ms": "1000"}
    error.advise_retry(2.5)
    assert (error.headers["retry-after"], error.headers["retry-after-ms"]) == ("3", "2500")


@pytest.mark.parametrize(
    ("hint", "seconds", "millis"),
    [
        (30.0, "30", "30000"),
        (0.25, "1", "250"),
        (500.0, "120", "120000"),
        (float("nan"), "1", "1000"),
        (float("inf"), "1", "1000"),
        (-5.0, "1", "1"),
    ],
)
def test_upstream_rate_limited_retry_after_is_sane(hint: float, seconds: str, millis: str) -> None:
    error = UpstreamRateLimited("cooling", retry_after=hint)
    assert error.headers["retry-after"] == seconds
    assert error.headers["retry-after-ms"] == millis
    assert error.headers["x-should-retry"] == "true"
    assert error.retry_after is not None and 1 <= error.retry_after <= 120
