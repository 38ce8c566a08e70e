"""What the console keeps in the key store, on SQLite and PostgreSQL: sessions (hashed),
the audit log (newest first, keyset paged), key pages (searched, sorted) and usage reports."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from chatgpt_proxy.keystore import KeyPolicy, KeyStore, UsageEvent
from chatgpt_proxy.keystore.schema import (
    client_keys,
    usage_day_totals,
    usage_events,
    usage_key_days,
    usage_key_weeks,
)
from chatgpt_proxy.keystore.usage_queries import week_of
from stores import migrate_to, migrated

LONG = timedelta(hours=1)


def test_key_pages_are_searched_and_sorted_in_the_database(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            for name in ("beta", "Alpha", "gamma_1", "gamma%2"):
                await store.create(name, KeyPolicy())
            keys, total = await store.page(sort="name", descending=False, limit=2)
            assert total == 4 and [k.name for k in keys] == ["Alpha", "beta"]
            keys, total = await store.page(search="ALPHA")
            assert total == 1 and keys[0].name == "Alpha"
            keys, total = await store.page(search="a_1")
            assert total == 1 and keys[0].name == "gamma_1"
            keys, total = await store.page(search="%")
            assert total == 1
            keys, _ = await store.page(search=keys[0].prefix)
            assert [k.name for k in keys] == ["gamma%2"]
            keys, total = await store.page(offset=3, limit=2, sort="no_such_column")
            assert total == 4 and len(keys) == 1

    asyncio.run(scenario())


def test_usage_reports_group_by_day_model_and_key(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            key, _ = await store.create("k", KeyPolicy())
            now = datetime.now(UTC)
            base = {"key_id": key.id, "upstream": "openai#1", "endpoint": "chat.completions"}
            await store.usage.record(
                [
                    UsageEvent(
                        **base,
                        model="a",
                        status=200,
                        prompt_tokens=1,
                        completion_tokens=2,
                        total_tokens=3,
                        latency_ms=10,
                        cost=0.25,
                        created_at=now,
                    ),
                    UsageEvent(
                        **base,
                        model="b",
                        status=502,
                        prompt_tokens=0,
                        completion_tokens=0,
                        total_tokens=0,
                        latency_ms=5,
                        created_at=now,
                        requests=2,
                    ),
                    UsageEvent(
                        **base,
                        model="a",
                        status=200,
                        prompt_tokens=1,
                        completion_tokens=1,
                        total_tokens=2,
                        latency_ms=1,
                        created_at=now - timedelta(days=3),
                    ),
                ]
            )
            today = now.date()
            [day] = await store.usage.report(today, today, "day")
            assert day["group"] == today.isoformat() and day["requests"] == 3
            models = await store.usage.report(today - timedelta(days=5), today, "model")
            assert [(r["group"], r["total_tokens"]) for r in models] == [("a", 5), ("b", 0)]
            [by_key] = await store.usage.report(today, today, "key")
            assert by_key["group"] == key.id and float(by_key["cost"]) == 0.25
            [by_upstream] = await store.usage.report(today, today, "upstream")
            assert by_upstream["group"] == "openai#1" and by_upstream["requests"] == 3
            # A second write adds to the day's sums; an event of an unknown key adds nothing.
            refused = await store.usage.record(
                [
                    UsageEvent(
                        **base,
                        model="a",
                        status=200,
                        prompt_tokens=1,
                        completion_tokens=1,
                        total_tokens=2,
                        latency_ms=1,
                        created_at=now,
                    ),
                    UsageEvent(
                        **{**base, "key_id": "key_nobody"},
                        model="a",
                        status=200,
                        prompt_tokens=9,
                        completion_tokens=9,
                        total_tokens=18,
                        latency_ms=1,
                        created_at=now,
                    ),
                ]
            )
            assert len(refused) == 1
            [day] = await store.usage.report(today, today, "day")
            assert (day["requests"], day["total_tokens"]) == (4, 5)
            minutes = await store.usage.by_minute(now - timedelta(minutes=5))
            assert [(m["requests"], m["errors"], m["tokens"]) for m in minutes] == [(4, 2, 5)]
            assert minutes[0]["minute"] == now.strftime("%Y-%m-%dT%H:%M")

    asyncio.run(scenario())


def test_migration_0003_sums_the_usage_recorded_before_it(database_url: str) -> None:
    async def scenario() -> None:
        async with await KeyStore.open(database_url) as store:
            await migrate_to(database_url, "0002")  # the schema before the console
            key_id = "key_0000000000000001"
            now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
            async with store._engine.begin() as conn:
                await conn.execute(
                    client_keys.insert().values(
                        id=key_id,
                        name="old",
                        key_hash="0" * 64,
                        prefix="pk-old",
                        created_at=now,
                        updated_at=now,
                    )
                )
                base = {
                    "key_id": key_id,
                    "upstream": "openai#1",
                    "endpoint": "chat",
                    "status": 200,
                    "prompt_tokens": 1,
                    "completion_tokens": 1,
                    "latency_ms": 1,
                }
                await conn.execute(
                    usage_events.insert(),
                    [
                        {
                            **base,
                            "model": "a",
                            "total_tokens": 2,
                            "requests": 1,
                            "cost": 0.5,
                            "created_at": now,
                        },
                        {
                            **base,
                            "model": "a",
                            "total_tokens": 3,
                            "requests": 2,
                            "cost": None,
                            "created_at": now + timedelta(minutes=10),
                        },
                        {
                            **base,
                            "model": "a",
                            "total_tokens": 7,
                            "requests": 1,
                            "cost": 0.25,
                            "created_at": now + timedelta(hours=1),
                        },  # the next UTC day
                    ],
                )
            await store.migrate()
            rows = await store.usage.report(now.date(), now.date() + timedelta(days=1), "day")
            assert [
                (r["group"], r["requests"], r["total_tokens"], float(r["cost"])) for r in rows
            ] == [
                ("2026-11-30", 3, 5, 0.5),
                ("2026-12-01", 1, 7, 0.25),
            ]

    asyncio.run(scenario())


async def _sums(store: KeyStore, table: sa.TableClause, groups: tuple[str, ...]) -> dict[Any, Any]:
    """``table``'s rows, and the same sums computed here from every row of usage_events."""
    async with store._engine.connect() as conn:
        events = (await conn.execute(sa.select(usage_events))).all()
        kept = (await conn.execute(sa.select(table))).all()
    expected: dict[tuple[str, ...], list[float]] = {}
    for event in events:
        day = event.created_at.date()
        values = {**event._mapping, "day": day.isoformat(), "week": week_of(day).isoformat()}
        sums = expected.setdefault(tuple(values[name] for name in groups), [0] * len(SUMS))
        for n, name in enumerate(SUMS):
            sums[n] += values[name] or 0
    found = {
        tuple(row._mapping[name] for name in groups): [row._mapping[name] for name in SUMS]
        for row in kept
    }
    assert found.keys() == expected.keys()
    for group, sums in expected.items():
        assert found[group][:-1] == sums[:-1], group
        assert float(found[group][-1]) == pytest.approx(sums[-1]), group
    return found


