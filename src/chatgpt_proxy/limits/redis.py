"""Per-key limits shared through Redis: exact across every process and replica.

Each admission is one call of ``lua.ADMIT`` (every check and reservation at once), each
settlement with its release a record for ``lua.SETTLE`` that nobody waits for; both go through
an ``AutoPipeline``, so a busy process sends them in few round trips, and the settlements of
one client key in one pipeline as a single call. A budget counter Redis
does not have yet is seeded from the key store (first use after start, a policy change, a
Redis restart) and the admission tried again. Redis errors surface as ``RedisUnavailable``,
for ``FallbackLimiter`` to act on::

    limiter = RedisLimiter(link, store, pricing, lease_seconds=900.0)
    admission = await limiter.admit(key, estimated_tokens=120, model="gpt-4o-mini")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from chatgpt_proxy.ids import UniqueIds
from chatgpt_proxy.keystore import ClientKey, KeyStore
from chatgpt_proxy.limits import UNLIMITED, Admission, lua
from chatgpt_proxy.limits.autopipe import AutoPipeline
from chatgpt_proxy.limits.policy import (
    WINDOW_SECONDS,
    Limits,
    budget_epoch,
    day_start,
    limits_of,
    rate_headers,
    refusal,
    utc_day,
)
from chatgpt_proxy.memo import Memo
from chatgpt_proxy.pricing import Pricing
from chatgpt_proxy.redis_link import RedisLink, RedisUnavailable

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

_WINDOW_MS = int(WINDOW_SECONDS * 1000)
_TOTAL_TTL_MS = 35 * 86_400_000  # an idle key's counter goes; the store re-seeds it when needed
_DAILY_TTL_MS = 2 * 86_400_000


class RedisLimiter:
    """Limits in Redis under ``link.prefix``; ``lease_seconds`` bounds a dead process's slots."""

    def __init__(
        self,
        link: RedisLink,
        store: KeyStore,
        pricing: Pricing | None = None,
        *,
        lease_seconds: float = 900.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._store = store
        self._pricing = pricing or Pricing({})
        self._lease_ms = int(lease_seconds * 1000)
        self._wall_clock = wall_clock
        self._pipe = AutoPipeline(link)
        self._admit = link.client.register_script(lua.ADMIT)
        self._settle = link.client.register_script(lua.SETTLE)
        self._seed = link.client.register_script(lua.SEED)
        self._limit_strings: Memo[Limits, bytes] = Memo(1024)  # the same few policies
        self._key_names: Memo[tuple[str, datetime, date], tuple[bytes, ...]] = Memo(4096)
        # Request ids: unique across replicas without a random draw per request.
        self._ids = UniqueIds(random_bytes=4, tail=".")

    async def admit(
        self, key: ClientKey, estimated_tokens: int, model: str | None = None
    ) -> Admission:
        limits = limits_of(key.policy)
        if limits is None:
            return UNLIMITED
        cost = self._pricing.estimate(model, estimated_tokens) if limits.priced else 0.0
        day = utc_day(self._wall_clock())
        keys = self._keys(key, day)
        admission = _RedisAdmission(
            self._pipe,
            self._settle,
            keys,
            self._ids.next(),
            limits,
            estimated_tokens,
            cost,
        )
        args = (admission.request_id, f"{estimated_tokens} {cost!r}", self._limit_args(limits))
        for _ in range(3):
            answer = await self._pipe.call(self._admit, keys, args, admission.orphaned)
            code, detail, requests, tokens, reset_ms = map(int, answer.split())
            if code != -1:
                break
            await self._seed_budgets(key.id, keys, day, detail)
        else:
            raise RedisUnavailable("Redis is unavailable (admit: budget counters vanish)")
        headers = rate_headers(limits, requests, tokens, reset_ms / 1000)
        if code != 0:
            raise refusal(lua.REASONS[code - 1], limits, headers, detail / 1000, estimated_tokens)
        admission.headers = headers
        return admission

    async def flush(self) -> None:
        """Wait until the settlements and releases queued so far have been sent."""
        await self._pipe.drain()

    async def close(self) -> None:
        await self._pipe.close()  # after sending what is queued: a clean shutdown frees slots

    def _keys(self, key: ClientKey, day: date) -> tuple[bytes, ...]:
        """The key's Redis keys, encoded once per key, policy version and day."""
        cache_key = (key.id, key.updated_at, day)
        names = self._key_names.get(cache_key)
        if names is None:
            base = f"{self._link.prefix}{{{key.id}}}:"
            epoch = budget_epoch(key)
            texts = (
                base + "w",
                base + "wt",
                base + "c",
                f"{base}b:{epoch}",
                f"{base}d:{epoch}:{day}",
            )
            names = self._key_names.remember(cache_key, tuple(text.encode() for text in texts))
        return names

    def _limit_args(self, limits: Limits) -> bytes:
        """The limits as the script reads them; the same few policies come again and again."""
        cached = self._limit_strings.get(limits)
        if cached is not None:
            return cached
        values = (
            limits.rpm,
            limits.tpm,
            limits.concurrency,
            limits.daily_tokens,
            limits.total_tokens,
            limits.daily_cost,
            limits.total_cost,
        )
        numbers = [-1 if value is None else value for value in values]
        numbers += [_WINDOW_MS, self._lease_ms, _TOTAL_TTL_MS, _DAILY_TTL_MS]
        return self._limit_strings.remember(
            limits, " ".join(repr(number) for number in numbers).encode()
        )

    async def _seed_budgets(
        self, key_id: str, keys: Sequence[bytes], day: date, missing: int
    ) -> None:
        if missing & 1:
            tokens, cost = await self._store.usage.totals(key_id)
            await self._pipe.call(self._seed, (keys[3],), (tokens, repr(cost), _TOTAL_TTL_MS))
        if missing & 2:
            tokens, cost = await self._store.usage.totals(key_id, day_start(day))
            await self._pipe.call(self._seed, (keys[4],), (tokens, repr(cost), _DAILY_TTL_MS))


class _RedisAdmission:
    __slots__ = (
        "_cost",
        "_estimate",
        "_estimated_cost",
        "_flags",
        "_keys",
        "_pipe",
        "_released",
        "_settle",
        "_used",
        "headers",
        "request_id",
    )

    def __init__(
        self,
        pipe: AutoPipeline,
        settle: AsyncScript,
        keys: tuple[bytes, ...],
        request_id: str,
        limits: Limits,
        estimate: int,
        estimated_cost: float,
    ) -> None:
        self._pipe = pipe
        self._settle = settle
        self._keys = keys
        self.request_id = request_id
        self._flags = (
            (1 if limits.windowed else 0)
            | (2 if limits.concurrency is not None else 0)
            | (4 if limits.total else 0)
            | (8 if limits.daily else 0)
        )
        self._estimate = estimate
        self._estimated_cost = estimated_cost
        self._used = estimate  # unsettled, the reservation stands
        self._cost = estimated_cost
        self._released = False
        self.headers: Mapping[str, str] = {}

    async def settle(self, used_tokens: int, cost: float = 0.0) -> None:
        self._used, self._cost = used_tokens, cost  # sent with the release, in one call

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._send_settlement()

    def orphaned(self, answer: Any) -> None:
        """The request went away while its admission was on its way: undo it if it passed."""
        if int(answer.split()[0]) == 0 and not self._released:
            self._used, self._cost = 0, 0.0
            self._released = True
            self._send_settlement()

    def _send_settlement(self) -> None:
        delta_cost = self._cost - self._estimated_cost
        fields = f"{self.request_id} {self._flags} {self._used} {self._used - self._estimate}"
        # A busy key's settlements that meet in one pipeline go as one call.
        self._pipe.send(self._settle, self._keys, (f"{fields} {delta_cost!r}",), merge=True)
