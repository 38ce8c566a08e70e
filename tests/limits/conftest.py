"""Fixtures of the limiter tests: each limiter over each database backend, alone or in a proxy."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from limits_rig import Rig
from redis import Redis as SyncRedis

from harness import Proxy
from servers import BackgroundLoop
from services import redis_url


@pytest.fixture(params=["memory", "redis"])
def rig(
    request: pytest.FixtureRequest, background_loop: BackgroundLoop, database_url: str
) -> Iterator[Rig]:
    """Each limiter in turn (in memory, in Redis) over a fresh store on each database backend."""
    url = redis_url() if request.param == "redis" else None
    rig = Rig(background_loop, database_url, redis_url=url)
    yield rig
    rig.close()


@pytest.fixture
def memory_rig(background_loop: BackgroundLoop, sqlite_database_url: str) -> Iterator[Rig]:
    """The in-memory limiter with a clock the test moves (``rig.clock.now += 61``)."""
    rig = Rig(background_loop, sqlite_database_url)
    yield rig
    rig.close()


@pytest.fixture
def redis_rig(background_loop: BackgroundLoop, sqlite_database_url: str) -> Iterator[Rig]:
    rig = Rig(background_loop, sqlite_database_url, redis_url=redis_url())
    yield rig
    rig.close()


@pytest.fixture(params=["memory", "redis"])
def start_proxy(
    request: pytest.FixtureRequest, make_proxy: Callable[..., Proxy], database_url: str
) -> Iterator[Callable[..., Proxy]]:
    """Start a proxy on each database backend, limiting in memory and then in Redis.

    Keyword arguments override settings as with ``make_proxy``; ``limits`` is merged.
    """
    limits: dict[str, Any] = {}
    redis: str | None = None
    if request.param == "redis":
        redis = redis_url()
        limits["redis_prefix"] = f"cgp-test:{secrets.token_hex(4)}:"

    def start(**overrides: Any) -> Proxy:
        merged = {**limits, **overrides.pop("limits", {})}
        return make_proxy(database_url=database_url, redis_url=redis, limits=merged, **overrides)

    yield start
    if redis is not None:
        client = SyncRedis.from_url(redis)
        names = list(client.scan_iter(match=limits["redis_prefix"] + "*"))
        if names:
            client.delete(*names)
        client.close()
