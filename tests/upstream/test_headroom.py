"""A key's headroom under its upstream rate limits: refill, in-flight charge, the choice rules."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.upstream.headroom import (
    DEFAULT_RESET,
    Headroom,
    Seen,
    fraction_left,
    headroom,
    largest_limits,
    roomiest,
)
from chatgpt_proxy.upstream.hints import RateLimit


def _limits(
    requests: tuple[int, int, str] | None = None, tokens: tuple[int, int, str] | None = None
) -> CIMultiDictProxy[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for kind, told in (("requests", requests), ("tokens", tokens)):
        if told is not None:
            limit, remaining, reset = told
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            headers[f"x-ratelimit-reset-{kind}"] = reset
    return CIMultiDictProxy(headers)


def _seen(limit: float, remaining: float, reset: float = 10.0, at: float = 0.0) -> Headroom:
    return Headroom(requests=Seen(limit, remaining, reset, at))


# ---------------------------------------------------------------- refill


@pytest.mark.parametrize(
    ("now", "left"),
    [(0.0, 40.0), (3.0, 70.0), (6.0, 100.0), (60.0, 100.0), (-1.0, 40.0)],
)
def test_a_limit_refills_linearly_to_whole_at_its_reset(now: float, left: float) -> None:
    assert Seen(limit=100, remaining=40, reset=6.0, at=0.0).left(now) == pytest.approx(left)


def test_a_limit_told_without_reset_refills_within_the_default() -> None:
    seen = Seen.of(RateLimit(limit=10, remaining=0, reset=None), now=5.0)
    assert seen is not None and seen.reset == DEFAULT_RESET
    assert seen.left(5.0 + DEFAULT_RESET) == 10
    assert Seen.of(None, now=0.0) is None
    assert Seen(limit=10, remaining=0, reset=0.0, at=0.0).left(0.0) == 10


# ---------------------------------------------------------------- fractions


def test_fraction_left_counts_the_cost_and_may_go_below_zero() -> None:
    seen = Seen(limit=10, remaining=5, reset=10.0, at=0.0)
    assert fraction_left(seen, 0.0, 1, None) == pytest.approx(0.4)
    assert fraction_left(seen, 0.0, 7, None) == pytest.approx(-0.2)
    assert fraction_left(seen, 10.0, 0, None) == 1.0


def test_an_unseen_limit_is_full_at_the_size_assumed() -> None:
    assert fraction_left(None, 0.0, 3, None) == 1.0
    assert fraction_left(None, 0.0, 3, 10.0) == pytest.approx(0.7)


def test_headroom_is_the_smaller_of_requests_and_tokens() -> None:
    room = Headroom(
        requests=Seen(limit=100, remaining=90, reset=60.0, at=0.0),
        tokens=Seen(limit=1000, remaining=200, reset=60.0, at=0.0),
    )
    assert headroom(room, 0.0, tokens=100) == pytest.approx(0.1)  # (200 - 100) / 1000
    assert headroom(room, 0.0, tokens=0) == pytest.approx(0.2)
    room.tokens = Seen(limit=1000, remaining=1000, reset=60.0, at=0.0)
    assert headroom(room, 0.0, tokens=0) == pytest.approx(0.89)  # (90 - 1) / 100


def test_unanswered_requests_count_against_the_key() -> None:
    room = Headroom(
        requests=Seen(limit=10, remaining=10, reset=60.0, at=0.0),
        tokens=Seen(limit=1000, remaining=1000, reset=60.0, at=0.0),
    )
    room.send(tokens=300)
    room.send(tokens=300)
    assert headroom(room, 0.0, tokens=300) == pytest.approx(0.1)  # 1000 - 900 tokens
    room.answered(None, tokens=300, now=0.0)  # never answered: no longer counted
    assert (room.pending, room.pending_tokens) == (1, 300)
    assert headroom(room, 0.0, tokens=300) == pytest.approx(0.4)
    room.answered(None, tokens=300, now=0.0)
    room.answered(None, tokens=300, now=0.0)  # one too many never goes negative
    assert (room.pending, room.pending_tokens) == (0, 0)


def test_an_answer_replaces_what_was_seen_with_what_it_tells() -> None:
    room = Headroom()
    room.send(tokens=5)
    room.answered(_limits(requests=(60, 30, "30s"), tokens=(900, 450, "1m0s")), 5, now=100.0)
    assert room.requests == Seen(60, 30, 30.0, 100.0)
    assert room.tokens == Seen(900, 450, 60.0, 100.0)
    room.answered(_limits(requests=(60, 59, "1s")), 0, now=101.0)
    assert room.requests == Seen(60, 59, 1.0, 101.0)
    assert room.tokens == Seen(900, 450, 60.0, 100.0)  # not told again: kept
    room.answered(CIMultiDictProxy(CIMultiDict()), 0, now=102.0)
    assert room.requests == Seen(60, 59, 1.0, 101.0)


def test_largest_limits_are_what_an_unseen_key_is_assumed() -> None:
    rooms = [_seen(10, 0), None, Headroom(), _seen(30, 30)]
    assert largest_limits(rooms) == (30, None)
    assert largest_limits([Headroom(), None]) == (None, None)


# ---------------------------------------------------------------- the choice


def test_the_key_with_the_most_room_is_chosen() -> None:
    rooms = [_seen(100, 20), _seen(10, 9), _seen(1000, 300)]
    assert roomiest(rooms, 0.0, 0, start=0) == 1  # 0.8 left, against 0.19 and 0.299


def test_a_key_that_is_no_candidate_is_never_chosen() -> None:
    assert roomiest([_seen(100, 20), None, _seen(100, 10)], 0.0, 0, start=1) == 0
    assert roomiest([None, None], 0.0, 0, start=0) is None
    assert roomiest([], 0.0, 0, start=0) is None


def test_time_refills_a_key_past_another() -> None:
    rooms = [_seen(100, 0, reset=10.0, at=0.0), _seen(100, 50, reset=100.0, at=0.0)]
    assert roomiest(rooms, 1.0, 0, start=0) == 1  # 10 left against 50.5
    assert roomiest(rooms, 9.0, 0, start=0) == 0  # 90 against 54.5


def test_ties_go_to_fewer_in_flight_then_in_turn_from_start() -> None:
    rooms = [Headroom(), Headroom(), Headroom()]
    assert [roomiest(rooms, 0.0, 0, start) for start in range(3)] == [0, 1, 2]
    rooms[0].send(0)
    assert roomiest(rooms, 0.0, 0, start=0) == 1


def test_a_burst_spreads_over_keys_as_it_is_charged() -> None:
    rooms = [_seen(30, 30), _seen(20, 20), _seen(10, 10)]
    chosen = []
    start = 0
    for _ in range(12):
        index = roomiest(rooms, 0.0, 0, start)
        assert index is not None
        rooms[index].send(0)
        chosen.append(index)
        start = index + 1
    assert chosen.count(0) == 6 and chosen.count(1) == 4 and chosen.count(2) == 2


def test_an_unseen_key_is_charged_like_the_largest_seen() -> None:
    unseen = Headroom()
    for _ in range(3):
        unseen.send(0)
    rooms = [_seen(10, 10), unseen]
    assert roomiest(rooms, 0.0, 0, start=1) == 0  # 0.9 against (10 - 4) / 10
    assert roomiest([_seen(10, 5), Headroom()], 0.0, 0, start=0) == 1
