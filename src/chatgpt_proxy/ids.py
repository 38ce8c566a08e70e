"""Ids unique across processes and replicas, without a random draw or a system call each."""

from __future__ import annotations

import itertools
import secrets


class UniqueIds:
    """A random part drawn once per process, then a counter.

    >>> ids = UniqueIds("req_", random_bytes=8, digits=10)
    >>> ids.next()   # "req_3f9c0e5b1a2d4c6e0000000001", then ...02
    """

    def __init__(self, head: str = "", *, random_bytes: int = 8, tail: str = "", digits: int = 0):
        self._prefix = head + secrets.token_hex(random_bytes) + tail
        self._format = f"0{digits}x" if digits else "x"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return self._prefix + format(next(self._counter), self._format)
