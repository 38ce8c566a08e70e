"""The bounded cache behind every cache of the proxy: LRU, optionally expiring."""

from __future__ import annotations

from chatgpt_proxy.memo import ABSENT, Memo


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
