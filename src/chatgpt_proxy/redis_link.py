"""The process's one Redis client, whether Redis answers, and the one boundary for its errors.

With ``redis_url`` set, limits, revocations and upstream key states are shared through Redis
(DESIGN §2). Redis may still go away: every call goes through ``redis_errors()``, which turns
whatever the client raises into ``RedisUnavailable``; the first one marks the link down and
logs once at WARNING, a background ping every ``redis_recheck_seconds`` brings it back up and
logs once at INFO. While it is down, callers use their local fallback::

    link = RedisLink.open(settings)            # ConfigError if the redis package is missing
    if link.up:
        try:
            with redis_errors():
                await link.client.ping()
        except RedisUnavailable as exc:
            link.failed(exc)                   # local limits until Redis answers again
    await link.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from chatgpt_proxy.errors import ConfigError
from chatgpt_proxy.periodic import FailureStreak, TaskErrors
from chatgpt_proxy.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("chatgpt_proxy.redis")

_MISSING_REDIS = (
    "redis_url is set but the redis package is missing: pip install 'chatgpt-proxy[redis]'"
)
# Enough for a busy process; past it a caller waits (up to the timeout) rather than opening more.
_MAX_CONNECTIONS = 256


class RedisUnavailable(Exception):
    """Redis could not be reached or failed; the message names the operation, never a value."""


@functools.cache
def client_errors() -> tuple[type[BaseException], ...]:
    """What the Redis client raises when Redis is unreachable or failing."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


def raise_lost_cancellation() -> None:
    """Raise the cancellation the Redis client lost, if it lost one.

    redis-py writes each command under ``asyncio.wait_for``, which before Python 3.12 drops a
    cancellation arriving as the write completes (CPython gh-86296): the task stays cancelled
    but runs on. A loop of Redis calls checks this each turn, or it could never be stopped.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@contextlib.contextmanager
def redis_errors(operation: str = "call") -> Iterator[None]:
    """Translate the Redis client's failures into ``RedisUnavailable`` (chained with ``from``)."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, client_errors()):
            raise RedisUnavailable(
                f"Redis is unavailable ({operation}: {type(exc).__name__})"
            ) from exc
        raise


def connect(settings: Settings) -> Redis:
    """A client for ``settings.redis_url``; nothing connects until the first command."""
    assert settings.redis_url is not None
    try:
        asyncio_redis = importlib.import_module("redis.asyncio")
        backoff = importlib.import_module("redis.backoff")
        retry = importlib.import_module("redis.asyncio.retry")
    except ImportError as exc:
        raise ConfigError(_MISSING_REDIS) from exc
    timeout = settings.limits.redis_timeout
    try:
        pool = asyncio_redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=_MAX_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One quick retry on a fresh connection survives a Redis restart; the client's default
            # (ten, with backoff) would hold every request for seconds while Redis is gone.
            retry=retry.Retry(backoff.NoBackoff(), 1),
        )
    except ValueError as exc:
        # The URL may hold a password: name the problem, not the value.
        raise ConfigError("redis_url is not a valid redis:// URL") from exc
    client: Redis = asyncio_redis.Redis.from_pool(pool)  # closing the client closes the pool
    return client


class RedisLink:
    """A Redis client, its key prefix, and whether it is answering."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "",
        recheck_seconds: float = 1.0,
        timeout: float = 1.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout  # for one command, or one pipeline of them
        self.up = True
        self._recheck_seconds = recheck_seconds
        self._pinger: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, settings: Settings) -> RedisLink:
        limits = settings.limits
        return cls(
            connect(settings),
            prefix=limits.redis_prefix,
            recheck_seconds=limits.redis_recheck_seconds,
            timeout=limits.redis_timeout,
        )

    def failed(self, exc: BaseException) -> None:
        """Redis failed a call: fall back to local state until a ping succeeds again."""
        if not self.up:
            return
        self.up = False
        logger.warning("%s; limits are per process until it answers again", exc)
        if self._pinger is None or self._pinger.done():
            self._pinger = asyncio.get_running_loop().create_task(
                self._recheck(), name="redis-ping"
            )

    async def ping(self) -> None:
        with redis_errors("ping"):
            await self.client.ping()

    async def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            # wait() neither raises the task's CancelledError nor swallows our own.
            await asyncio.wait({self._pinger})
            self._pinger = None
        with contextlib.suppress(RedisUnavailable), redis_errors("close"):
            await self.client.aclose()

    async def _recheck(self) -> None:
        # A bug in a ping must not leave the limits per process for good: keep checking.
        streak = FailureStreak("checking whether Redis answers again", TaskErrors())
        while not self.up:
            raise_lost_cancellation()
            await asyncio.sleep(self._recheck_seconds)
            try:
                await self.ping()
            except RedisUnavailable:
                continue
            except Exception as exc:
                streak.failed(exc)
                continue
            self.up = True
            logger.info("Redis answers again; limits are shared again")
