"""The usage ledger against real databases: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from chatgpt_proxy.keystore import KeyPolicy, UsageRow
from stores import migrated, usage_event


def test_usage_summary_and_totals(database_url: str) -> None:
    day1 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    # 01:30 at +03:00 is still 22:30 UTC on March 1st: days are UTC days.
    day1_elsewhere = datetime(2026, 3, 2, 1, 30, tzinfo=timezone(timedelta(hours=3)))
    day2 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)

    async def scenario() -> None:
        async with migrated(database_url) as store:
            key, _ = await store.create("ci", KeyPolicy())
            other, _ = await store.create("other", KeyPolicy())
            await store.usage.record([])  # a no-op, not an error
            await store.usage.record(
                [
                    usage_event(key.id, created_at=day1, model="gpt-4o"),
                    usage_event(key.id, created_at=day1_elsewhere, model="gpt-4o", cost=None),
                    usage_event(
                        key.id, created_at=day1, model="dall-e-3", total_tokens=0, cost=0.04
                    ),
                    usage_event(key.id, created_at=day2, model="gpt-4o", prompt_tokens=100),
                    usage_event(other.id, created_at=day2, model="gpt-4o", total_tokens=999),
                ]
            )
            summary = await store.usage.summary(key.id)
            assert summary == [
                UsageRow(date(2026, 3, 1), "dall-e-3", 1, 10, 5, 0, 0.04),
                UsageRow(date(2026, 3, 1), "gpt-4o", 2, 20, 10, 30, 0.25),
                UsageRow(date(2026, 3, 2), "gpt-4o", 1, 100, 5, 15, 0.25),
            ]
            assert await store.usage.summary(key.id, since=date(2026, 3, 2)) == summary[2:]
            assert await store.usage.summary(other.id, since=date(2026, 3, 3)) == []

            tokens, cost = await store.usage.totals(key.id)
            assert tokens == 45 and cost == pytest.approx(0.54)
            assert await store.usage.totals(key.id, since=day2) == (15, 0.25)
            assert await store.usage.totals("key_missing") == (0, 0.0)

    asyncio.run(scenario())


def test_usage_clips_oversized_client_text(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            key, _ = await store.create("ci", KeyPolicy())
            await store.usage.record([usage_event(key.id, model="m" * 5000), usage_event(key.id)])
            models = {row.model for row in await store.usage.summary(key.id)}
            assert models == {"m" * 200, "gpt-4o-mini"}  # the batch survived

    asyncio.run(scenario())


def test_usage_for_an_unknown_key_is_refused_and_the_rest_written(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            key, _ = await store.create("ci", KeyPolicy())
            missing = usage_event("key_missing")
            refused = await store.usage.record(
                [usage_event(key.id), missing, usage_event(key.id, model="b")]
            )
            assert refused == [missing]
            assert {row.model for row in await store.usage.summary(key.id)} == {"gpt-4o-mini", "b"}
            assert await store.usage.record([missing]) == [missing]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "gpt\x00-4o"},
        {"model": "\ud800lone surrogate"},
        {"model": "\x00" * 300},
        {"endpoint": "chat\x00" * 40, "upstream": "\udfff" * 120},
        {"prompt_tokens": 2**40, "total_tokens": 2**63, "latency_ms": -5},
        {"cost": float("nan")},
        {"cost": float("inf")},
    ],
    ids=["nul", "surrogate", "long-nul", "other-columns", "huge-ints", "nan-cost", "inf-cost"],
)
def test_usage_text_and_numbers_are_made_storable(
    database_url: str, changes: dict[str, Any]
) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            key, _ = await store.create("ci", KeyPolicy())
            assert (
                await store.usage.record([usage_event(key.id, **changes), usage_event(key.id)])
                == []
            )
            rows = await store.usage.summary(key.id)
            assert sum(row.requests for row in rows) == 2
            assert all("\x00" not in row.model and len(row.model) <= 200 for row in rows)
            tokens, cost = await store.usage.totals(key.id)
            assert 0 <= tokens < 2**33 and cost == cost  # not NaN

    asyncio.run(scenario())


def test_a_row_the_database_refuses_for_its_value_is_refused_alone(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the cleaning (as a future column or driver might be): the database's own verdict on
    # a value must still set that row aside, not fail the batch as if the database were down.
    monkeypatch.setattr("chatgpt_proxy.keystore.usage_queries.storable", lambda text, limit: text)

    async def scenario() -> None:
        async with migrated(database_url) as store:
            key, _ = await store.create("ci", KeyPolicy())
            bad = [
                usage_event(key.id, model="m" * 300),  # too long for PostgreSQL's column
                usage_event(key.id, model="nul\x00"),  # PostgreSQL refuses NUL
                usage_event(key.id, model="\ud800"),  # no driver can encode it
            ]
            refused = await store.usage.record(
                [usage_event(key.id), *bad, usage_event(key.id, model="b")]
            )
            assert all(e in bad for e in refused)
            if database_url.startswith("postgresql"):
                assert refused == bad
            models = {row.model for row in await store.usage.summary(key.id)}
            assert {"gpt-4o-mini", "b"} <= models

    asyncio.run(scenario())
