"""Reading the hints of headers: upstream resets and client timeouts."""

from __future__ import annotations

import email.utils
import time

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.upstream.hints import client_timeout, parse_duration, reset_seconds


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
