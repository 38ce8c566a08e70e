"""What the headers say about time: when a rate-limited key may be used again, and how long a
client will wait for its answer.

Upstream hints are checked, not trusted: a value that is not a finite, non-negative number
(``nan``, ``inf``, ``-5``, garbage) is passed over, never a crash, a negative wait or one that
lasts forever.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
import time
from collections.abc import Mapping

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def client_timeout(headers: Mapping[str, str]) -> float | None:
    """How long the client will wait for an answer, when it says so (the OpenAI SDKs do)."""
    value = headers.get("x-stainless-read-timeout")
    if value is None:
        return None
    seconds = _number(value)
    return seconds if seconds is not None and seconds > 0 else None


def reset_seconds(headers: Mapping[str, str]) -> float | None:
    """When a rate-limited key may be used again: ``retry-after`` or ``x-ratelimit-reset-*``.

    An unsound hint is passed over for the next one, and ``None`` (the pool's default
    cooldown) is the answer when none is sound. ``retry-after`` may also be an
    HTTP date (RFC 9110): what is left of it, or 0 when it has passed.
    """
    if (value := headers.get("retry-after-ms")) is not None:
        millis = _number(value)
        if millis is not None and millis >= 0:
            return millis / 1000.0
    if (value := headers.get("retry-after")) is not None:
        seconds = _number(value)
        if seconds is None:
            seconds = _until_date(value)
        if seconds is not None and seconds >= 0:
            return seconds
    resets = [
        parse_duration(value)
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if (value := headers.get(name)) is not None
    ]
    known = [seconds for seconds in resets if seconds is not None]
    return max(known) if known else None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _until_date(text: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; an unmarked one is taken as such
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``."""
    text = text.strip()
    number = _number(text)
    if number is not None:
        return number if number >= 0 else None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
