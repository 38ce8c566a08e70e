"""Probing upstream keys: what ``chatgpt-proxy check`` reports, and how retired keys come back.

A key retired as invalid is probed with ``GET /models`` (free); one retired for quota with a
one-word embedding, since listing models succeeds without quota. A key that passes is
re-admitted to its pool.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.errors import (
    NoUpstreamKeys,
    ProxyError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from chatgpt_proxy.periodic import Periodic, TaskErrors
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.upstream.client import Outbound, UpstreamClient
from chatgpt_proxy.upstream.pool import KeyPool, UpstreamKey
from chatgpt_proxy.upstream.router import Router, Upstream
from chatgpt_proxy.upstream.transports import build_transport

logger = logging.getLogger("chatgpt_proxy.upstream")

_JSON = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
_QUOTA_PROBE = orjson.dumps({"model": "text-embedding-3-small", "input": "ok"})


class Health(StrEnum):
    OK = "ok"
    INVALID = "invalid"
    NO_QUOTA = "no quota"
    RATE_LIMITED = "rate-limited"
    UNREACHABLE = "unreachable"


async def probe(
    client: UpstreamClient, upstream: Upstream, key: UpstreamKey, *, quota: bool
) -> Health:
    """One key's health, tried on that key alone through a single-key pool of its own."""
    single = Upstream(upstream.settings, KeyPool.alone(upstream.name, key))
    outbound = (
        Outbound("POST", "/embeddings", "", _JSON, _QUOTA_PROBE)
        if quota
        else Outbound("GET", "/models", "", _JSON)
    )
    try:
        reply = await client.send(single, outbound)
    except (UpstreamError, UpstreamTimeout):
        return Health.UNREACHABLE
    except (RateLimited, NoUpstreamKeys):
        return _retired_as(single)
    except ProxyError:
        return Health.UNREACHABLE
    status = reply.response.status
    reply.close()
    return Health.OK if status < 400 else Health.UNREACHABLE


def _retired_as(single: Upstream) -> Health:
    status = single.pool.snapshot()[0]
    if status.reason == "invalid":
        return Health.INVALID
    if status.reason == "no_quota":
        return Health.NO_QUOTA
    return Health.RATE_LIMITED


class Prober:
    """Re-admits retired keys that recover, checking every ``interval`` seconds."""

    def __init__(
        self,
        client: UpstreamClient,
        router: Router,
        *,
        interval: float,
        errors: TaskErrors | None = None,
    ) -> None:
        self._client = client
        self._router = router
        self._periodic = Periodic(
            "probing retired upstream keys", interval, self.run_once, errors=errors
        )

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def run_once(self) -> None:
        for upstream in self._router.upstreams:
            for key in upstream.pool.retired():
                quota = key.retired_reason == "no_quota"
                health = await probe(self._client, upstream, key, quota=quota)
                if health is Health.OK:
                    upstream.pool.readmit(key)
                    logger.info("upstream key %s recovered and is back in use", key.alias)


async def probe_all(settings: Settings) -> list[tuple[str, Health]]:
    """Every configured key's health, for ``chatgpt-proxy check``."""
    router = Router.from_settings(settings.upstreams, settings.pool)
    transport = build_transport(settings.server)
    try:
        retries = settings.retries.model_copy(update={"max_attempts": 1})
        client = UpstreamClient(transport, settings.timeouts, retries)
        results = []
        for upstream in router.upstreams:
            for key in upstream.pool.keys():
                health = await probe(client, upstream, key, quota=False)
                if health is Health.OK:
                    health = await probe(client, upstream, key, quota=True)
                results.append((key.alias, health))
        return results
    finally:
        await transport.close()
