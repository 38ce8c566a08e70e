"""Fixtures of the replica tests: three proxies on one database and one Redis."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from replica_harness import RedisServer, Replicas

from harness import Proxy
from services import redis_url


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A prefix of Redis keys for this test alone; its keys are deleted afterwards."""
    url = redis_url()  # or skip, before anything starts
    prefix = f"cgp-test:{secrets.token_hex(4)}:"
    yield prefix
    client = SyncRedis.from_url(url)
    names = list(client.scan_iter(match=prefix + "*"))
    if names:
        client.delete(*names)
    client.close()


@pytest.fixture
def replicas(make_proxy: Callable[..., Proxy], database_url: str, redis_prefix: str) -> Replicas:
    """Three replicas sharing one database (each backend in turn) and the test Redis."""
    return Replicas.start(
        make_proxy,
        database_url=database_url,
        redis_url=redis_url(),
        limits={"redis_prefix": redis_prefix},
        # Changes to keys must reach the others through Redis, not the store's poll.
        auth={"cache_refresh_seconds": 30},
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server, started; the test may kill it and start it again."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()
