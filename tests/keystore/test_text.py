"""Text made storable on every backend: no NUL, no lone surrogate, no more than the column."""

from __future__ import annotations

import pytest

from chatgpt_proxy.keystore.text import REPLACEMENT, is_storable, storable


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o\x00mini", f"gpt-4o{REPLACEMENT}mini"),
        ("caf\u00e9 \ud800", f"caf\u00e9 {REPLACEMENT}"),
        ("\U0001f600", "\U0001f600"),  # a paired character is stored as it is
    ],
)
def test_what_no_backend_holds_is_replaced(text: str, stored: str) -> None:
    assert storable(text, 200) == stored
    assert is_storable(stored, 200)


def test_long_text_is_clipped_to_the_column() -> None:
    assert storable("m" * 300, 200) == "m" * 200
    assert not is_storable("m" * 201, 200)
    assert is_storable("m" * 200, 200)


def test_unstorable_text_is_recognised_before_a_lookup() -> None:
    assert not is_storable("key_\x00", 64)
    assert not is_storable("key_\udfff", 64)
    assert is_storable("key_abc", 64)
