"""Redis limits while Redis answers, this process's own while it does not.

A request must never fail because Redis went away (DESIGN §4): the first Redis error marks
the link down (logged once), admissions go to the ``MemoryLimiter`` until the link's ping finds
Redis again (logged once), and then back to Redis. While it is down each process counts on its
own, so a key may get up to one limit's worth per process; the counts kept locally are not
carried into Redis when it returns (a restarted Redis starts its windows empty)::

    shared = RedisLimiter(link, store, pricing, lease_seconds=900.0)
    limiter = FallbackLimiter(shared, MemoryLimiter(store, pricing), link)
"""

from __future__ import annotations

from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.limits import Admission
from chatgpt_proxy.limits.memory import MemoryLimiter
from chatgpt_proxy.limits.redis import RedisLimiter
from chatgpt_proxy.redis_link import RedisLink, RedisUnavailable


class FallbackLimiter:
    """``shared`` while ``link.up``, else ``local``."""

    def __init__(self, shared: RedisLimiter, local: MemoryLimiter, link: RedisLink) -> None:
        self._shared = shared
        self._local = local
        self._link = link

    async def admit(
        self, key: ClientKey, estimated_tokens: int, model: str | None = None
    ) -> Admission:
        if self._link.up:
            try:
                return await self._shared.admit(key, estimated_tokens, model)
            except RedisUnavailable as exc:
                self._link.failed(exc)
        return await self._local.admit(key, estimated_tokens, model)

    async def close(self) -> None:
        await self._shared.close()
        await self._local.close()
