"""Verdicts of the moderation endpoint, cached per item so a chat's history is judged only once.

A chat resends its whole history each turn; keyed by a hash of each item (and the moderation
model), only the new messages go to the endpoint. Two implementations of ``VerdictCache``:

    cache = MemoryVerdictCache(size=100_000, ttl=86400.0)    # one process: a bounded LRU
    cache = RedisVerdictCache(redis, memory=cache, prefix="cgp:mod:")  # shared (redis_url)

    [hit] = await cache.get_many([cache_key("hello", "omni-moderation-latest")])

The Redis cache keeps the memory cache in front of it and falls back to it alone, after logging
once, while Redis is failing: a broken cache costs moderation calls, never requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import orjson

from chatgpt_proxy.errors import ConfigError
from chatgpt_proxy.memo import Memo
from chatgpt_proxy.moderation.inputs import Item

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("chatgpt_proxy.moderation")

_OP_TIMEOUT = 1.0  # seconds a Redis call may take before the memory cache answers alone
_RETRY_INTERVAL = 30.0  # seconds Redis is left alone after it failed


def redis_prefix(configured: str) -> str:
    """The prefix of verdict keys under the configured one (``limits.redis_prefix``)."""
    return configured + "mod:"


_NOTHING_FLAGGED: frozenset[str] = frozenset()  # most verdicts: one shared object, not one each
_SCORE = struct.Struct("<d")


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The endpoint's result for one item: the categories it flagged, and every score.

    A cache holds 100,000 of these, so they are kept small: the category names as one
    interned string (every verdict of a model names the same categories: one copy for all),
    the scores as packed doubles in the same order, read only when a threshold needs them
    (deciding by ``flagged`` alone costs nothing). About 200 bytes with its 13 scores; as a
    dict of floats, 1.5 KB.
    """

    flagged: frozenset[str]
    names: str  # the scored categories, "\n"-joined
    packed: bytes  # their scores, little-endian doubles

    @classmethod
    def of(cls, flagged: Iterable[str], scores: Mapping[str, float]) -> ItemResult:
        names = "\n".join(str(name) for name in scores)
        if names.count("\n") != max(len(scores) - 1, 0):
            raise ValueError("a category name with a line break")
        packed = b"".join(_SCORE.pack(float(score)) for score in scores.values())
        return cls(frozenset(flagged) or _NOTHING_FLAGGED, sys.intern(names), packed)

    @property
    def scores(self) -> dict[str, float]:
        if not self.names:
            return {}
        values = (score for (score,) in _SCORE.iter_unpack(self.packed))
        return dict(zip(self.names.split("\n"), values, strict=True))

    def size(self) -> int:
        """Bytes this result holds of its own (the shared names and empty set not counted)."""
        own = sys.getsizeof(self) + sys.getsizeof(self.packed)
        return own + (sys.getsizeof(self.flagged) if self.flagged else 0)

    def encode(self) -> bytes:
        return orjson.dumps({"f": sorted(self.flagged), "s": self.scores})

    @classmethod
    def decode(cls, data: bytes) -> ItemResult | None:
        """The result, or None for bytes that are not one (another version wrote them)."""
        try:
            raw = orjson.loads(data)
            return cls.of(raw["f"], raw["s"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


def cache_key(item: Item, model: str) -> str:
    """sha256 of the moderation model and the item's canonical JSON."""
    digest = hashlib.sha256(model.encode())
    digest.update(b"\0")
    digest.update(orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


class VerdictCache(Protocol):
    async def get_many(self, keys: Sequence[str]) -> list[ItemResult | None]: ...

    async def set_many(self, results: Mapping[str, ItemResult]) -> None: ...

    async def close(self) -> None: ...


class MemoryVerdictCache:
    """A bounded LRU with a time to live: at most ``size`` verdicts and ``max_bytes`` bytes
    (whichever is reached first; a verdict's key is a digest, never the input, so every
    entry weighs about the same); ``size=0`` caches nothing.

    >>> cache = MemoryVerdictCache(size=2, ttl=60.0, clock=lambda: 0.0)
    """

    def __init__(
        self,
        size: int,
        ttl: float,
        *,
        max_bytes: int = 16 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: Memo[str, ItemResult] = Memo(
            size, ttl=ttl, clock=clock, max_bytes=max_bytes, weigh=_entry_bytes
        )

    @property
    def bytes(self) -> int:
        """What the verdicts held weigh, by ``_entry_bytes``."""
        return self._entries.weight

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> ItemResult | None:
        return self._entries.get(key)

    def set(self, key: str, result: ItemResult) -> None:
        self._entries.remember(key, result)

    async def get_many(self, keys: Sequence[str]) -> list[ItemResult | None]:
        return [self.get(key) for key in keys]

    async def set_many(self, results: Mapping[str, ItemResult]) -> None:
        for key, result in results.items():
            self.set(key, result)

    async def close(self) -> None:
        self._entries.clear()


class RedisVerdictCache:
    """Verdicts shared by every replica through Redis (MGET, SET with EX), memory in front.

    >>> memory = MemoryVerdictCache(100_000, 86400.0)
    >>> cache = RedisVerdictCache(redis, memory=memory, prefix=redis_prefix("cgp:"))
    """

    def __init__(
        self,
        redis: Redis,
        *,
        memory: MemoryVerdictCache,
        prefix: str,
        owns_client: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.exceptions import RedisError

        self._redis = redis
        self._memory = memory
        self._prefix = prefix
        self._owns_client = owns_client
        self._clock = clock
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._down_until: float | None = None  # while Redis fails, only memory is used

    async def get_many(self, keys: Sequence[str]) -> list[ItemResult | None]:
        found = await self._memory.get_many(keys)
        missing = [key for key, result in zip(keys, found, strict=True) if result is None]
        if not missing or not self._available():
            return found
        try:
            async with asyncio.timeout(_OP_TIMEOUT):
                values = await self._redis.mget([self._prefix + key for key in missing])
        except self._errors as exc:
            self._failed(exc)
            return found
        self._recovered()
        remote: dict[str, ItemResult] = {}
        for key, value in zip(missing, values, strict=True):
            if isinstance(value, bytes | str) and (
                result := ItemResult.decode(value.encode() if isinstance(value, str) else value)
            ):
                remote[key] = result
        await self._memory.set_many(remote)
        return [result or remote.get(key) for key, result in zip(keys, found, strict=True)]

    async def set_many(self, results: Mapping[str, ItemResult]) -> None:
        await self._memory.set_many(results)
        if not results or not self._available():
            return
        ttl = max(1, round(self._memory.ttl))
        try:
            async with asyncio.timeout(_OP_TIMEOUT):
                pipe = self._redis.pipeline(transaction=False)
                for key, result in results.items():
                    pipe.set(self._prefix + key, result.encode(), ex=ttl)
                await pipe.execute()
        except self._errors as exc:
            self._failed(exc)
        else:
            self._recovered()

    async def close(self) -> None:
        await self._memory.close()
        if self._owns_client:
            await self._redis.aclose()

    def _available(self) -> bool:
        return self._down_until is None or self._clock() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        if self._down_until is None:
            logger.warning(
                "moderation cache: Redis failed (%s); using the memory cache alone for now",
                type(exc).__name__,
            )
        self._down_until = self._clock() + _RETRY_INTERVAL

    def _recovered(self) -> None:
        if self._down_until is not None:
            logger.info("moderation cache: Redis is back")
            self._down_until = None


# What one more entry costs beyond its key and result: its slots in the Memo's three dicts
# (entries, expiry, weight: ~64 bytes each, with the room a dict keeps free), its expiry (a
# float) and its weight (an int). Measured: 100,000 verdicts of 13 scores raise the RSS by
# 50 MB, ~520 bytes each, which this makes 522 (113 key + 193 result + 216).
_ENTRY_OVERHEAD = 3 * 64 + 24


def _entry_bytes(key: str, result: ItemResult) -> int:
    return _ENTRY_OVERHEAD + sys.getsizeof(key) + result.size()


def connect_redis(url: str) -> Redis:
    """A Redis client for ``redis_url``, or a ConfigError saying what to install."""
    try:
        from redis.asyncio import Redis
    except ImportError as exc:
        raise ConfigError(
            "redis_url is set but the redis package is missing: pip install 'chatgpt-proxy[redis]'"
        ) from exc
    client: Redis = Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    return client
