"""The key store's one schema, for SQLite and PostgreSQL alike.

The tables are created and changed only by the Alembic migrations in ``migrations/versions``;
this module describes them for queries (and for ``alembic revision --autogenerate`` to diff
against). A test checks that the migrated database and this metadata agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# Deterministic constraint names, so later migrations can refer to them (and SQLite's batch mode,
# which rebuilds tables, can recreate them) without reflecting the database first.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# Alembic's bookkeeping table, named for this package so the database can be shared with another
# application that uses Alembic's default "alembic_version".
VERSION_TABLE = "chatgpt_proxy_alembic_version"


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL's ``timestamptz`` keeps the instant; SQLite has no datetime type and SQLAlchemy
    stores naive ISO strings there. Storing every value as naive UTC on SQLite keeps those strings
    comparable (``updated_at >= :since`` is a string comparison there), and reading them back as
    UTC means callers never see a naive datetime.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the key store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for an event log.
_EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

client_keys = sa.Table(
    "client_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # "key_" + 16 hex
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256 hex, never the key
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # Indexed because the auth cache polls "what changed since" every second.
    sa.Column("updated_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    # Policy: NULL means "no limit" (or, for moderation, "the proxy's default policy").
    sa.Column("rpm", sa.BigInteger(), nullable=True),
    sa.Column("tpm", sa.BigInteger(), nullable=True),
    sa.Column("max_concurrency", sa.BigInteger(), nullable=True),
    sa.Column("daily_token_budget", sa.BigInteger(), nullable=True),
    sa.Column("total_token_budget", sa.BigInteger(), nullable=True),
    sa.Column("daily_cost_budget", sa.Float(), nullable=True),  # USD
    sa.Column("total_cost_budget", sa.Float(), nullable=True),  # USD
    sa.Column("models", sa.Text(), nullable=True),  # JSON list of globs; NULL = every model
    sa.Column("moderation", sa.String(16), nullable=True),  # NULL, "exempt" or "strict"
    # Who a self-service key was issued to ("discord:<user id>"); NULL for the operator's keys.
    sa.Column("owner", sa.String(100), nullable=True, index=True),
)

usage_events = sa.Table(
    "usage_events",
    metadata,
    sa.Column("id", _EventId, primary_key=True, autoincrement=True),
    sa.Column("key_id", sa.String(32), sa.ForeignKey("client_keys.id"), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("upstream", sa.String(100), nullable=False),  # key alias, e.g. "openai#1"
    sa.Column("endpoint", sa.String(100), nullable=False),
    sa.Column("status", sa.Integer(), nullable=False),
    # A row stands for every request of one key, model, upstream key, endpoint and status
    # that one flush of the meter wrote: metering writes per interval, not per request.
    sa.Column("requests", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("prompt_tokens", sa.Integer(), nullable=False),
    sa.Column("completion_tokens", sa.Integer(), nullable=False),
    sa.Column("total_tokens", sa.Integer(), nullable=False),
    sa.Column("cost", sa.Float(), nullable=True),  # USD; NULL when the price is unknown
    sa.Column("latency_ms", sa.Integer(), nullable=False),  # summed over the row's requests
    # Every usage query is "this key since then": one composite index serves it, and serves
    # lookups by key_id alone. created_at alone is for pruning old events across all keys.
    sa.Index("ix_usage_events_key_id_created_at", "key_id", "created_at"),
    sa.Index("ix_usage_events_created_at", "created_at"),
)


# Who owns each object the proxy handed out an id for, and which upstream key holds it
# upstream (DESIGN §3.8). Rows are written once and never changed.
stored_objects = sa.Table(
    "stored_objects",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),  # "response", "file", "batch"...
    sa.Column("object_id", sa.String(256), primary_key=True),  # the upstream's id
    sa.Column("owner_key_id", sa.String(32), sa.ForeignKey("client_keys.id"), nullable=False),
    sa.Column("upstream", sa.String(100), nullable=False),  # the upstream's configured name
    sa.Column("upstream_alias", sa.String(100), nullable=False),  # its key, e.g. "openai#2"
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # When its usage was metered (a batch's, once, whichever replica first saw it finished).
    sa.Column("settled_at", UTCDateTime(), nullable=True),
    # For the list endpoints, which show a key its own objects only, newest first.
    sa.Index(
        "ix_stored_objects_owner_key_id_kind_created_at", "owner_key_id", "kind", "created_at"
    ),
)


def _usage_sums(name: str, *groups: sa.Column[Any], **options: Any) -> sa.Table:
    """A table of usage summed per ``groups`` (its primary key), kept with every write of
    usage_events: reports over weeks read a few rows per day instead of every event."""
    return sa.Table(
        name,
        metadata,
        *groups,
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        **options,
    )


# Per UTC day ("2026-11-30") and client key, for the report by key. Day first, so a report reads
# its days only however long the history; without a rowid on SQLite, so that range is read in
# the primary key's order with no second lookup per row.
usage_key_days = _usage_sums(
    "usage_key_days",
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("key_id", sa.String(32), primary_key=True),
    sqlite_with_rowid=False,
)

# Per week (the date of its Monday, UTC) and client key: a report by key over a month reads the
# weeks it covers whole from here, its first and last few days from usage_key_days, so about
# half the rows (a key used on several days of a week has one row for them). Laid out as above.
usage_key_weeks = _usage_sums(
    "usage_key_weeks",
    sa.Column("week", sa.String(10), primary_key=True),
    sa.Column("key_id", sa.String(32), primary_key=True),
    sqlite_with_rowid=False,
)
# The keys with the most tokens in a week, read from the top: the report by key reads only the
# keys that can be among its largest (usage_queries._candidates).
sa.Index(
    "ix_usage_key_weeks_week_total_tokens", usage_key_weeks.c.week, usage_key_weeks.c.total_tokens
)

# Per UTC day, model and upstream key, every client key together: the reports by day, model and
# upstream key read a few rows per day.
usage_day_totals = _usage_sums(
    "usage_day_totals",
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("upstream", sa.String(100), primary_key=True),
)

# The console's sign-ins (DESIGN §3.9): only a hash of the session id is stored, so a copy of
# the database opens no session; every replica shares the table, so any of them serves a session.
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),  # sha256 hex of the cookie's value
    sa.Column("created_at", UTCDateTime(), nullable=False),  # for the absolute expiry
    sa.Column("seen_at", UTCDateTime(), nullable=False),  # for the idle expiry
    sa.Column("address", sa.String(64), nullable=False),  # where it signed in from
    sa.Index("ix_console_sessions_seen_at", "seen_at"),  # sweeping idle sessions
)

# Every admin action, from the console, the admin API or the CLI: never a secret.
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", _EventId, primary_key=True, autoincrement=True),  # newest first = id desc
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),  # "console:<session>", "api", "cli"
    sa.Column("action", sa.String(64), nullable=False),  # "key.create", "login.failed"...
    sa.Column("target", sa.String(200), nullable=True),  # a key id, an upstream alias
    sa.Column("address", sa.String(64), nullable=True),  # the request's source address
    sa.Column("detail", sa.Text(), nullable=True),  # e.g. which fields changed, never values
)

# Owners (Discord users) the operator blocked from self-service.
blocked_owners = sa.Table(
    "blocked_owners",
    metadata,
    sa.Column("owner", sa.String(100), primary_key=True),
    sa.Column("blocked_at", UTCDateTime(), nullable=False),
)

# Interaction ids already answered, so a replayed signed request is refused on every replica.
# Rows older than the freshness window are pruned: a request that old is refused anyway.
seen_interactions = sa.Table(
    "seen_interactions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("seen_at", UTCDateTime(), nullable=False, index=True),
)


# Sessions of the key holders' page: the random id is in the holder's cookie, only its hash here.
holder_sessions = sa.Table(
    "holder_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),  # sha256 hex of the session id
    sa.Column("key_id", sa.String(32), sa.ForeignKey("client_keys.id"), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
)


def aware_utc(value: datetime, param: str) -> datetime:
    """``value`` in UTC; a naive datetime is refused, being ambiguous (local time? UTC?).

    The store checks its arguments with this before any SQL runs, so the mistake is a
    ``ValueError`` at its caller rather than a database error.
    """
    if value.tzinfo is None:
        raise ValueError(f"{param} must be a timezone-aware datetime")
    return value.astimezone(UTC)
