"""Per-key limits shared through Redis: exact across every process and replica.

Each admission is one ``EVALSHA`` of ``lua.ADMIT`` (every check and reservation at once);
settlements and releases are queued and sent in pipelines by one background task, so they
cost no wait on the request's path and few round trips under load. A budget counter Redis does
not have yet is seeded from the key store (first use after start, a policy change, a Redis
restart) and the admission tried again. Redis errors surface as ``RedisUnavailable``, for
``FallbackLimiter`` to act on::

    limiter = RedisLimiter(link, store, pricing, lease_seconds=900.0)
    admission = await limiter.admit(key, estimated_tokens=120, model="gpt-4o-mini")
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any

from chatgpt_proxy.keystore import ClientKey, KeyStore
from chatgpt_proxy.limits import UNLIMITED, Admission, lua
from chatgpt_proxy.limits.rules import (
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
from chatgpt_proxy.redis_link import RedisLink, RedisUnavailable, redis_errors

logger = logging.getLogger("chatgpt_proxy.limits")

_WINDOW_MS = int(WINDOW_SECONDS * 1000)
_TOTAL_TTL_MS = 35 * 86_400_000  # an idle key's counter goes; the store re-seeds it when needed
_DAILY_TTL_MS = 2 * 86_400_000
_BATCH = 256
_MAX_QUEUED = 100_000  # bounded: past it, the oldest settlements are dropped (leases expire)


class _Script:
    """A Lua script called by its SHA, loaded again when Redis has forgotten it (a restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: Any, keys: Sequence[str], args: Sequence[object]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except Exception as exc:
            if not _no_script(exc):
                raise
        await client.script_load(self.source)
        return await client.evalsha(self.sha, len(keys), *keys, *args)


def _no_script(result: object) -> bool:
    """Whether Redis answered that it does not know the script (it restarted, or was flushed)."""
    # Imported here: this module loads without the optional redis package.
    from redis.exceptions import NoScriptError

    return isinstance(result, NoScriptError)


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
        self._admit = _Script(lua.ADMIT)
        self._settle = _Script(lua.SETTLE)
        self._seed = _Script(lua.SEED)
        # Request ids: unique across replicas without a random draw per request.
        self._ids = (f"{secrets.token_hex(4)}.{n:x}" for n in itertools.count())
        self._queue: deque[_RedisAdmission] = deque(maxlen=_MAX_QUEUED)
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def admit(
        self, key: ClientKey, estimated_tokens: int, model: str | None = None
    ) -> Admission:
        limits = limits_of(key.policy)
        if limits is None:
            return UNLIMITED
        cost = self._pricing.estimate(model, estimated_tokens) if limits.priced else 0.0
        day = utc_day(self._wall_clock())
        keys = self._keys(key, day)
        request_id = next(self._ids)
        args = (request_id, estimated_tokens, repr(cost), *_limit_args(limits))
        args += (_WINDOW_MS, self._lease_ms, _TOTAL_TTL_MS, _DAILY_TTL_MS)
        with redis_errors("admit"):
            for _ in range(3):
                code, detail, requests, tokens, reset_ms = await self._admit(
                    self._link.client, keys, args
                )
                if code != -1:
                    break
                await self._seed_budgets(key.id, keys, day, detail)
            else:
                raise RedisUnavailable("Redis is unavailable (admit: budget counters vanish)")
        headers = rate_headers(limits, requests, tokens, reset_ms / 1000)
        if code != 0:
            reason = lua.REASONS[code - 1]
            raise refusal(reason, limits, headers, detail / 1000, estimated_tokens)
        flags = (
            (1 if limits.windowed else 0)
            | (2 if limits.concurrency is not None else 0)
            | (4 if limits.total else 0)
            | (8 if limits.daily else 0)
        )
        return _RedisAdmission(self, keys, request_id, flags, estimated_tokens, cost, headers)

    async def flush(self) -> None:
        """Send the settlements and releases queued so far (``RedisUnavailable`` if it cannot)."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), _BATCH))]
            with redis_errors("settle"):
                await self._send(batch)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        with contextlib.suppress(RedisUnavailable):
            await self.flush()  # what is left, so a clean shutdown frees its slots at once

    def _keys(self, key: ClientKey, day: date) -> tuple[str, ...]:
        base = f"{self._link.prefix}{{{key.id}}}:"
        epoch = budget_epoch(key)
        return (base + "w", base + "wt", base + "c", f"{base}b:{epoch}", f"{base}d:{epoch}:{day}")

    async def _seed_budgets(
        self, key_id: str, keys: Sequence[str], day: date, missing: int
    ) -> None:
        client = self._link.client
        if missing & 1:
            tokens, cost = await self._store.usage_totals(key_id)
            await self._seed(client, (keys[3],), (tokens, repr(cost), _TOTAL_TTL_MS))
        if missing & 2:
            tokens, cost = await self._store.usage_totals(key_id, day_start(day))
            await self._seed(client, (keys[4],), (tokens, repr(cost), _DAILY_TTL_MS))

    def _enqueue(self, admission: _RedisAdmission) -> None:
        self._queue.append(admission)
        self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._run(), name="limits-settle"
            )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except RedisUnavailable as exc:
                # Those slots and reservations lapse on their own (leases, the window).
                self._queue.clear()
                self._link.failed(exc)

    async def _send(self, batch: Sequence[_RedisAdmission]) -> None:
        pipe = self._link.client.pipeline(transaction=False)
        for admission in batch:
            pipe.evalsha(self._settle.sha, len(admission.keys), *admission.keys, *admission.args())
        results = await pipe.execute(raise_on_error=False)
        retry = [a for a, r in zip(batch, results, strict=True) if _no_script(r)]
        for admission in retry:  # once after a Redis restart: one at a time, loading the script
            await self._settle(self._link.client, admission.keys, admission.args())


def _limit_args(limits: Limits) -> tuple[str | int, ...]:
    def arg(value: float | None) -> str | int:
        return -1 if value is None else repr(value) if isinstance(value, float) else value

    return (
        arg(limits.rpm),
        arg(limits.tpm),
        arg(limits.concurrency),
        arg(limits.daily_tokens),
        arg(limits.total_tokens),
        arg(limits.daily_cost),
        arg(limits.total_cost),
    )


class _RedisAdmission:
    __slots__ = (
        "_cost",
        "_estimate",
        "_estimated_cost",
        "_limiter",
        "_released",
        "_used",
        "flags",
        "headers",
        "keys",
        "request_id",
    )

    def __init__(
        self,
        limiter: RedisLimiter,
        keys: tuple[str, ...],
        request_id: str,
        flags: int,
        estimate: int,
        estimated_cost: float,
        headers: Mapping[str, str],
    ) -> None:
        self._limiter = limiter
        self.keys = keys
        self.request_id = request_id
        self.flags = flags
        self._estimate = estimate
        self._estimated_cost = estimated_cost
        self._used = estimate  # unsettled: the reservation stands
        self._cost = estimated_cost
        self._released = False
        self.headers = headers

    def args(self) -> tuple[str | int, ...]:
        delta_tokens = self._used - self._estimate
        delta_cost = self._cost - self._estimated_cost
        return (self.request_id, self.flags, self._used, delta_tokens, repr(delta_cost))

    async def settle(self, used_tokens: int, cost: float = 0.0) -> None:
        self._used, self._cost = used_tokens, cost  # sent with the release, in one call

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._enqueue(self)
