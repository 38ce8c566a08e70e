"""Where a key stands: its usage today and this month, its limits, and what they leave.

One computation behind both the Discord ``/usage`` command and ``GET /me``::

    standing = await Standing.of(store, key)
    standing.to_dict()     # {"key": {...}, "today": {...}, "month": {...}, "left_today": {...}}
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from chatgpt_proxy.keystore import ClientKey, KeyStore, UsageRow


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int = 0
    total_tokens: int = 0
    cost: float = 0.0

    @classmethod
    def of(cls, rows: list[UsageRow]) -> Totals:
        return cls(
            sum(row.requests for row in rows),
            sum(row.total_tokens for row in rows),
            sum(row.cost for row in rows),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "total_tokens": self.total_tokens, "cost": self.cost}


@dataclass(frozen=True, slots=True)
class Standing:
    key: ClientKey
    today: Totals
    month: Totals
    rows: list[UsageRow]  # this month's, per day and model

    @classmethod
    async def of(cls, store: KeyStore, key: ClientKey, now: datetime | None = None) -> Standing:
        today = (now or datetime.now(UTC)).date()
        rows = await store.usage.summary(key.id, date(today.year, today.month, 1))
        return cls(key, Totals.of([r for r in rows if r.day == today]), Totals.of(rows), rows)

    def left_today(self) -> dict[str, Any]:
        """What the daily budgets leave (``None``: no such budget)."""
        policy = self.key.policy
        tokens = policy.daily_token_budget
        cost = policy.daily_cost_budget
        return {
            "total_tokens": None if tokens is None else max(0, tokens - self.today.total_tokens),
            "cost": None if cost is None else max(0.0, cost - self.today.cost),
        }

    def to_dict(self) -> dict[str, Any]:
        public = self.key.public_dict()
        return {
            "key": public,
            "today": self.today.to_dict(),
            "month": self.month.to_dict(),
            "left_today": self.left_today(),
        }

    def summary(self) -> str:
        """The same, as a few lines of a chat message."""
        policy = self.key.policy
        left = self.left_today()
        lines = [
            f"Key `{self.key.prefix}...` ({self.key.state(datetime.now(UTC))})",
            f"Today: {self.today.requests} requests, {self.today.total_tokens} tokens",
            f"This month: {self.month.requests} requests, {self.month.total_tokens} tokens",
        ]
        if left["total_tokens"] is not None:
            lines.append(
                f"Left today: {left['total_tokens']} of {policy.daily_token_budget} tokens"
            )
        limits = [
            f"{value} {unit}"
            for value, unit in ((policy.rpm, "requests/min"), (policy.tpm, "tokens/min"))
            if value is not None
        ]
        if limits:
            lines.append("Limits: " + ", ".join(limits))
        if policy.models:
            lines.append("Models: " + ", ".join(policy.models))
        if self.key.expires_at is not None:
            lines.append(f"Expires: {self.key.expires_at:%Y-%m-%d %H:%M} UTC")
        return "\n".join(lines)
