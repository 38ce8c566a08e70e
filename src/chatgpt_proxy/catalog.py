"""The models a client may list: what the configured upstreams serve, as ``/v1/models`` says.

Each upstream's own list is fetched (through its key pool) and filtered by its globs; a model
two upstreams serve is listed once, for the first, as routing would choose. Lists are cached
for ``ttl`` seconds; an upstream that cannot be asked contributes the literal names of its
globs, so the listing degrades instead of failing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.upstream.client import Outbound, UpstreamClient
from chatgpt_proxy.upstream.router import Router, Upstream

_JSON = CIMultiDictProxy(CIMultiDict({"Accept": "application/json"}))
_GLOB_CHARS = frozenset("*?[")


class ModelCatalog:
    """Caches the upstreams' model lists.

    >>> models = await catalog.models()      # [{"id": "gpt-4o", "object": "model", ...}, ...]
    """

    def __init__(
        self,
        client: UpstreamClient,
        router: Router,
        *,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._router = router
        self._ttl = ttl
        self._clock = clock
        self._cached: list[dict[str, Any]] | None = None
        self._expires = 0.0

    async def models(self) -> list[dict[str, Any]]:
        if self._cached is not None and self._clock() < self._expires:
            return self._cached
        listed: dict[str, dict[str, Any]] = {}
        complete = True
        for upstream in self._router.upstreams:
            entries = await self._fetch(upstream)
            if entries is None:
                complete = False
                entries = _literal_models(upstream)
            for entry in entries:
                model_id = entry.get("id")
                if isinstance(model_id, str) and upstream.serves(model_id):
                    listed.setdefault(model_id, entry)
        result = list(listed.values())
        # A degraded list is kept briefly, so a recovered upstream shows up soon.
        self._cached = result
        self._expires = self._clock() + (self._ttl if complete else min(self._ttl, 10.0))
        return result

    async def _fetch(self, upstream: Upstream) -> list[dict[str, Any]] | None:
        try:
            reply = await self._client.send(upstream, Outbound("GET", "/models", "", _JSON))
        except ProxyError:
            return None
        try:
            if reply.response.status != 200:
                return None
            document = orjson.loads(await reply.read())
        except (orjson.JSONDecodeError, ProxyError):
            return None
        finally:
            reply.close()
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, list):
            return None
        return [entry for entry in data if isinstance(entry, dict)]


def _literal_models(upstream: Upstream) -> list[dict[str, Any]]:
    return [
        {"id": pattern, "object": "model", "created": 0, "owned_by": upstream.name}
        for pattern in upstream.settings.models
        if not _GLOB_CHARS & set(pattern)
    ]
