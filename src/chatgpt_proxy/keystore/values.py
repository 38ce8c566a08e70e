"""The key store's values: a client key, its policy, and its usage.

These are plain frozen dataclasses: what the store returns, what the auth cache holds, what the
admin API renders. A ``KeyPolicy`` validates itself, so an invalid one cannot exist::

    policy = KeyPolicy.from_dict({"rpm": 60, "models": ["gpt-4o*"]})
    policy.allows_model("gpt-4o-mini")    # True
    KeyPolicy.from_dict({"rpm": "fast"})  # InvalidRequest naming "rpm"
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from fnmatch import fnmatchcase
from typing import Any

from chatgpt_proxy.errors import InvalidRequest

MODERATION_MODES = ("exempt", "strict")
MAX_MODEL_PATTERNS = 100
MAX_PATTERN_LENGTH = 200

# Limits of at least one (a limit of zero requests is a revocation, which has its own verb);
# budgets may be zero, which blocks spending but keeps the key listable.
_POSITIVE_INTS = ("rpm", "tpm", "max_concurrency")
_NON_NEGATIVE_INTS = ("daily_token_budget", "total_token_budget")
_NON_NEGATIVE_NUMBERS = ("daily_cost_budget", "total_cost_budget")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _isoformat(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What a client key may do. ``None`` means no limit; empty ``models`` means every model."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    daily_token_budget: int | None = None
    total_token_budget: int | None = None
    daily_cost_budget: float | None = None  # USD
    total_cost_budget: float | None = None  # USD
    models: tuple[str, ...] = ()  # glob patterns, matched case-sensitively
    moderation: str | None = None  # None: the proxy's default; "exempt" or "strict"

    def __post_init__(self) -> None:
        for name in _POSITIVE_INTS + _NON_NEGATIVE_INTS:
            value = getattr(self, name)
            # bool is an int to Python, never to an operator writing {"rpm": true}.
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise _invalid(name, "must be an integer")
            minimum = 1 if name in _POSITIVE_INTS else 0
            if value is not None and value < minimum:
                raise _invalid(name, f"must be at least {minimum}")
        for name in _NON_NEGATIVE_NUMBERS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _invalid(name, "must be a number (USD)")
            if not math.isfinite(value) or value < 0:
                raise _invalid(name, "must be a finite number, at least 0")
            object.__setattr__(self, name, float(value))  # one type in, one type out
        self._check_models()
        if self.moderation is not None and self.moderation not in MODERATION_MODES:
            raise _invalid("moderation", f"must be one of {', '.join(MODERATION_MODES)} or null")

    def _check_models(self) -> None:
        if not isinstance(self.models, tuple):
            raise _invalid("models", "must be a list of model name patterns")
        if len(self.models) > MAX_MODEL_PATTERNS:
            raise _invalid("models", f"must have at most {MAX_MODEL_PATTERNS} patterns")
        for pattern in self.models:
            if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_LENGTH:
                raise _invalid("models", f"each pattern must be 1-{MAX_PATTERN_LENGTH} chars")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, ignore: Collection[str] = ()) -> KeyPolicy:
        """Build a policy from a JSON body, raising ``InvalidRequest`` naming the bad field.

        ``None`` values are skipped, so a PATCH merged as ``{**old.to_dict(), **patch}`` clears a
        limit with ``null``. Unknown fields are refused rather than dropped (a typo such as
        ``"model"`` must not leave a key allowed every model); list fields the caller handles
        itself, such as ``name``, in ``ignore``.
        """
        known = cls.field_names()
        unknown = sorted(set(data) - set(known) - set(ignore))
        if unknown:
            raise _invalid(unknown[0], f"unknown field {unknown[0]!r}")
        values = {name: data[name] for name in known if data.get(name) is not None}
        if "models" in values:
            models = values["models"]
            if not isinstance(models, list | tuple):
                raise _invalid("models", "must be a list of model name patterns")
            values["models"] = tuple(models)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (``models`` as a list)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["models"] = list(self.models)
        return data

    def allows_model(self, model: str) -> bool:
        return not self.models or any(fnmatchcase(model, pattern) for pattern in self.models)


def _invalid(field_name: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{field_name}': {problem}.", param=field_name)


@dataclass(frozen=True, slots=True)
class ClientKey:
    """A client key as stored: everything but the secret itself, which is only ever hashed."""

    id: str
    name: str
    prefix: str
    key_hash: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    policy: KeyPolicy
    owner: str | None = None  # "discord:<user id>" for a self-service key

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def is_active(self, now: datetime) -> bool:
        return self.state(now) == "active"

    def public_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """The key as the admin API and CLI show it: the prefix, never the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": _isoformat(self.created_at),
            "updated_at": _isoformat(self.updated_at),
            "expires_at": _isoformat(self.expires_at),
            "revoked_at": _isoformat(self.revoked_at),
            "state": self.state(now or _utcnow()),
            "owner": self.owner,
            **self.policy.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """The usage of ``requests`` requests alike (key, model, upstream key, endpoint, status).

    Tokens, cost and ``latency_ms`` are sums over those requests; the meter writes one such
    row per group and flush, so a busy proxy writes rows per second, not per request.
    """

    key_id: str
    model: str
    upstream: str  # the upstream key's alias, e.g. "openai#1"; never the key
    endpoint: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    latency_ms: int
    cost: float | None = None  # USD; None when the model's price is unknown
    created_at: datetime = field(default_factory=_utcnow)
    requests: int = 1


@dataclass(frozen=True, slots=True)
class UsageRow:
    """A key's usage of one model on one UTC day."""

    day: date
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the admin API and ``keys usage --json``."""
        return {**dataclasses.asdict(self), "day": self.day.isoformat()}
