"""What every limiter agrees on: which limits a key has, how a refusal reads, the headers.

The rules, the same in memory and in Redis:

* **rpm** and **tpm** count over a sliding window of the last 60 seconds, kept as a log of
  admitted requests (time, tokens). A fixed window would let 2 * rpm through across a minute
  boundary and GCRA up to about 2 * rpm within any 60 s; the log lets exactly ``rpm`` through
  in any 60 s, at the price of one entry per request in the window (bounded by rpm).
* A request reserves its estimated tokens in the window when admitted and is settled to what
  the upstream reported afterwards; it is refused while ``used + estimate > tpm``, so a burst
  never overruns the limit by more than the estimates fell short. A request whose estimate
  alone exceeds tpm can never pass and says so.
* **Budgets** (tokens or USD, per UTC day and in total) are spent once used; a request is let
  through while anything is left and reserves its estimate, so concurrent requests stop as
  soon as the reservations reach the budget. Counters start from the key store's usage totals
  and follow every settlement; a change to the key's policy re-reads them.
* **Concurrency** counts requests in flight; in Redis each slot is a lease, so a process that
  dies frees its slots after ``limits.concurrency_lease_seconds``.
* Headers: ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*``
  (``requests`` for rpm, ``tokens`` for tpm) on every answer of a key that has the limit;
  ``reset`` is the time until the oldest request in the window leaves it, i.e. until
  ``remaining`` next grows.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from chatgpt_proxy.errors import ProxyError, QuotaExceeded, RateLimited
from chatgpt_proxy.keystore import ClientKey, KeyPolicy
from chatgpt_proxy.settings import LimitSettings

WINDOW_SECONDS = 60.0
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one key that cost something to enforce (model globs and expiry do not)."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    daily_tokens: int | None = None
    total_tokens: int | None = None
    daily_cost: float | None = None
    total_cost: float | None = None

    @property
    def windowed(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    @property
    def daily(self) -> bool:
        return self.daily_tokens is not None or self.daily_cost is not None

    @property
    def total(self) -> bool:
        return self.total_tokens is not None or self.total_cost is not None

    @property
    def priced(self) -> bool:
        return self.daily_cost is not None or self.total_cost is not None


@functools.lru_cache(maxsize=4096)  # per request; policies are few and immutable
def limits_of(policy: KeyPolicy) -> Limits | None:
    """The key's limits, or ``None`` for a key without any: it then costs nothing to admit."""
    if (
        policy.rpm is None
        and policy.tpm is None
        and policy.max_concurrency is None
        and policy.daily_token_budget is None
        and policy.total_token_budget is None
        and policy.daily_cost_budget is None
        and policy.total_cost_budget is None
    ):
        return None
    return Limits(
        policy.rpm,
        policy.tpm,
        policy.max_concurrency,
        policy.daily_token_budget,
        policy.total_token_budget,
        policy.daily_cost_budget,
        policy.total_cost_budget,
    )


def default_policy(settings: LimitSettings) -> KeyPolicy:
    """The policy of a new key before its request's own fields: ``limits.default_*``."""
    return KeyPolicy(
        rpm=settings.default_rpm,
        tpm=settings.default_tpm,
        max_concurrency=settings.default_max_concurrency,
        daily_token_budget=settings.default_daily_token_budget,
        total_token_budget=settings.default_total_token_budget,
        daily_cost_budget=settings.default_daily_cost_budget,
        total_cost_budget=settings.default_total_cost_budget,
        models=settings.default_models,
    )


def budget_epoch(key: ClientKey) -> int:
    """Budget counters belong to one version of a key's policy: a change starts new ones."""
    return int(key.updated_at.timestamp() * 1000)


def utc_day(now: float) -> date:
    return _day_number(int(now // 86_400))  # Unix time has exactly 86,400 s a day


@functools.lru_cache(maxsize=4)  # asked for every limited request; a new one daily
def _day_number(number: int) -> date:
    return _EPOCH + timedelta(days=number)


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def duration(seconds: float) -> str:
    """OpenAI's style of reset time: ``"250ms"``, ``"1.5s"``, ``"6m0s"``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


def rate_headers(
    limits: Limits,
    requests: int,
    tokens: int,
    reset: float,
) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers, given the requests and tokens now in the window."""
    headers = {}
    if limits.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, limits.rpm - requests))
        headers["x-ratelimit-reset-requests"] = duration(reset if requests else 0.0)
    if limits.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, limits.tpm - tokens))
        headers["x-ratelimit-reset-tokens"] = duration(reset if tokens else 0.0)
    return headers


# What a limiter found in the way of a request; the order is the order they are checked in.
OVER_DAILY_TOKENS = "daily_tokens"
OVER_TOTAL_TOKENS = "total_tokens"
OVER_DAILY_COST = "daily_cost"
OVER_TOTAL_COST = "total_cost"
OVER_RPM = "rpm"
OVER_TPM = "tpm"
TOO_LARGE = "too_large"
OVER_CONCURRENCY = "concurrency"


def refusal(
    reason: str, limits: Limits, headers: dict[str, str], retry_after: float, estimate: int
) -> ProxyError:
    """The error a refused request gets (DESIGN §1): 429, with the code saying which kind."""
    if reason in _BUDGET_NAMES:
        what, value = _BUDGET_NAMES[reason], _budget_value(reason, limits)
        renews = " It renews at 00:00 UTC." if reason.startswith("daily") else ""
        return QuotaExceeded(
            f"This key has used its {what} ({value}).{renews}",
            headers={**headers, "x-should-retry": "false"},
        )
    if reason == TOO_LARGE:
        return RateLimited(
            f"Request too large for this key's tokens per minute (TPM): limit {limits.tpm}, "
            f"requested about {estimate}. Send less, or lower max_tokens.",
            headers={**headers, "x-should-retry": "false"},
        )
    if reason == OVER_CONCURRENCY:
        message = f"Too many requests in flight for this key: limit {limits.concurrency}."
    elif reason == OVER_RPM:
        message = (
            f"Rate limit reached for requests per minute (RPM) on this key: limit {limits.rpm}."
        )
    else:
        message = f"Rate limit reached for tokens per minute (TPM) on this key: limit {limits.tpm}."
    wait = max(retry_after, 0.001)
    return RateLimited(
        f"{message} Please try again in {duration(wait)}.", retry_after=wait, headers=headers
    )


_BUDGET_NAMES = {
    OVER_DAILY_TOKENS: "daily token budget",
    OVER_TOTAL_TOKENS: "total token budget",
    OVER_DAILY_COST: "daily cost budget",
    OVER_TOTAL_COST: "total cost budget",
}


def _budget_value(reason: str, limits: Limits) -> str:
    if reason == OVER_DAILY_TOKENS:
        return f"{limits.daily_tokens} tokens"
    if reason == OVER_TOTAL_TOKENS:
        return f"{limits.total_tokens} tokens"
    cost = limits.daily_cost if reason == OVER_DAILY_COST else limits.total_cost
    return f"${cost:g}"
