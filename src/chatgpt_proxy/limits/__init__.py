"""Per-key limits: the seam every limiter implements (DESIGN §2 ``limits/``).

A request is *admitted* before it is forwarded, with an estimate of its tokens (and, for a key
with a cost budget, of their price for ``model``) reserved, and *settled* once the upstream
reports what it really used; ``release`` ends its concurrency slot and must always be called,
after ``settle`` (a limiter may apply both at once, then). ``headers`` are the
``x-ratelimit-*`` headers the client sees. ``admit`` raises the refusal (``RateLimited``,
``QuotaExceeded``) itself. A key without limits (``policy.limits_of`` is None) is admitted as
``UNLIMITED`` by every limiter, which is why ``Admit`` does not ask about one.

The limiters, all following the rules in ``limits.policy``:

* ``memory.MemoryLimiter``: one process, no other service; the default;
* ``redis.RedisLimiter``: shared by every process and replica through Redis;
* ``fallback.FallbackLimiter``: Redis while it answers, memory while it does not.

``Admit`` is the pipeline's limits stage: it admits the request, and settles it with what the
stages after it metered, however they end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from chatgpt_proxy.exchange import Answering, Exchange, Next
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.limits.policy import limits_of


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


class Admit:
    """The pipeline's limits stage: rpm, tpm, concurrency and budget (429 when over), then
    the admission settled with the tokens and cost the meter found, however the rest ends."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    def __call__(self, exchange: Exchange, forward: Next) -> Answering:
        if limits_of(exchange.key.policy) is None:
            # Every limiter admits a key without limits at once, with nothing to settle
            # (``UNLIMITED``): the rest is returned unawaited (a tail call), as asking the
            # limiter would only cost two coroutines.
            return forward(exchange)
        return self._admitted(exchange, forward)

    async def _admitted(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        admission = await self._limiter.admit(exchange.key, exchange.estimate, exchange.model)
        exchange.context.headers = admission.headers
        try:
            return await forward(exchange)
        finally:
            await admission.settle(exchange.used_tokens, exchange.cost)
            await admission.release()
