"""Self-service keys: who owns a key, owners the operator blocked, interactions seen, and the
page sessions of key holders.

A self-service key records its owner (``discord:<user id>``). An owner holds at most one
active key; issuing, rotating and blocking run in one exclusive transaction, so two replicas
answering the same user at once cannot issue two keys. The statements are at the end;
``Owners`` runs them at the store's error boundary::

    issue = await store.owners.issue("discord:1", "member", KeyPolicy(), None, daily_cap=3)
    revoked = await store.owners.block("discord:1")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatgpt_proxy.errors import InvalidRequest
from chatgpt_proxy.keystore.audit import StoreErrors
from chatgpt_proxy.keystore.engine import exclusive
from chatgpt_proxy.keystore.key_rows import client_key, fetch_key, fetch_keys, new_key
from chatgpt_proxy.keystore.schema import (
    aware_utc,
    blocked_owners,
    client_keys,
    holder_sessions,
    seen_interactions,
)
from chatgpt_proxy.keystore.text import is_storable
from chatgpt_proxy.keystore.values import ClientKey, KeyPolicy

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


class Owners:
    """The owners of self-service keys; database failures raise ``StoreUnavailable``."""

    def __init__(self, engine: AsyncEngine, errors: StoreErrors) -> None:
        self._engine = engine
        self._errors = errors

    async def issue(
        self,
        owner: str,
        name: str,
        policy: KeyPolicy,
        expires_at: datetime | None,
        *,
        rotate: bool = False,
        hourly_cap: int | None = None,
        daily_cap: int | None = None,
    ) -> Issue:
        """A key for ``owner`` unless one is active (``rotate`` revokes it first), the owner is
        blocked, ``owner`` was issued ``daily_cap`` keys in the last 24 hours, or
        ``hourly_cap`` self-service keys were issued in the last hour, to anyone.

        Read and write are one exclusive transaction: concurrent requests of one owner, on any
        replica, issue one key between them.
        """
        _checked_owner(owner)
        key, secret, row = new_key(name, policy, expires_at, owner)
        now = key.created_at
        with self._errors("issue_owned"):
            async with exclusive(self._engine, OWNERS_LOCK) as conn:
                if await conn.scalar(blocked_query(owner)) is not None:
                    return Issue(Outcome.BLOCKED)
                active = (await conn.execute(active_query(owner, now))).first()
                if active is not None and not rotate:
                    return Issue(Outcome.EXISTS, client_key(active._mapping))
                if daily_cap is not None:
                    since = now - timedelta(days=1)
                    if await conn.scalar(issued_since_query(since, owner)) >= daily_cap:
                        return Issue(Outcome.USER_CAPPED)
                if hourly_cap is not None:
                    since = now - timedelta(hours=1)
                    if await conn.scalar(issued_since_query(since)) >= hourly_cap:
                        return Issue(Outcome.CAPPED)
                revoked = await _revoke_owned(conn, owner, now)
                await conn.execute(client_keys.insert().values(row))
        return Issue(Outcome.ISSUED, key, secret, revoked)

    async def keys(self, owner: str) -> list[ClientKey]:
        """Every key ever issued to ``owner``, newest first."""
        if not is_storable(owner, MAX_OWNER_LENGTH):
            return []
        with self._errors("owned_keys"):
            async with self._engine.connect() as conn:
                return await fetch_keys(conn, owned_query(owner))

    async def block(self, owner: str) -> tuple[ClientKey, ...]:
        """Block ``owner`` from self-service and revoke their keys; return the keys revoked."""
        _checked_owner(owner)
        now = datetime.now(UTC)
        with self._errors("block_owner"):
            async with exclusive(self._engine, OWNERS_LOCK) as conn:
                if await conn.scalar(blocked_query(owner)) is None:
                    await conn.execute(block_statement(owner, now))
                return await _revoke_owned(conn, owner, now)

    async def unblock(self, owner: str) -> bool:
        """Lift a block (revoked keys stay revoked); False if ``owner`` was not blocked."""
        _checked_owner(owner)
        with self._errors("unblock_owner"):
            async with self._engine.begin() as conn:
                return bool((await conn.execute(unblock_statement(owner))).rowcount)

    async def is_blocked(self, owner: str) -> bool:
        if not is_storable(owner, MAX_OWNER_LENGTH):
            return False
        with self._errors("is_blocked"):
            async with self._engine.connect() as conn:
                return await conn.scalar(blocked_query(owner)) is not None

    async def first_sighting(self, interaction_id: str, window: timedelta) -> bool:
        """Remember ``interaction_id``; False if it was seen within ``window`` (a replay).

        Ids older than ``window`` are forgotten, so the table stays bounded; the caller refuses
        anything older than the window before asking.
        """
        if not is_storable(interaction_id, MAX_INTERACTION_ID_LENGTH):
            return False
        now = datetime.now(UTC)
        with self._errors("first_sighting"):
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(prune_seen(now, window))
                    await conn.execute(seen_statement(interaction_id, now))
            except sa.exc.IntegrityError:
                return False
        return True

    async def start_session(self, id_hash: str, key_id: str, expires_at: datetime) -> None:
        """Record a key holder's page session (by the hash of its id); expired ones go."""
        with self._errors("start_session"):
            async with self._engine.begin() as conn:
                await conn.execute(prune_sessions(datetime.now(UTC)))
                await conn.execute(session_statement(id_hash, key_id, expires_at))

    async def session_key(self, id_hash: str) -> ClientKey | None:
        """The key of an unexpired session, or None."""
        with self._errors("session_key"):
            async with self._engine.connect() as conn:
                key_id = await conn.scalar(session_query(id_hash, datetime.now(UTC)))
                return None if key_id is None else await fetch_key(conn, key_id)

    async def end_session(self, id_hash: str) -> None:
        with self._errors("end_session"):
            async with self._engine.begin() as conn:
                await conn.execute(end_session_statement(id_hash))


async def _revoke_owned(conn: AsyncConnection, owner: str, now: datetime) -> tuple[ClientKey, ...]:
    live = await fetch_keys(conn, owned_query(owner))
    await conn.execute(revoke_owned(owner, now))
    return tuple(
        dataclasses.replace(key, revoked_at=now, updated_at=now)
        for key in live
        if key.revoked_at is None
    )


def _checked_owner(owner: str) -> None:
    if not owner or not is_storable(owner, MAX_OWNER_LENGTH):
        raise InvalidRequest(
            f"Invalid owner: must be 1-{MAX_OWNER_LENGTH} characters.", param="owner"
        )


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


def end_session_statement(id_hash: str) -> sa.Delete:
    return holder_sessions.delete().where(holder_sessions.c.id_hash == id_hash)
