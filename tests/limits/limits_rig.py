"""A limiter under test, driven from synchronous tests on the session's background loop.

``Rig`` owns a fresh key store and one limiter (memory, or Redis under a random prefix that
is deleted afterwards); its methods run the limiter's coroutines on the loop::

    rig = Rig(loop, "sqlite:///...", redis_url="redis://127.0.0.1:6379")
    key = rig.key(rpm=2)
    admission = rig.admit(key, 10)
    error = rig.refused(key, 10)           # the ProxyError admit raised
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.keystore import ClientKey, KeyPolicy, KeyStore, UsageEvent
from chatgpt_proxy.limits import Admission, Limiter
from chatgpt_proxy.limits.memory import MemoryLimiter
from chatgpt_proxy.limits.redis import RedisLimiter
from chatgpt_proxy.pricing import Pricing
from chatgpt_proxy.redis_link import RedisLink
from chatgpt_proxy.settings import PriceSettings
from servers import BackgroundLoop

# USD per 1M tokens: a model matching "priced-*" costs 1e-6 a prompt token, 2e-6 a completion one.
PRICES = {"priced-*": PriceSettings(prompt=1.0, completion=2.0)}


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(
        self, loop: BackgroundLoop, database_url: str, *, redis_url: str | None = None
    ) -> None:
        self.loop = loop
        self.store: KeyStore = loop.run(self._open_store(database_url))
        self.pricing = Pricing(PRICES)
        self.clock = ManualClock()
        self.wall = time.time()  # what MemoryLimiter takes for "now" on the wall clock
        self.link: RedisLink | None = None
        self.limiter: Limiter
        if redis_url is None:
            self.limiter = MemoryLimiter(
                self.store, self.pricing, clock=self.clock, wall_clock=lambda: self.wall
            )
        else:
            prefix = f"cgp-test:{secrets.token_hex(4)}:"
            self.link = RedisLink(Redis.from_url(redis_url), prefix=prefix)
            self.limiter = RedisLimiter(self.link, self.store, self.pricing, lease_seconds=30)

    @property
    def kind(self) -> str:
        return "memory" if self.link is None else "redis"

    @staticmethod
    async def _open_store(url: str) -> KeyStore:
        store = await KeyStore.open(url)
        await store.migrate()
        return store

    def key(self, **policy: Any) -> ClientKey:
        key, _ = self.loop.run(self.store.create("limited", KeyPolicy(**policy)))
        return key

    def update(self, key: ClientKey, **policy: Any) -> ClientKey:
        changed = KeyPolicy.from_dict({**key.policy.to_dict(), **policy})
        updated = self.loop.run(self.store.update(key.id, policy=changed))
        assert updated is not None
        return updated

    def admit(self, key: ClientKey, estimate: int, model: str | None = None) -> Admission:
        return self.loop.run(self.limiter.admit(key, estimate, model))

    def refused(self, key: ClientKey, estimate: int, model: str | None = None) -> ProxyError:
        try:
            self.admit(key, estimate, model)
        except ProxyError as exc:
            return exc
        raise AssertionError("the request was admitted")

    def finish(self, admission: Admission, used: int, cost: float = 0.0) -> None:
        """Settle and release, and (in Redis) wait until both have been applied."""

        async def finish() -> None:
            await admission.settle(used, cost)
            await admission.release()
            if isinstance(self.limiter, RedisLimiter):
                await self.limiter.flush()

        self.loop.run(finish())

    def record(
        self, key: ClientKey, tokens: int, *, cost: float | None = None, at: datetime | None = None
    ) -> None:
        """Usage the store already holds, as if metered before this process started."""
        event = UsageEvent(
            key_id=key.id,
            model="gpt-4o-mini",
            upstream="openai#1",
            endpoint="chat.completions",
            status=200,
            prompt_tokens=tokens,
            completion_tokens=0,
            total_tokens=tokens,
            latency_ms=5,
            cost=cost,
            created_at=at or datetime.now(UTC),
        )
        self.loop.run(self.store.usage.record([event]))

    def redis(self, *command: Any) -> Any:
        assert self.link is not None
        return self.loop.run(self.link.client.execute_command(*command))

    def close(self) -> None:
        async def close() -> None:
            await self.limiter.close()
            if self.link is not None:
                keys = [k async for k in self.link.client.scan_iter(match=self.link.prefix + "*")]
                if keys:
                    await self.link.client.delete(*keys)
                await self.link.close()
            await self.store.close()

        self.loop.run(close())
