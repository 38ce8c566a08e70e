"""Which upstream key holds a stored resource, so follow-up calls reach the same account.

A Responses API response (``store: true``, the default) lives in the account of the key that
created it: ``GET /v1/responses/{id}``, its cancel, delete, input items, and a new response
with ``previous_response_id`` must use a key of that account, or the upstream answers 404.
Pools whose keys all belong to one account never need it; pools that mix accounts do.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Holder:
    upstream: str
    alias: str


class Affinity:
    """A bounded map from resource id to the key that created it (least recently used goes).

    >>> affinity = Affinity(capacity=2)
    >>> affinity.remember("resp_1", Holder("openai", "openai#2"))
    >>> affinity.holder("resp_1")
    Holder(upstream='openai', alias='openai#2')
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._holders: OrderedDict[str, Holder] = OrderedDict()

    def remember(self, resource_id: str, holder: Holder) -> None:
        self._holders[resource_id] = holder
        self._holders.move_to_end(resource_id)
        if len(self._holders) > self._capacity:
            self._holders.popitem(last=False)

    def holder(self, resource_id: str) -> Holder | None:
        holder = self._holders.get(resource_id)
        if holder is not None:
            self._holders.move_to_end(resource_id)
        return holder
