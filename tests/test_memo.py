"""The bounded cache behind every cache of the proxy: LRU, optionally expiring."""

from __future__ import annotations

import pytest

from chatgpt_proxy.memo import ABSENT, Memo, key_chars


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_full_memo_drops_the_least_recently_used_entry() -> None:
    memo: Memo[str, int] = Memo(3)
    assert memo.remember("a", 1) == 1
    memo.remember("b", 2)
    memo.remember("c", 3)
    assert memo.get("a") == 1  # "a" is now the most recently used; "b" the least
    memo.remember("d", 4)
    assert memo.get("b") is None
    assert [memo.get(key) for key in "acd"] == [1, 3, 4]
    assert len(memo) == 3 == memo.limit


def test_remembering_a_key_again_replaces_its_value_and_makes_it_the_newest() -> None:
    memo: Memo[str, int] = Memo(2)
    memo.remember("a", 1)
    memo.remember("b", 2)
    memo.remember("a", 10)
    memo.remember("c", 3)  # drops "b", not "a"
    assert (memo.get("a"), memo.get("b"), memo.get("c")) == (10, None, 3)


def test_a_remembered_none_is_told_apart_from_nothing_remembered() -> None:
    memo: Memo[str, int | None] = Memo(2)
    assert memo.remember("free", None) is None
    assert memo.get("free", ABSENT) is None
    assert memo.get("unknown", ABSENT) is ABSENT
    assert memo.get("unknown", 7) == 7


def test_forget_and_clear() -> None:
    memo: Memo[str, int] = Memo(3)
    memo.remember("a", 1)
    memo.remember("b", 2)
    memo.forget("a")
    memo.forget("never")
    assert (memo.get("a"), memo.get("b"), len(memo)) == (None, 2, 1)
    memo.clear()
    assert len(memo) == 0 and not memo


def test_a_limit_of_zero_remembers_nothing() -> None:
    memo: Memo[str, int] = Memo(0)
    assert memo.remember("a", 1) == 1
    assert memo.get("a") is None and len(memo) == 0


def test_with_a_ttl_an_entry_is_forgotten_that_long_after_it_was_remembered() -> None:
    clock = Clock()
    memo: Memo[str, int] = Memo(10, ttl=60.0, clock=clock)
    memo.remember("a", 1)
    clock.now = 30.0
    memo.remember("b", 2)
    assert memo.get("a") == 1  # a hit does not extend its life
    clock.now = 60.0
    assert memo.get("a") is None and memo.get("b") == 2
    assert len(memo) == 1
    memo.remember("b", 20)  # remembered again: a new life
    clock.now = 100.0
    assert memo.get("b") == 20
    clock.now = 160.0
    assert memo.get("b") is None and len(memo) == 0


def test_an_expiring_memo_is_bounded_too() -> None:
    memo: Memo[int, int] = Memo(100, ttl=60.0, clock=Clock())
    for n in range(1000):
        memo.remember(n, n)
    assert len(memo) == 100
    assert memo.get(899) is None and memo.get(999) == 999


def test_with_max_bytes_the_oldest_make_room_until_the_new_entry_fits() -> None:
    memo: Memo[str, int] = Memo(100, max_bytes=10, weigh=key_chars)
    for key in ("aaaa", "bbb", "cc"):
        memo.remember(key, len(key))
    assert memo.weight == 9
    memo.get("aaaa")  # now the most recently used: "bbb" goes first
    memo.remember("dddd", 4)
    assert (memo.get("bbb"), memo.get("cc"), memo.get("aaaa")) == (None, 2, 4)
    assert memo.weight == 10 and len(memo) == 3
    memo.remember("dddd", 40)  # the same key again weighs once
    assert memo.weight == 10


def test_filling_past_max_bytes_keeps_the_weight_under_it_and_the_newest_entries() -> None:
    memo: Memo[str, int] = Memo(1_000, max_bytes=1_000, weigh=key_chars)
    for n in range(5_000):
        memo.remember(f"{n:08d}", n)  # 8 characters each
        assert memo.weight <= 1_000
    assert len(memo) == 125
    assert memo.get("00004874") is None and memo.get("00004999") == 4999
    assert memo.remember("x" * 1_001, 1) == 1  # larger than the budget: not kept
    assert memo.get("x" * 1_001) is None and memo.get("00004999") == 4999


def test_weights_are_given_back_when_entries_expire_are_forgotten_or_cleared() -> None:
    clock = Clock()
    memo: Memo[tuple[str, str], int] = Memo(
        10, ttl=5.0, clock=clock, max_bytes=100, weigh=key_chars
    )
    memo.remember(("ab", "cde"), 1)
    memo.remember(("f", "g"), 2)
    assert memo.weight == 7
    memo.forget(("f", "g"))
    assert memo.weight == 5
    clock.now = 5.0
    assert memo.get(("ab", "cde")) is None and memo.weight == 0
    memo.remember(("h", "i"), 3)
    memo.clear()
    assert memo.weight == 0 and len(memo) == 0


def test_max_bytes_needs_a_weigh() -> None:
    with pytest.raises(ValueError, match="go together"):
        Memo(10, max_bytes=100)
