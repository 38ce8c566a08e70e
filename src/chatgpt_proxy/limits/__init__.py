"""Per-key limits: the seam every limiter implements (DESIGN §2 ``limits/``).

A request is *admitted* before it is forwarded, with an estimate of its tokens reserved, and
*settled* once the upstream reports what it really used; ``release`` ends its concurrency
slot. ``headers`` are the ``x-ratelimit-*`` headers the client sees.
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
    async def admit(self, key: ClientKey, estimated_tokens: int) -> Admission: ...

    async def close(self) -> None: ...


class _Unlimited:
    headers: Mapping[str, str] = {}

    async def settle(self, used_tokens: int, cost: float = 0.0) -> None:
        return None

    async def release(self) -> None:
        return None


class NoLimits:
    """Admits everything: for keys and deployments without limits."""

    _admission = _Unlimited()

    async def admit(self, key: ClientKey, estimated_tokens: int) -> Admission:
        return self._admission

    async def close(self) -> None:
        return None
