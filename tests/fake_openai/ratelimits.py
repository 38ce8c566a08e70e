"""Per-key rate limits the fake enforces, told as OpenAI tells them.

OpenAI's request and token limits refill continuously: a bucket of ``limit`` that fills from empty
in the limit's window (a minute for RPM/TPM; shorter here, to keep tests fast). Every answer says
where the bucket stands in ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (``reset``: how
long until it is full, as a Go duration such as ``6m0s`` or ``20ms``); a request the bucket cannot
hold is refused with OpenAI's 429 ``rate_limit_exceeded`` and takes nothing from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiohttp import web

from .faults import error_response
from .payloads import ORGANIZATION


def format_duration(seconds: float) -> str:
    """Go's ``time.Duration`` spelling, as OpenAI sends it: ``0s``, ``20ms``, ``6m0s``,
    ``1h2m3.5s`` (to the millisecond, rounded up)."""
    millis = math.ceil(round(seconds * 1000, 6))  # 4.065 s is 4065 ms, not 4065.0000000000005
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    text = f"{millis / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


@dataclass
class Bucket:
    """One limit: ``level`` of ``limit`` left at time ``at``, refilling at ``limit / window``."""

    limit: int
    window: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.at) * self.limit / self.window)
        self.at = now

    def wait_for(self, cost: int) -> float:
        """Seconds until ``cost`` fits (after ``refill``)."""
        return max(0.0, (cost - self.level) * self.window / self.limit)

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.level))),
            f"x-ratelimit-reset-{kind}": format_duration(self.wait_for(self.limit)),
        }


@dataclass
class KeyLimits:
    """The request and (if set) token limits of one key."""

    requests: Bucket
    tokens: Bucket | None = None

    @classmethod
    def new(cls, requests: int, tokens: int | None, window: float, now: float) -> KeyLimits:
        return cls(
            Bucket(requests, window, requests, now),
            Bucket(tokens, window, tokens, now) if tokens is not None else None,
        )

    def admit(self, cost: int, now: float) -> tuple[str | None, float, dict[str, str]]:
        """Take one request of ``cost`` tokens if both buckets hold it: (refused as ``requests``
        or ``tokens``, or None; seconds until it would fit; the headers telling the limits)."""
        buckets = [("requests", self.requests, 1)]
        if self.tokens is not None:
            buckets.append(("tokens", self.tokens, cost))
        for _, bucket, _ in buckets:
            bucket.refill(now)
        short = [(kind, bucket.wait_for(need)) for kind, bucket, need in buckets]
        refused = [(kind, wait) for kind, wait in short if wait > 0]
        if not refused:
            for _, bucket, need in buckets:
                bucket.level -= need
        headers: dict[str, str] = {}
        for kind, bucket, _ in buckets:
            headers.update(bucket.headers(kind))
        if not refused:
            return None, 0.0, headers
        kind, wait = max(refused, key=lambda item: item[1])
        return kind, wait, headers


def limit_exceeded(
    model: str, kind: str, limits: KeyLimits, cost: int, wait: float, headers: dict[str, str]
) -> web.Response:
    """OpenAI's 429 for a request past a key's rate limit, its words and headers."""
    bucket = limits.requests if kind == "requests" else limits.tokens
    assert bucket is not None
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    used = bucket.limit - max(0, math.floor(bucket.level))
    requested = 1 if kind == "requests" else cost
    return error_response(
        429,
        f"Rate limit reached for {model} in organization {ORGANIZATION} on {unit}: Limit"
        f" {bucket.limit}, Used {used}, Requested {requested}. Please try again in"
        f" {format_duration(wait)}. Visit https://platform.openai.com/account/rate-limits to"
        " learn more.",
        kind,
        code="rate_limit_exceeded",
        headers={**headers, "retry-after-ms": str(math.ceil(wait * 1000))},
    )