SUMS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost")
SUM_TABLES = (
    (usage_key_days, ("day", "key_id")),
    (usage_key_weeks, ("week", "key_id")),
    (usage_day_totals, ("day", "model", "upstream")),
)


def test_the_per_day_sums_stay_equal_to_the_sums_of_the_events(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            keys = [(await store.create(f"k{n}", KeyPolicy()))[0].id for n in range(3)]
            start = datetime(2026, 11, 29, 22, 0, tzinfo=UTC)  # two UTC days
            events = [
                UsageEvent(
                    key_id=keys[n % 3],
                    model=("a", "b")[n % 2],
                    upstream=f"openai#{n % 4}",
                    endpoint="chat.completions",
                    status=200,
                    prompt_tokens=n,
                    completion_tokens=2 * n,
                    total_tokens=3 * n,
                    latency_ms=1,
                    cost=None if n % 5 == 0 else n / 8,  # unknown prices count as zero
                    created_at=start + timedelta(minutes=7 * n),
                )
                for n in range(60)
            ]
            for batch in range(0, 60, 20):  # batches that add to the same sums
                assert not await store.usage.record(events[batch : batch + 20])
            # A batch with a row the database refuses: the others, one by one, still count.
            nobody = dataclasses.replace(events[1], key_id="key_nobody")
            assert await store.usage.record([events[2], nobody, events[3]]) == [nobody]
            for table, groups in SUM_TABLES:
                assert len(await _sums(store, table, groups)) > 2
            # The report reads them: the same totals by key as by day.
            since, until = start.date(), start.date() + timedelta(days=1)
            by_key = await store.usage.report(since, until, "key")
            by_day = await store.usage.report(since, until, "day")
            assert (
                sum(r["total_tokens"] for r in by_key)
                == sum(r["total_tokens"] for r in by_day)
                == sum(3 * n for n in range(60)) + 3 * (2 + 3)
            )

    asyncio.run(scenario())


def test_migration_0005_keeps_the_sums_both_ways(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            key, _ = await store.create("k", KeyPolicy())
            now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
            await store.usage.record(
                [
                    UsageEvent(
                        key_id=key.id,
                        model=model,
                        upstream="openai#1",
                        endpoint="chat.completions",
                        status=200,
                        prompt_tokens=1,
                        completion_tokens=1,
                        total_tokens=2,
                        latency_ms=1,
                        cost=0.25,
                        created_at=now + timedelta(minutes=minutes),
                    )
                    for model, minutes in (("a", 0), ("b", 10), ("a", 40))
                ]
            )
            await migrate_to(database_url, "0004", down=True)
            groups = ("day", "key_id", "model", "upstream")
            daily = sa.table("usage_daily", *(sa.column(name) for name in (*groups, *SUMS)))
            assert len(await _sums(store, daily, groups)) == 3  # summed again from the events
            await migrate_to(database_url, "head")
            counts = [len(await _sums(store, table, groups)) for table, groups in SUM_TABLES]
            # By key: 2 days, 1 week; by model and upstream: a and b, then a.
            assert counts == [2, 1, 3]

    asyncio.run(scenario())
