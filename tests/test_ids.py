"""Unique ids: a random part per process, then a counter."""

from __future__ import annotations

import re

from chatgpt_proxy.ids import UniqueIds


def test_ids_count_up_after_a_random_part_of_their_own() -> None:
    ids, others = UniqueIds("req_", digits=10), UniqueIds("req_", digits=10)
    first, second = ids.next(), ids.next()
    assert re.fullmatch(r"req_[0-9a-f]{16}0000000001", first)
    assert second == first[:-1] + "2"
    assert others.next()[:20] != first[:20]
    limiter = UniqueIds(random_bytes=4, tail=".")
    assert re.fullmatch(r"[0-9a-f]{8}\.1", limiter.next())
