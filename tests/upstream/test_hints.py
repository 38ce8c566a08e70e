"""Reading the hints of headers: upstream resets and rate limits, client timeouts."""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.upstream.hints import (
    RateLimit,
    client_timeout,
    parse_duration,
    rate_limit,
    reset_seconds,
)
from fake_openai.ratelimits import format_duration


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry_after": "30"}, 30.0),
        ({"retry_after": "2.5"}, 2.5),
        ({"retry_after_ms": "1500", "retry_after": "9"}, 1.5),
        ({"x_ratelimit_reset_requests": "1m30s"}, 90.0),
        ({"x_ratelimit_reset_requests": "20ms", "x_ratelimit_reset_tokens": "6s"}, 6.0),
        # Odd hints are passed over for the next sound one, or for the pool's default.
        ({"retry_after": "nan"}, None),
        ({"retry_after": "inf"}, None),
        ({"retry_after": "-inf"}, None),
        ({"retry_after": "-5"}, None),
        ({"retry_after": "soon"}, None),
        ({"retry_after": ""}, None),
        ({"retry_after": "1e400"}, None),
        ({"retry_after_ms": "nan", "retry_after": "7"}, 7.0),
        ({"retry_after_ms": "-100", "retry_after": "inf"}, None),
        ({"retry_after_ms": "garbage", "x_ratelimit_reset_requests": "3s"}, 3.0),
        ({"retry_after": "nan", "x_ratelimit_reset_requests": "-3s"}, None),
        ({"retry_after": "nan", "x_ratelimit_reset_requests": "inf"}, None),
        # A date that has passed, or one that is not a date at all.
        ({"retry_after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"retry_after": "Wed, 99 Foo 2015 07:28:00 GMT"}, None),
    ],
)
def test_reset_seconds_is_finite_and_never_negative(
    headers: dict[str, str], expected: float | None
) -> None:
    assert reset_seconds(_headers(**headers)) == expected


def test_reset_seconds_reads_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 90, usegmt=True)
    seconds = reset_seconds(_headers(retry_after=when))
    assert seconds is not None and 80 < seconds <= 90
    far = reset_seconds(_headers(retry_after="Wed, 21 Oct 2026 07:28:00 GMT"))
    assert far is not None and far >= 0  # the pool caps what it waits


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("20ms", 0.02), ("2", 2.0)],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "s", "1x", "nan", "-1s", "-2", "1s garbage"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), ("600.0", 600.0), ("0", None), ("-3", None), ("nan", None), ("inf", None)],
)
def test_client_timeout(value: str, expected: float | None) -> None:
    headers = _headers(x_stainless_read_timeout=value)
    assert client_timeout(headers) == expected
    assert client_timeout(_headers()) is None


# ---------------------------------------------------------------- durations, as a property

_SECONDS = st.integers(min_value=0, max_value=10**7)  # milliseconds, as OpenAI rounds them


@given(_SECONDS)
def test_every_duration_the_upstream_spells_is_read_back(millis: int) -> None:
    assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)


@given(
    st.integers(min_value=0, max_value=99),
    st.integers(min_value=0, max_value=59),
    st.decimals(min_value=0, max_value=60, places=3),
)
def test_hours_minutes_and_fractional_seconds_add_up(
    hours: int, minutes: int, seconds: Any
) -> None:
    text = f"{hours}h{minutes}m{seconds}s"
    assert parse_duration(text) == pytest.approx(hours * 3600 + minutes * 60 + float(seconds))


@given(st.text(alphabet="0123456789.hmsuµn -e+", max_size=30) | st.text(max_size=30))
def test_any_text_is_a_finite_duration_or_none(text: str) -> None:
    seconds = parse_duration(text)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0s", 0.0), ("500us", 0.0005), ("500µs", 0.0005), ("7ns", 7e-9), ("1" * 400 + "h", None)],
)
def test_parse_duration_reads_go_spellings(text: str, expected: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(expected) if expected is not None else None)


# ---------------------------------------------------------------- rate limits told


def test_rate_limit_reads_limit_remaining_and_reset() -> None:
    headers = _headers(
        x_ratelimit_limit_requests="60",
        x_ratelimit_remaining_requests="59",
        x_ratelimit_reset_requests="1s",
        x_ratelimit_limit_tokens="150000",
        x_ratelimit_remaining_tokens="149984",
        x_ratelimit_reset_tokens="6m0s",
    )
    assert rate_limit(headers, "requests") == RateLimit(60, 59, 1.0)
    assert rate_limit(headers, "tokens") == RateLimit(150000, 149984, 360.0)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, None),
        ({"x_ratelimit_limit_requests": "60"}, None),
        ({"x_ratelimit_remaining_requests": "6"}, None),
        ({"x_ratelimit_limit_requests": "0", "x_ratelimit_remaining_requests": "0"}, None),
        ({"x_ratelimit_limit_requests": "nan", "x_ratelimit_remaining_requests": "1"}, None),
        ({"x_ratelimit_limit_requests": "9", "x_ratelimit_remaining_requests": "x"}, None),
        # Told without a sound reset; what remains kept within [0, limit].
        ({"x_ratelimit_limit_requests": "9", "x_ratelimit_remaining_requests": "3"}, (9, 3, None)),
        (
            {
                "x_ratelimit_limit_requests": "9",
                "x_ratelimit_remaining_requests": "12",
                "x_ratelimit_reset_requests": "soon",
            },
            (9, 9, None),
        ),
        (
            {
                "x_ratelimit_limit_requests": "9",
                "x_ratelimit_remaining_requests": "-4",
                "x_ratelimit_reset_requests": "999h",
            },
            (9, 0, 86400.0),
        ),
    ],
)
def test_rate_limit_passes_over_unsound_values(
    values: dict[str, str], expected: tuple[float, float, float | None] | None
) -> None:
    told = rate_limit(_headers(**values), "requests")
    assert told == (RateLimit(*expected) if expected is not None else None)
