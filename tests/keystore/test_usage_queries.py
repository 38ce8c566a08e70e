"""The usage statements: rows made storable, sums per UTC day and model, totals since a time."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from chatgpt_proxy.keystore.schema import metadata, usage_events
from chatgpt_proxy.keystore.text import REPLACEMENT
from chatgpt_proxy.keystore.usage_queries import (
    event_rows,
    summary_query,
    summary_rows,
    totals_query,
)
from chatgpt_proxy.keystore.values import UsageEvent, UsageRow

INT32_MAX = 2**31 - 1


BASE = UsageEvent(
    key_id="key_1",
    model="gpt-4o-mini",
    upstream="openai#1",
    endpoint="chat.completions",
    status=200,
    prompt_tokens=3,
    completion_tokens=4,
    total_tokens=7,
    latency_ms=12,
    cost=0.5,
    created_at=datetime(2026, 1, 2, 23, 59, tzinfo=UTC),
)


def _event(**changes: Any) -> UsageEvent:
    return dataclasses.replace(BASE, **changes)


def test_rows_are_clipped_cleaned_and_kept_in_range() -> None:
    [row] = event_rows(
        [_event(model="m\x00" + "x" * 300, total_tokens=2**40, latency_ms=-5, cost=math.nan)]
    )
    assert row["model"] == "m" + REPLACEMENT + "x" * 198
    assert row["total_tokens"] == INT32_MAX
    assert row["latency_ms"] == 0
    assert row["cost"] is None  # NaN would poison sums on PostgreSQL
    assert row["requests"] == 1


def _database() -> sa.Engine:
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    return engine


def test_summaries_are_per_utc_day_and_model_and_totals_since_a_time() -> None:
    engine = _database()
    events = [
        _event(),
        _event(cost=None),  # an unknown price counts as zero
        _event(model="gpt-4o", created_at=datetime(2026, 1, 3, 0, 1, tzinfo=UTC)),
        _event(key_id="key_2"),
    ]
    with engine.begin() as connection:
        connection.execute(usage_events.insert(), event_rows(events))
        rows = summary_rows(list(connection.execute(summary_query("sqlite", "key_1", None))))
        later = summary_query("sqlite", "key_1", date(2026, 1, 3))
        since_third = summary_rows(list(connection.execute(later)))
        total = connection.execute(totals_query("key_1", None)).one()
        recent = connection.execute(totals_query("key_1", datetime(2026, 1, 3, tzinfo=UTC))).one()
    assert rows == [
        UsageRow(date(2026, 1, 2), "gpt-4o-mini", 2, 6, 8, 14, 0.5),
        UsageRow(date(2026, 1, 3), "gpt-4o", 1, 3, 4, 7, 0.5),
    ]
    assert since_third == rows[1:]
    assert tuple(total) == (21, 1.0)
    assert tuple(recent) == (7, 0.5)
