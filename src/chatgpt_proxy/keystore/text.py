"""Text bound for the database, made storable on every backend.

PostgreSQL refuses NUL in text, both drivers refuse lone surrogates (they cannot be encoded as
UTF-8), and PostgreSQL refuses a string longer than its column. Client-supplied text (a model
name) is therefore cleaned before it is written, and a lookup by an id that no row can hold is
answered "not found" without asking the database, which would fail the whole statement.
"""

from __future__ import annotations

import re

# NUL and every surrogate: a Python str holds a surrogate only when it is unpaired.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def storable(text: str, limit: int) -> str:
    """``text`` with what no backend can hold replaced by U+FFFD, clipped to ``limit`` chars.

    >>> storable("gpt-4o\\x00mini", 200)
    'gpt-4o\\ufffdmini'
    """
    if not text.isascii() or "\x00" in text:
        text = _UNSTORABLE.sub(REPLACEMENT, text)
    return text[:limit]


def is_storable(text: str, limit: int) -> bool:
    """Whether ``text`` could be in a column of ``limit`` characters as it is."""
    return len(text) <= limit and _UNSTORABLE.search(text) is None
