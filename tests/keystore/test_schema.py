"""The schema: its tables, its constraint names, and datetimes that are UTC on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from chatgpt_proxy.keystore.schema import (
    VERSION_TABLE,
    UTCDateTime,
    aware_utc,
    metadata,
    usage_events,
)


def test_the_schema_names_its_tables_and_its_own_version_table() -> None:
    assert {"client_keys", "usage_events", "stored_objects"} <= set(metadata.tables)
    assert VERSION_TABLE != "alembic_version"  # a shared database may hold another app's
    indexes = {index.name for index in usage_events.indexes}
    assert "ix_usage_events_key_id_created_at" in indexes


def test_aware_times_are_converted_to_utc_and_naive_ones_refused() -> None:
    east = datetime(2026, 1, 2, 3, 0, tzinfo=timezone(timedelta(hours=2)))
    converted = aware_utc(east, "since")
    assert converted == east and converted.tzinfo is UTC and converted.hour == 1
    with pytest.raises(ValueError, match="since must be a timezone-aware"):
        aware_utc(datetime(2026, 1, 2), "since")


def test_datetimes_come_back_aware_and_utc_from_sqlite() -> None:
    table = sa.Table("moments", sa.MetaData(), sa.Column("at", UTCDateTime()))
    engine = sa.create_engine("sqlite://")
    table.metadata.create_all(engine)
    east = datetime(2026, 1, 2, 3, 0, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"at": east}, {"at": None}])
        stored = conn.execute(sa.text("SELECT at FROM moments")).scalars().all()
        back = conn.execute(sa.select(table.c.at)).scalars().all()
    assert stored[0].startswith("2026-01-02 01:00:00")  # naive UTC text: comparable as strings
    assert back == [east, None]
    assert back[0] is not None and back[0].tzinfo is UTC
