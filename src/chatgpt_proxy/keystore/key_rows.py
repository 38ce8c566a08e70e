"""Rows of the ``client_keys`` table: a new key's row, a row read back as a ``ClientKey``, and
the checks a key's name and id pass before any SQL runs.

Shared by the parts of the store that write or read keys (``store.py`` and ``owners.py``).
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatgpt_proxy.errors import InvalidRequest
from chatgpt_proxy.keystore.schema import aware_utc, client_keys
from chatgpt_proxy.keystore.text import is_storable
from chatgpt_proxy.keystore.tokens import display_prefix, hash_secret, new_secret
from chatgpt_proxy.keystore.values import ClientKey, KeyPolicy

MAX_NAME_LENGTH = 200
MAX_ID_LENGTH = 32  # the client_keys.id column
_POLICY_COLUMNS = tuple(name for name in KeyPolicy.field_names() if name != "models")


def new_key(
    name: str, policy: KeyPolicy, expires_at: datetime | None, owner: str | None
) -> tuple[ClientKey, str, dict[str, Any]]:
    """A new key, its secret and its row, checked before any SQL runs."""
    secret = new_secret()
    now = datetime.now(UTC)
    key = ClientKey(
        id="key_" + secrets.token_hex(8),
        name=checked_name(name),
        prefix=display_prefix(secret),
        key_hash=hash_secret(secret),
        created_at=now,
        updated_at=now,
        expires_at=None if expires_at is None else aware_utc(expires_at, "expires_at"),
        revoked_at=None,
        policy=policy,
        owner=owner,
    )
    row = {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "key_hash": key.key_hash,
        "created_at": key.created_at,
        "updated_at": key.updated_at,
        "expires_at": key.expires_at,
        "revoked_at": None,
        "owner": owner,
        **policy_row(policy),
    }
    return key, secret, row


def checked_name(name: str) -> str:
    # Checked here, not left to the column: PostgreSQL would refuse an over-long name with a
    # database error (a 503), SQLite would store it; either way the client deserves a 400.
    name = name.strip()
    if not name or not is_storable(name, MAX_NAME_LENGTH):
        raise InvalidRequest(
            f"Invalid value for 'name': must be 1-{MAX_NAME_LENGTH} characters, "
            "without NUL or unpaired surrogates.",
            param="name",
        )
    return name


def possible_id(key_id: str) -> bool:
    # An id no row can hold (NUL, a lone surrogate, longer than the column) matches no key;
    # asked of PostgreSQL it would fail the statement, and the client would see a 503.
    return is_storable(key_id, MAX_ID_LENGTH)


def policy_row(policy: KeyPolicy) -> dict[str, Any]:
    row = {name: getattr(policy, name) for name in _POLICY_COLUMNS}
    row["models"] = json.dumps(list(policy.models)) if policy.models else None
    return row


def client_key(row: sa.RowMapping) -> ClientKey:
    models = tuple(json.loads(row["models"])) if row["models"] else ()
    policy = KeyPolicy(models=models, **{name: row[name] for name in _POLICY_COLUMNS})
    return ClientKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        key_hash=row["key_hash"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        policy=policy,
        owner=row["owner"],
    )


async def fetch_key(conn: AsyncConnection, key_id: str) -> ClientKey | None:
    row = (await conn.execute(sa.select(client_keys).where(client_keys.c.id == key_id))).first()
    return None if row is None else client_key(row._mapping)


async def fetch_keys(conn: AsyncConnection, query: sa.Select[Any]) -> list[ClientKey]:
    return [client_key(row._mapping) for row in (await conn.execute(query)).all()]
