"""The bounded memo behind the proxy's per-request caches."""

from __future__ import annotations

from chatgpt_proxy.memo import Memo


def test_a_memo_keeps_what_it_remembers_until_it_is_full() -> None:
    memo: Memo[str, int | None] = Memo(3)
    assert memo.remember("a", 1) == 1
    assert memo.remember("b", None) is None  # a remembered None is still remembered
    memo.remember("c", 3)
    assert dict(memo) == {"a": 1, "b": None, "c": 3}
    assert memo.remember("c", 30) == 30  # full: emptied before the new value goes in
    assert dict(memo) == {"c": 30}
    assert len(memo) <= memo.limit
