"""Remembering computed values on the hot path, within a bound.

Many of the values the proxy computes per request come back again and again (a model's
route, a client key's Redis names, a scrubbed path); what they are computed from often comes
from clients, so what is remembered must be bounded too. A ``Memo`` is a plain dict, so a
lookup costs what a dict lookup does, emptied whole when it is full: cheaper than an LRU's
bookkeeping, and the values in use are computed again at once.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(dict[K, V]):
    """A dict of at most ``limit`` entries; ``remember`` empties it when it is full.

    >>> routes: Memo[str, Upstream] = Memo(4096)
    >>> routes.get("gpt-4o") or routes.remember("gpt-4o", find_route("gpt-4o"))
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: K, value: V) -> V:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
