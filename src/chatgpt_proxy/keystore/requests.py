"""Reading a key's name, policy and expiry from a request, the same for the CLI and admin API."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from types import EllipsisType
from typing import Any

from chatgpt_proxy.errors import InvalidRequest
from chatgpt_proxy.keystore.values import ClientKey, KeyPolicy

_OWN_FIELDS = ("name", "expires_at")


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """What to create, or (with ``...`` for "unchanged") what to change."""

    name: str | None
    policy: KeyPolicy | None
    expires_at: datetime | EllipsisType | None


def parse_create(data: Mapping[str, Any], defaults: KeyPolicy | None = None) -> KeyRequest:
    if not isinstance(data, Mapping):
        raise InvalidRequest("The body must be a JSON object.")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("`name` is required and must be a non-empty string.", param="name")
    base = defaults.to_dict() if defaults is not None else {}
    policy = KeyPolicy.from_dict({**base, **data}, ignore=_OWN_FIELDS)
    expires = parse_expiry(data.get("expires_at"))
    return KeyRequest(name.strip(), policy, expires)


def parse_update(key: ClientKey, data: Mapping[str, Any]) -> KeyRequest:
    """A partial change: given fields replace the key's, ``null`` clears a limit."""
    if not isinstance(data, Mapping):
        raise InvalidRequest("The body must be a JSON object.")
    name = data.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise InvalidRequest("`name` must be a non-empty string.", param="name")
    policy_fields = {k: v for k, v in data.items() if k not in _OWN_FIELDS}
    policy = None
    if policy_fields:
        merged = {**key.policy.to_dict(), **policy_fields}
        policy = KeyPolicy.from_dict(merged, ignore=_OWN_FIELDS)
    expires: datetime | EllipsisType | None = ...
    if "expires_at" in data:
        expires = parse_expiry(data["expires_at"])
    return KeyRequest(name.strip() if name else None, policy, expires)


def parse_expiry(value: object) -> datetime | None:
    """``2027-01-31`` (end of that day, UTC) or a full ISO time; naive times are UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest("`expires_at` must be an ISO date or time.", param="expires_at")
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(
            "`expires_at` must be an ISO date (2027-01-31) or time.", param="expires_at"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
