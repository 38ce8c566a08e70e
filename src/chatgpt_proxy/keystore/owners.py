"""Self-service keys: who owns a key, owners the operator blocked, and interactions seen.

A self-service key records its owner (``discord:<user id>``). An owner holds at most one
active key; issuing, rotating and blocking run in one exclusive transaction, so two replicas
answering the same user at once cannot issue two keys. The statements are here; ``KeyStore``
runs them at its one error boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from chatgpt_proxy.keystore.schema import (
    aware_utc,
    blocked_owners,
    client_keys,
    holder_sessions,
    seen_interactions,
)

if TYPE_CHECKING:
    from chatgpt_proxy.keystore.values import ClientKey

MAX_OWNER_LENGTH = 100  # the owner columns
MAX_INTERACTION_ID_LENGTH = 64
# Any fixed 64-bit number, the same in every replica: it names the lock, nothing more.
OWNERS_LOCK = 0x6367705F6F776E72  # b"cgp_ownr"


class Outcome(StrEnum):
    ISSUED = "issued"  # a new key (and, on rotation, the old one revoked)
    EXISTS = "exists"  # the owner already holds an active key; nothing changed
    BLOCKED = "blocked"  # the operator blocked this owner
    CAPPED = "capped"  # the server issued its hourly share of self-service keys
    USER_CAPPED = "user_capped"  # this owner was issued their daily share of keys


@dataclass(frozen=True, slots=True)
class Issue:
    """What asking for a key came to. ``secret`` is set only when ``outcome`` is ISSUED."""

    outcome: Outcome
    key: ClientKey | None = None
    secret: str | None = None
    revoked: tuple[ClientKey, ...] = field(default=())


def active_query(owner: str, now: datetime) -> sa.Select[Any]:
    """The owner's keys that are neither revoked nor expired, newest first."""
    now = aware_utc(now, "now")
    return (
        sa.select(client_keys)
        .where(
            client_keys.c.owner == owner,
            client_keys.c.revoked_at.is_(None),
            sa.or_(client_keys.c.expires_at.is_(None), client_keys.c.expires_at > now),
        )
        .order_by(client_keys.c.created_at.desc(), client_keys.c.id)
    )


def owned_query(owner: str) -> sa.Select[Any]:
    """Every key the owner was ever issued, newest first."""
    return (
        sa.select(client_keys)
        .where(client_keys.c.owner == owner)
        .order_by(client_keys.c.created_at.desc(), client_keys.c.id)
    )


def revoke_owned(owner: str, now: datetime) -> sa.Update:
    now = aware_utc(now, "now")
    return (
        client_keys.update()
        .where(client_keys.c.owner == owner, client_keys.c.revoked_at.is_(None))
        .values(revoked_at=now, updated_at=now)
    )


def issued_since_query(since: datetime, owner: str | None = None) -> sa.Select[Any]:
    """How many self-service keys were issued since ``since``: to ``owner``, or to anyone."""
    who = client_keys.c.owner.is_not(None) if owner is None else client_keys.c.owner == owner
    return sa.select(sa.func.count()).where(
        who, client_keys.c.created_at >= aware_utc(since, "since")
    )


def blocked_query(owner: str) -> sa.Select[Any]:
    return sa.select(blocked_owners.c.owner).where(blocked_owners.c.owner == owner)


def block_statement(owner: str, now: datetime) -> sa.Insert:
    return blocked_owners.insert().values(owner=owner, blocked_at=aware_utc(now, "now"))


def unblock_statement(owner: str) -> sa.Delete:
    return blocked_owners.delete().where(blocked_owners.c.owner == owner)


def prune_seen(now: datetime, window: timedelta) -> sa.Delete:
    return seen_interactions.delete().where(
        seen_interactions.c.seen_at < aware_utc(now, "now") - window
    )


def seen_statement(interaction_id: str, now: datetime) -> sa.Insert:
    return seen_interactions.insert().values(id=interaction_id, seen_at=aware_utc(now, "now"))


def session_statement(id_hash: str, key_id: str, expires_at: datetime) -> sa.Insert:
    return holder_sessions.insert().values(
        id_hash=id_hash, key_id=key_id, expires_at=aware_utc(expires_at, "expires_at")
    )


def session_query(id_hash: str, now: datetime) -> sa.Select[Any]:
    return sa.select(holder_sessions.c.key_id).where(
        holder_sessions.c.id_hash == id_hash,
        holder_sessions.c.expires_at > aware_utc(now, "now"),
    )


def prune_sessions(now: datetime) -> sa.Delete:
    return holder_sessions.delete().where(holder_sessions.c.expires_at <= aware_utc(now, "now"))


def end_session(id_hash: str) -> sa.Delete:
    return holder_sessions.delete().where(holder_sessions.c.id_hash == id_hash)
