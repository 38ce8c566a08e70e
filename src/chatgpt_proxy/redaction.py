"""Scrubbing secrets and account identifiers out of text the proxy did not write itself.

Upstream error bodies are passed to the client (a 400 is the client's own mistake) and some
library messages reach the logs; either may name the upstream account (``org-…``,
``proj_…``) or echo part of a key (``sk-ab***xyz``). DESIGN §3.1: none of it leaves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_PATTERNS = (
    (r"sk-[A-Za-z0-9_\-*.]{4,}", "sk-***"),
    (r"org-[A-Za-z0-9]{4,}", "org-***"),
    (r"proj_[A-Za-z0-9]{4,}", "proj_***"),
)


class Redactor:
    """Replaces the configured secrets and anything shaped like a key or account id.

    >>> Redactor(["sk-live-1234"]).scrub("key sk-live-1234 of org-AbCd1234")
    'key sk-*** of org-***'
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literal = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
        parts = [re.escape(secret) for secret in literal]
        self._secrets = re.compile("|".join(parts)) if parts else None
        self._secrets_bytes = (
            re.compile(b"|".join(re.escape(s.encode()) for s in literal)) if parts else None
        )
        self._patterns = [(re.compile(p), r) for p, r in _PATTERNS]
        self._patterns_bytes = [(re.compile(p.encode()), r.encode()) for p, r in _PATTERNS]
        # One pass finds whether there is anything to replace: most text (every access log
        # line) has nothing, and then costs one search instead of a substitution per pattern.
        self._anything = re.compile("|".join([*parts, *(p for p, _ in _PATTERNS)]))

    def scrub(self, text: str) -> str:
        if self._anything.search(text) is None:
            return text
        if self._secrets is not None:
            text = self._secrets.sub("***", text)
        for pattern, replacement in self._patterns:
            text = pattern.sub(replacement, text)
        return text

    def scrub_bytes(self, data: bytes) -> bytes:
        if self._secrets_bytes is not None:
            data = self._secrets_bytes.sub(b"***", data)
        for pattern, replacement in self._patterns_bytes:
            data = pattern.sub(replacement, data)
        return data
