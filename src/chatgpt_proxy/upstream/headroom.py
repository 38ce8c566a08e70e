"""How much room an upstream key has left under its own rate limits (the ``least_headroom``
strategy of the key pool).

Each answer's ``x-ratelimit-*`` headers say a key's limit, what remains of it and how long until
it is whole again, for requests and for tokens. Between answers the estimate refills *linearly*
from what was seen to the limit over that reset time. That is no guess about where a window
starts: OpenAI's limits replenish continuously (a bucket that refills at ``limit`` per minute),
so the reset time it reports is exactly how long the bucket takes to fill from ``remaining``,
and a straight line between the two is the bucket's own refill.

A key's headroom is the smaller of two fractions, requests and tokens, each what would be left
of its limit after this request, with every request already sent to the key and not yet
answered counted against it (one request and its estimated tokens each): the upstream counts a
request when it arrives, but no header shows it until an answer comes, and without that charge
a burst would all go to the key that looked best a moment ago. The smaller fraction is the one
that refuses first, so it is the one that matters.

A limit never seen counts as a full one as large as the largest seen on any key of the pool (a
fraction of 1 when none is known): optimistic, yet charged for what is in flight like the rest.
Everything here is plain values and pure functions of an injected ``now``; the pool keeps one
``Headroom`` per key, a few numbers, so memory is bounded by the configured keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chatgpt_proxy.upstream.hints import RateLimit, rate_limit

# With no reset time said, a limit is taken to refill within a minute (OpenAI's limits are per
# minute): a stale observation then stops counting after a minute instead of never.
DEFAULT_RESET = 60.0

Limits = tuple[float | None, float | None]  # sizes of a request and a token limit


@dataclass(frozen=True, slots=True)
class Seen:
    """One limit as an answer told it at clock time ``at``: ``remaining`` of ``limit``, whole
    again ``reset`` seconds later.

    >>> Seen(limit=100, remaining=40, reset=6.0, at=0.0).left(now=3.0)
    70.0
    """

    limit: float
    remaining: float
    reset: float
    at: float

    @classmethod
    def of(cls, told: RateLimit | None, now: float) -> Seen | None:
        if told is None:
            return None
        reset = DEFAULT_RESET if told.reset is None else told.reset
        return cls(told.limit, told.remaining, reset, now)

    def left(self, now: float) -> float:
        """What is left at ``now``: refilled linearly toward the limit as the reset nears."""
        elapsed = now - self.at
        if self.reset <= 0 or elapsed >= self.reset:
            return self.limit
        return self.remaining + (self.limit - self.remaining) * max(elapsed, 0.0) / self.reset


@dataclass(slots=True)
class Headroom:
    """What one key's answers said of its limits, and what has been sent to it unanswered."""

    requests: Seen | None = None
    tokens: Seen | None = None
    pending: int = 0  # requests sent, their answer not yet begun
    pending_tokens: int = 0  # their estimated tokens

    def send(self, tokens: int) -> None:
        self.pending += 1
        self.pending_tokens += tokens

    def answered(self, headers: Mapping[str, str] | None, tokens: int, now: float) -> None:
        """A request sent with ``send(tokens)`` has its answer (``headers``) or never will
        (``None``); the limits its headers tell replace those seen before."""
        self.pending = max(self.pending - 1, 0)
        self.pending_tokens = max(self.pending_tokens - tokens, 0)
        if headers is not None:
            self.requests = Seen.of(rate_limit(headers, "requests"), now) or self.requests
            self.tokens = Seen.of(rate_limit(headers, "tokens"), now) or self.tokens

    def forget_pending(self) -> None:
        self.pending = 0
        self.pending_tokens = 0


def fraction_left(seen: Seen | None, now: float, cost: float, assumed: float | None) -> float:
    """The share of a limit left after ``cost`` more, at most 1 and negative when overdrawn;
    an unseen limit is a full one of size ``assumed`` (1 with no size to assume)."""
    if seen is None:
        return 1.0 if assumed is None else min(1.0, (assumed - cost) / assumed)
    return min(1.0, (seen.left(now) - cost) / seen.limit)


def headroom(room: Headroom, now: float, tokens: int, assumed: Limits = (None, None)) -> float:
    """The room ``room``'s key would have left after one more request of ``tokens`` tokens."""
    requests = fraction_left(room.requests, now, room.pending + 1, assumed[0])
    return min(requests, fraction_left(room.tokens, now, room.pending_tokens + tokens, assumed[1]))


def largest_limits(rooms: Sequence[Headroom | None]) -> Limits:
    """The largest request and token limits seen on any key: what an unseen key is assumed."""
    requests = [room.requests.limit for room in rooms if room is not None and room.requests]
    tokens = [room.tokens.limit for room in rooms if room is not None and room.tokens]
    return (max(requests, default=None), max(tokens, default=None))


def roomiest(rooms: Sequence[Headroom | None], now: float, tokens: int, start: int) -> int | None:
    """The index of the key with the most headroom among ``rooms`` (``None``: not a candidate).

    Ties go to fewer requests in flight, then to the first from ``start``: a caller that moves
    ``start`` past each pick spreads equal keys round-robin.

    >>> roomiest([Headroom(), None, Headroom(pending=1)], now=0.0, tokens=0, start=0)
    0
    """
    assumed = largest_limits(rooms)
    best: int | None = None
    best_rank = (0.0, 0)
    n = len(rooms)
    for offset in range(n):
        i = (start + offset) % n
        room = rooms[i]
        if room is None:
            continue
        rank = (headroom(room, now, tokens, assumed), -room.pending)
        if best is None or rank > best_rank:
            best, best_rank = i, rank
    return best
