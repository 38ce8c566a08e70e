"""The key-choosing strategies of a pool: which usable key takes the next attempt.

``round_robin`` takes the usable keys in turn, ``random`` draws one, ``least_busy`` takes the key
with the fewest requests in flight, and ``least_headroom`` the key with the most room left under
the upstream's own rate limits (``upstream.headroom``), so that 429s are avoided rather than
survived. Ties go round-robin in every strategy but ``random``.

A strategy only chooses. The pool owns the keys and their states: it tells the strategy which
keys may be chosen (``usable``, which also ends expired cooldowns) and which this request tried::

    chooser = chooser_for("least_busy", usable, random.Random())
    key = chooser.pick(keys, now, exclude={"openai#1"}, tokens=0)   # None: no key may be chosen
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, get_args

from chatgpt_proxy.upstream.headroom import roomiest

if TYPE_CHECKING:
    # For annotations only: the pool imports this module.
    from chatgpt_proxy.upstream.pool import UpstreamKey

Strategy = Literal["random", "round_robin", "least_busy", "least_headroom"]
# Whether a key may take an attempt at clock time ``now``; the pool's own rule.
Usable = Callable[["UpstreamKey", float], bool]


class Chooser(Protocol):
    def pick(
        self, keys: Sequence[UpstreamKey], now: float, exclude: Container[str], tokens: int
    ) -> UpstreamKey | None:
        """A usable key of ``keys`` whose alias is not in ``exclude``, or None if there is none.

        ``tokens`` is the request's estimated size, for the strategies that weigh it."""
        ...


def chooser_for(strategy: Strategy, usable: Usable, rng: random.Random) -> Chooser:
    """The chooser of ``strategy`` (``ValueError`` for one that does not exist)."""
    if strategy not in get_args(Strategy):
        raise ValueError(f"unknown key strategy {strategy!r}")
    if strategy == "random":
        return RandomDraw(usable, rng)
    if strategy == "least_headroom":
        return MostRoom(usable)
    return InTurn(usable, least_busy=strategy == "least_busy")


class InTurn:
    """``round_robin``, or with ``least_busy`` the key with the fewest requests in flight."""

    def __init__(self, usable: Usable, *, least_busy: bool) -> None:
        self._usable = usable
        self._least_busy = least_busy
        self._cursor = 0

    def pick(
        self, keys: Sequence[UpstreamKey], now: float, exclude: Container[str], tokens: int
    ) -> UpstreamKey | None:
        n = len(keys)
        best: UpstreamKey | None = None
        best_index = 0
        # Scanning from a cursor that moves past each pick is what makes ties go round-robin.
        for offset in range(n):
            i = (self._cursor + offset) % n
            key = keys[i]
            if key.alias in exclude or not self._usable(key, now):
                continue
            if best is None or key.inflight < best.inflight:
                best, best_index = key, i
                if not self._least_busy or key.inflight == 0:
                    break
        if best is not None:
            self._cursor = (best_index + 1) % n
        return best


class MostRoom:
    """``least_headroom``: the key with the most room left under its rate limits."""

    def __init__(self, usable: Usable) -> None:
        self._usable = usable
        self._cursor = 0

    def pick(
        self, keys: Sequence[UpstreamKey], now: float, exclude: Container[str], tokens: int
    ) -> UpstreamKey | None:
        rooms = [
            key.room if key.alias not in exclude and self._usable(key, now) else None
            for key in keys
        ]
        index = roomiest(rooms, now, tokens, self._cursor)
        if index is None:
            return None
        self._cursor = (index + 1) % len(keys)
        return keys[index]


class RandomDraw:
    """``random``: a usable key drawn uniformly."""

    def __init__(self, usable: Usable, rng: random.Random) -> None:
        self._usable = usable
        self._rng = rng

    def pick(
        self, keys: Sequence[UpstreamKey], now: float, exclude: Container[str], tokens: int
    ) -> UpstreamKey | None:
        if not keys:
            return None
        # One draw and no allocation when the key drawn is usable, the common case; the
        # fallback draws among the usable rest, which keeps the choice uniform overall.
        key = keys[self._rng.randrange(len(keys))]
        if key.alias not in exclude and self._usable(key, now):
            return key
        usable = [k for k in keys if k.alias not in exclude and self._usable(k, now)]
        return self._rng.choice(usable) if usable else None
