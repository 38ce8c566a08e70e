"""Per-key limits in this process's memory: exact for one process, per process for several.

The default without ``redis_url``, and the fallback while Redis is unreachable. The rules are
those of ``limits.policy``; the window is a deque of entries per key, pruned as requests come::

    limiter = MemoryLimiter(store)
    admission = await limiter.admit(key, estimated_tokens=120, model="gpt-4o-mini")
    try:
        ...                                        # forward the request
        await admission.settle(used_tokens=97, cost=0.0001)
    finally:
        await admission.release()
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

from chatgpt_proxy.keystore import ClientKey, KeyStore
from chatgpt_proxy.limits import UNLIMITED, Admission
from chatgpt_proxy.limits.policy import (
    OVER_CONCURRENCY,
    OVER_DAILY_COST,
    OVER_DAILY_TOKENS,
    OVER_RPM,
    OVER_TOTAL_COST,
    OVER_TOTAL_TOKENS,
    OVER_TPM,
    TOO_LARGE,
    WINDOW_SECONDS,
    Limits,
    budget_epoch,
    day_start,
    limits_of,
    rate_headers,
    refusal,
    utc_day,
)
from chatgpt_proxy.pricing import Pricing


@dataclass(slots=True)
class _Entry:
    at: float
    tokens: int
    live: bool = True  # False once pruned: a late settlement must not touch the window's sum


@dataclass(slots=True)
class _Window:
    entries: deque[_Entry] = field(default_factory=deque)
    tokens: int = 0
    inflight: int = 0

    def prune(self, now: float) -> None:
        cutoff = now - WINDOW_SECONDS
        entries = self.entries
        while entries and entries[0].at <= cutoff:
            entry = entries.popleft()
            entry.live = False
            self.tokens -= entry.tokens

    def wait_for_tokens(self, needed: int, now: float) -> float:
        """Seconds until ``needed`` tokens have left the window."""
        freed = 0
        for entry in self.entries:
            freed += entry.tokens
            if freed >= needed:
                return entry.at + WINDOW_SECONDS - now
        return WINDOW_SECONDS


@dataclass(slots=True)
class _Budget:
    epoch: int
    day: date
    total_tokens: int = 0
    total_cost: float = 0.0
    daily_tokens: int = 0
    daily_cost: float = 0.0

    def over(self, limits: Limits) -> str | None:
        if limits.daily_tokens is not None and self.daily_tokens >= limits.daily_tokens:
            return OVER_DAILY_TOKENS
        if limits.total_tokens is not None and self.total_tokens >= limits.total_tokens:
            return OVER_TOTAL_TOKENS
        if limits.daily_cost is not None and self.daily_cost >= limits.daily_cost:
            return OVER_DAILY_COST
        if limits.total_cost is not None and self.total_cost >= limits.total_cost:
            return OVER_TOTAL_COST
        return None

    def spend(self, day: date, tokens: int, cost: float) -> None:
        self.total_tokens += tokens
        self.total_cost += cost
        if day == self.day:
            self.daily_tokens += tokens
            self.daily_cost += cost


class MemoryLimiter:
    """Limits kept in this process; ``store`` seeds the budgets, ``pricing`` prices estimates."""

    def __init__(
        self,
        store: KeyStore,
        pricing: Pricing | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._pricing = pricing or Pricing({})
        self._clock = clock
        self._wall_clock = wall_clock
        self._windows: dict[str, _Window] = {}
        self._budgets: dict[str, _Budget] = {}
        self._seeding: dict[str, asyncio.Future[_Budget]] = {}

    async def admit(
        self, key: ClientKey, estimated_tokens: int, model: str | None = None
    ) -> Admission:
        limits = limits_of(key.policy)
        if limits is None:
            return UNLIMITED
        estimated_cost = self._pricing.estimate(model, estimated_tokens) if limits.priced else 0.0
        budget = None
        if limits.daily or limits.total:
            budget = await self._budget(
                key
            )  # may read the store: before the checks, no await after
        window = self._windows.get(key.id)
        if window is None:
            window = self._windows[key.id] = _Window()
        now = self._clock()
        window.prune(now)
        reason, wait = _check(limits, window, budget, estimated_tokens, now)
        if reason is not None:
            headers = rate_headers(limits, len(window.entries), window.tokens, _reset(window, now))
            raise refusal(reason, limits, headers, wait, estimated_tokens)
        entry = None
        if limits.windowed:
            entry = _Entry(now, estimated_tokens)
            window.entries.append(entry)
            window.tokens += estimated_tokens
        window.inflight += 1
        day = budget.day if budget is not None else None
        if budget is not None:
            budget.spend(budget.day, estimated_tokens, estimated_cost)
        headers = rate_headers(limits, len(window.entries), window.tokens, _reset(window, now))
        return _MemoryAdmission(
            window, entry, budget, day, estimated_tokens, estimated_cost, headers
        )

    async def close(self) -> None:
        return None

    async def _budget(self, key: ClientKey) -> _Budget:
        epoch = budget_epoch(key)
        today = utc_day(self._wall_clock())
        budget = self._budgets.get(key.id)
        if budget is not None and budget.epoch == epoch:
            if budget.day != today:
                budget.daily_tokens, budget.daily_cost = await self._store.usage.totals(
                    key.id, day_start(today)
                )
                budget.day = today
            return budget
        # Requests arriving together for an unseen key wait for one read of the store.
        pending = self._seeding.get(key.id)
        if pending is None:
            pending = asyncio.ensure_future(self._seed(key.id, epoch, today))
            self._seeding[key.id] = pending
            pending.add_done_callback(lambda _: self._seeding.pop(key.id, None))
        return await asyncio.shield(pending)

    async def _seed(self, key_id: str, epoch: int, today: date) -> _Budget:
        total_tokens, total_cost = await self._store.usage.totals(key_id)
        daily_tokens, daily_cost = await self._store.usage.totals(key_id, day_start(today))
        budget = _Budget(epoch, today, total_tokens, total_cost, daily_tokens, daily_cost)
        self._budgets[key_id] = budget
        return budget


def _check(
    limits: Limits, window: _Window, budget: _Budget | None, estimate: int, now: float
) -> tuple[str | None, float]:
    if budget is not None and (over := budget.over(limits)) is not None:
        return over, 0.0
    entries = window.entries
    if limits.rpm is not None and len(entries) >= limits.rpm:
        return OVER_RPM, entries[len(entries) - limits.rpm].at + WINDOW_SECONDS - now
    if limits.tpm is not None:
        if estimate > limits.tpm:
            return TOO_LARGE, 0.0
        if window.tokens + estimate > limits.tpm:
            needed = window.tokens + estimate - limits.tpm
            return OVER_TPM, window.wait_for_tokens(needed, now)
    if limits.concurrency is not None and window.inflight >= limits.concurrency:
        return OVER_CONCURRENCY, 1.0
    return None, 0.0


def _reset(window: _Window, now: float) -> float:
    return window.entries[0].at + WINDOW_SECONDS - now if window.entries else 0.0


class _MemoryAdmission:
    __slots__ = (
        "_budget",
        "_day",
        "_entry",
        "_estimate",
        "_estimated_cost",
        "_released",
        "_window",
        "headers",
    )

    def __init__(
        self,
        window: _Window,
        entry: _Entry | None,
        budget: _Budget | None,
        day: date | None,
        estimate: int,
        estimated_cost: float,
        headers: Mapping[str, str],
    ) -> None:
        self._window = window
        self._entry = entry
        self._budget = budget
        self._day = day
        self._estimate = estimate
        self._estimated_cost = estimated_cost
        self._released = False
        self.headers = headers

    async def settle(self, used_tokens: int, cost: float = 0.0) -> None:
        entry = self._entry
        if entry is not None and entry.live:
            self._window.tokens += used_tokens - entry.tokens
            entry.tokens = used_tokens
        if self._budget is not None and self._day is not None:
            tokens, spent = used_tokens - self._estimate, cost - self._estimated_cost
            self._budget.spend(self._day, tokens, spent)
            self._estimate, self._estimated_cost = used_tokens, cost  # settling twice is harmless

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._window.inflight -= 1
