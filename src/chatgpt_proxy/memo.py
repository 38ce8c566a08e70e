"""The one bounded cache of the proxy: least recently used first out, optionally expiring.

Many of the values the proxy computes per request come back again and again (a model's
route, a client key's Redis names, a scrubbed path); what they are computed from often comes
from clients (model names, paths, addresses), so what is remembered must be bounded. Every
such cache is a ``Memo``: at most ``limit`` entries, and when it is full the one used least
recently makes room; with ``ttl``, an entry is also forgotten ``ttl`` seconds after it was
remembered (moderation verdicts). Where what is remembered varies in size (a model name is
whatever string a client sent), ``max_bytes`` bounds its sum too, as ``weigh`` counts it: the
oldest make room until the new one fits, and one larger than the whole budget is not kept.

It is a plain dict kept in use order (a hit moves its key to the end), so a hit costs two dict
operations and a method call, about 60 ns more than a bare ``dict.get`` (CPython 3.11): less
than an ``OrderedDict`` with ``move_to_end`` or ``cachetools.LRUCache.get``, and with a ttl a
sixth of ``cachetools.TTLCache.get``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Final, Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class Absent(enum.Enum):
    """Not remembered, where None may be a value: ``memo.get(key, ABSENT) is ABSENT``."""

    ABSENT = enum.auto()


ABSENT: Final = Absent.ABSENT


class Memo(Generic[K, V]):
    """At most ``limit`` values by key, the least recently used dropped first when full;
    ``limit=0`` remembers nothing. With ``ttl`` a value is forgotten ``ttl`` seconds (on
    ``clock``) after it was remembered.

    >>> routes: Memo[str, Upstream] = Memo(4096)
    >>> routes.get("gpt-4o") or routes.remember("gpt-4o", find_route("gpt-4o"))
    >>> verdicts: Memo[str, ItemResult] = Memo(100_000, ttl=86400.0)
    >>> scrubbed: Memo[str, str] = Memo(4096, max_bytes=1 << 20, weigh=key_chars)
    """

    __slots__ = (
        "_budget", "_clock", "_entries", "_expiry", "_ttl", "_weigh", "_weights", "limit",
        "max_bytes", "weight",
    )  # fmt: skip

    def __init__(
        self,
        limit: int,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int | None = None,
        weigh: Callable[[K, V], int] | None = None,
    ) -> None:
        if (max_bytes is None) != (weigh is None):
            raise ValueError("a Memo's max_bytes and weigh go together")
        self.limit = limit
        self.max_bytes = max_bytes
        self.weight = 0  # the sum of what ``weigh`` says of every entry held
        self._budget = max_bytes or 0
        self._ttl = ttl
        self._clock = clock
        self._weigh = weigh
        self._entries: dict[K, V] = {}  # least recently used first
        self._expiry: dict[K, float] = {}  # with a ttl: when each entry expires
        self._weights: dict[K, int] = {}  # with max_bytes: what each entry weighs

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        return len(self._entries)

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: object = None) -> object:
        """The value remembered for ``key`` (now the most recently used), else ``default``."""
        entries = self._entries
        value = entries.pop(key, ABSENT)
        if value is ABSENT:
            return default
        if self._ttl is not None and self._expiry[key] <= self._clock():
            entries[key] = value  # forget() drops it with its expiry and weight
            self.forget(key)
            return default
        entries[key] = value
        return value

    def remember(self, key: K, value: V) -> V:
        """Remember ``value`` for ``key`` as the most recently used; returns ``value``."""
        entries = self._entries
        if key in entries:
            self.forget(key)
        weight = 0
        if self._weigh is not None:
            weight, budget = self._weigh(key, value), self._budget
            if weight > budget:
                return value  # larger than the whole budget: never worth the room
            while entries and self.weight + weight > budget:
                self.forget(next(iter(entries)))
        if len(entries) >= self.limit:
            if not entries:
                return value  # a limit of 0
            self.forget(next(iter(entries)))
        entries[key] = value
        if self._ttl is not None:
            self._expiry[key] = self._clock() + self._ttl
        if self._weigh is not None:
            self._weights[key] = weight
            self.weight += weight
        return value

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)
        self._expiry.pop(key, None)
        if self._weights:
            self.weight -= self._weights.pop(key, 0)

    def clear(self) -> None:
        self._entries.clear()
        self._expiry.clear()
        self._weights.clear()
        self.weight = 0


def key_chars(key: object, value: object) -> int:
    """A ``weigh`` for caches keyed by client text: the characters of the key (a str, or the
    strs in a tuple); what such an entry costs grows with them."""
    if isinstance(key, str):
        return len(key)
    if isinstance(key, tuple):
        return sum(len(part) for part in key if isinstance(part, str))
    return 0
