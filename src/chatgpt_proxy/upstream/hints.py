"""What the headers say about time and room: when a rate-limited key may be used again, how much
of its rate limits it has left, and how long a client will wait for its answer.

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
from typing import Literal, NamedTuple

# Go's time.Duration spelling, which OpenAI's reset headers use: "6m0s", "20ms", "1h2m3.5s";
# one match, its groups in the order of _DURATION_UNITS.
_DURATION = re.compile(
    "".join(rf"(?:([0-9]+(?:\.[0-9]+)?){unit})?" for unit in ("h", "m", "s", "ms", "[uµ]s", "ns"))
)
_DURATION_UNITS = (3600.0, 60.0, 1.0, 1e-3, 1e-6, 1e-9)
_MAX_RESET = 86400.0  # a reset further off than a day (daily limits) is taken as a day
# The headers of each limit, named once: answers are read on every request.
_RATE_LIMIT_HEADERS = {
    kind: (
        f"x-ratelimit-limit-{kind}",
        f"x-ratelimit-remaining-{kind}",
        f"x-ratelimit-reset-{kind}",
    )
    for kind in ("requests", "tokens")
}


class RateLimit(NamedTuple):  # a tuple: made for every answer, and cheaper than a dataclass
    """One of a key's upstream limits as an answer told it: ``limit`` per window, ``remaining``
    of it (0 <= remaining <= limit), and ``reset`` seconds until it is whole again, if said."""

    limit: float
    remaining: float
    reset: float | None


def rate_limit(headers: Mapping[str, str], kind: Literal["requests", "tokens"]) -> RateLimit | None:
    """What ``x-ratelimit-{limit,remaining,reset}-{kind}`` say, or None when the limit or what
    remains of it is missing or unsound."""
    limit_name, remaining_name, reset_name = _RATE_LIMIT_HEADERS[kind]
    limit_text = headers.get(limit_name)
    remaining_text = headers.get(remaining_name)
    if limit_text is None or remaining_text is None:
        return None
    limit, remaining = _number(limit_text), _number(remaining_text)
    if limit is None or remaining is None or limit <= 0:
        return None
    reset_text = headers.get(reset_name)
    reset = parse_duration(reset_text) if reset_text is not None else None
    if remaining < 0.0:
        remaining = 0.0
    elif remaining > limit:
        remaining = limit
    if reset is not None and reset > _MAX_RESET:
        reset = _MAX_RESET
    return RateLimit(limit, remaining, reset)


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
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"`` (Go's
    spelling, so also ``"500us"``/``"500µs"`` and ``"ns"``), or a bare number of seconds."""
    text = text.strip()
    if not text[-1:].isalpha():  # OpenAI's always end in a unit: no float() that would fail
        number = _number(text)
        return number if number is not None and number >= 0 else None
    # Most resets are "20ms" or "1.5s": read without the regex (several times dearer), on
    # every answer.
    head, scale = (text[:-2], 1e-3) if text.endswith("ms") else (text[:-1], 1.0)
    if text[-1] == "s" and head.isascii() and head.replace(".", "", 1).isdigit():
        seconds = float(head) * scale
        return seconds if math.isfinite(seconds) else None
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    seconds = 0.0
    for part, unit in zip(match.groups(), _DURATION_UNITS, strict=True):
        if part is not None:
            seconds += float(part) * unit
    return seconds if math.isfinite(seconds) else None  # "999...9h" overflows to inf
