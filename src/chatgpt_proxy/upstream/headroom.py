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
from typing import NamedTuple

from chatgpt_proxy.upstream.hints import RateLimit, rate_limit

# With no reset time said, a limit is taken to refill within a minute (OpenAI's limits are per
# minute): a stale observation then stops counting after a minute instead of never.
DEFAULT_RESET = 60.0

Limits = tuple[float | None, float | None]  # sizes of a request and a token limit


class Seen(NamedTuple):  # a tuple: made for every answer, and cheaper than a dataclass
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
        return fraction_left(self, now, 0.0, None) * self.limit


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
        if assumed is None:
            return 1.0
        share = (assumed - cost) / assumed
        return share if share < 1.0 else 1.0
    # The linear refill, written out (no call: this runs for every key on every request).
    limit, remaining, reset, at = seen
    elapsed = now - at
    if elapsed >= reset:
        left = limit
    elif elapsed <= 0:
        left = remaining
    else:
        left = remaining + (limit - remaining) * elapsed / reset
    share = (left - cost) / limit
    return share if share < 1.0 else 1.0


def headroom(room: Headroom, now: float, tokens: int, assumed: Limits = (None, None)) -> float:
    """The room ``room``'s key would have left after one more request of ``tokens`` tokens."""
    requests = fraction_left(room.requests, now, room.pending + 1, assumed[0])
    tokens_left = fraction_left(room.tokens, now, room.pending_tokens + tokens, assumed[1])
    return requests if requests < tokens_left else tokens_left


def largest_limits(rooms: Sequence[Headroom | None]) -> Limits:
    """The largest request and token limits seen on any key: what an unseen key is assumed."""
    requests: float | None = None
    tokens: float | None = None
    for room in rooms:
        if room is None:
            continue
        if room.requests is not None and (requests is None or room.requests.limit > requests):
            requests = room.requests.limit
        if room.tokens is not None and (tokens is None or room.tokens.limit > tokens):
            tokens = room.tokens.limit
    return (requests, tokens)


def roomiest(rooms: Sequence[Headroom | None], now: float, tokens: int, start: int) -> int | None:
    """The index of the key with the most headroom among ``rooms`` (``None``: not a candidate).

    Ties go to fewer requests in flight, then to the first from ``start``: a caller that moves
    ``start`` past each pick spreads equal keys round-robin.

    >>> roomiest([Headroom(), None, Headroom(pending=1)], now=0.0, tokens=0, start=0)
    0
    """
    assumed = largest_limits(rooms)
    best: int | None = None
    best_left = 0.0
    best_pending = 0
    n = len(rooms)
    for offset in range(n):
        i = (start + offset) % n
        room = rooms[i]
        if room is None:
            continue
        left = headroom(room, now, tokens, assumed)
        if best is None or left > best_left or (left == best_left and room.pending < best_pending):
            best, best_left, best_pending = i, left, room.pending
    return best
