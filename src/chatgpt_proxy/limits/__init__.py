"""Per-key limits: the seam every limiter implements (DESIGN §2 ``limits/``).

A request is *admitted* before it is forwarded, with an estimate of its tokens (and, for a key
with a cost budget, of their price for ``model``) reserved, and *settled* once the upstream
reports what it really used; ``release`` ends its concurrency slot and must always be called,
after ``settle`` (a limiter may apply both at once, then). ``headers`` are the
``x-ratelimit-*`` headers the client sees. ``admit`` raises the refusal (``RateLimited``,
``QuotaExceeded``) itself.

The limiters, all following the rules in ``limits.policy``:

* ``memory.MemoryLimiter``: one process, no other service; the default;
* ``redis.RedisLimiter``: shared by every process and replica through Redis;
* ``fallback.FallbackLimiter``: Redis while it answers, memory while it does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from chatgpt_proxy.keystore import ClientKey


class Admission(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...

    async def settle(self, used_tokens: int, cost: float = 0.0) -> None: ...

    async def release(self) -> None: ...


class Limiter(Protocol):
    async def admit(
        self, key: ClientKey, estimated_tokens: int, model: str | None = None
    ) -> Admission: ...

    async def close(self) -> None: ...


class _Unlimited:
    headers: Mapping[str, str] = {}

    async def settle(self, used_tokens: int, cost: float = 0.0) -> None:
        return None

    async def release(self) -> None:
        return None


UNLIMITED: Admission = _Unlimited()
