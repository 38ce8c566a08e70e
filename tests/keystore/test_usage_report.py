"""The usage report by key, on SQLite and PostgreSQL: read from per-week and per-day sums, it
must say what a plain sum of the events says, for any period, aligned to weeks or not."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from chatgpt_proxy.keystore import KeyPolicy, KeyStore, UsageEvent
from chatgpt_proxy.keystore.engine import create_engine
from chatgpt_proxy.keystore.schema import usage_key_days, usage_key_weeks
from chatgpt_proxy.keystore.usage_queries import report_query, week_of
from stores import migrate_to, migrated

SUMS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
FIRST = datetime(2026, 10, 20, 13, 0, tzinfo=UTC)  # a Tuesday; ~11 weeks, into 2027
SPAN_DAYS = 78


def _events(rng: random.Random, keys: list[str], count: int) -> list[UsageEvent]:
    return [
        UsageEvent(
            # A few keys make most of the traffic, as in life.
            key_id=keys[min(int(len(keys) ** rng.random()) - 1, len(keys) - 1)],
            model=rng.choice(("a", "b")),
            upstream="openai#1",
            endpoint="chat.completions",
            status=200,
            prompt_tokens=(prompt := rng.randrange(0, 50)),
            completion_tokens=(completion := rng.randrange(0, 50)),
            total_tokens=prompt + completion,
            latency_ms=1,
            cost=None if rng.random() < 0.1 else rng.randrange(1, 1000) / 1024,
            created_at=FIRST + timedelta(seconds=rng.randrange(SPAN_DAYS * 86400)),
            requests=rng.randrange(1, 4),
        )
        for _ in range(count)
    ]


def _expected(
    events: list[UsageEvent], since: date, until: date, limit: int = 1000
) -> list[dict[str, Any]]:
    """The report by key as a plain sum of the events: largest first, then by key id."""
    sums: dict[str, dict[str, Any]] = defaultdict(lambda: dict.fromkeys((*SUMS, "cost"), 0))
    for event in events:
        if since <= event.created_at.date() <= until:
            row = sums[event.key_id]
            for name in SUMS:
                row[name] += getattr(event, name)
            row["cost"] += event.cost or 0
    ordered = sorted(sums.items(), key=lambda item: (-item[1]["total_tokens"], item[0]))
    return [{"group": key_id, **row} for key_id, row in ordered][:limit]


def _periods(rng: random.Random) -> list[tuple[date, date]]:
    first = FIRST.date()
    monday = week_of(first) + timedelta(days=7)
    fixed = [
        (monday, monday + timedelta(days=6)),  # one week, whole
        (monday - timedelta(days=1), monday),  # a Sunday and a Monday: no whole week
        (monday, monday + timedelta(days=5)),  # within a week
        (monday + timedelta(days=1), monday + timedelta(days=14)),  # a day short at each end
        (monday - timedelta(days=1), monday + timedelta(days=14)),  # a day over at each end
        (date(2026, 12, 1), date(2026, 12, 30)),  # the console's "30 days", across a month
        (date(2026, 12, 28), date(2027, 1, 3)),  # a whole week across the new year
        (first - timedelta(days=40), first - timedelta(days=1)),  # before any usage
        (first - timedelta(days=3), first + timedelta(days=SPAN_DAYS + 3)),  # everything
    ]
    drawn = []
    for _ in range(25):
        since = first + timedelta(days=rng.randrange(-3, SPAN_DAYS))
        drawn.append((since, since + timedelta(days=rng.randrange(0, 45))))
    return fixed + drawn


def _comparable(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    # PostgreSQL sums integers as numeric (Decimal); the costs, floats, in another order.
    return [(row["group"], *(int(row[name]) for name in SUMS)) for row in rows]


def _same(found: list[dict[str, Any]], expected: list[dict[str, Any]], why: object) -> None:
    assert _comparable(found) == _comparable(expected), why
    for got, want in zip(found, expected, strict=True):
        assert float(got["cost"]) == pytest.approx(want["cost"]), why


def test_the_report_by_key_is_the_sum_of_the_events(database_url: str) -> None:
    rng = random.Random(12)

    async def scenario() -> None:
        async with migrated(database_url) as store:
            keys = [(await store.create(f"k{n}", KeyPolicy()))[0].id for n in range(40)]
            events = _events(rng, keys, 3000)
            for start in range(0, len(events), 250):  # batches that add to the same sums
                assert not await store.usage.record(events[start : start + 250])
            periods = _periods(rng)
            for since, until in periods:
                found = await store.usage.report(since, until, "key")
                _same(found, _expected(events, since, until), (since, until))
            # With the 1000 largest of 40 keys, every key is in; with the few largest, the
            # query reads only the keys that can be among them, and must find the same.
            engine = create_engine(database_url)
            try:
                async with engine.connect() as conn:
                    for (since, until), limit in itertools.product(periods, (1, 3, 10)):
                        query = report_query(since, until, "key", limit)
                        found = [dict(row._mapping) for row in await conn.execute(query)]
                        why = (since, until, limit)
                        _same(found, _expected(events, since, until, limit), why)
            finally:
                await engine.dispose()

    asyncio.run(scenario())


def test_migration_0007_sums_the_weeks_of_the_days_before_it(database_url: str) -> None:
    days = {
        "2026-11-29": 1,  # a Sunday
        "2026-11-30": 2,  # the Monday after it
        "2026-12-06": 4,  # the Sunday of that week
        "2026-12-28": 8,  # a Monday
        "2027-01-03": 16,  # its Sunday, in the next year
        "2027-01-04": 32,
    }
    rows = [
        {
            "day": day,
            "key_id": key_id,
            **{name: tokens * factor for name in SUMS},
            "cost": tokens / 4,
        }
        for day, tokens in days.items()
        for key_id, factor in (("key_a", 1), ("key_b", 100))
    ]
    expected: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0] * 5)
    for row in rows:
        week = week_of(date.fromisoformat(row["day"])).isoformat()
        for n, name in enumerate((*SUMS, "cost")):
            expected[week, row["key_id"]][n] += row[name]

    async def weeks(engine: sa.ext.asyncio.AsyncEngine) -> dict[tuple[str, str], list[float]]:
        async with engine.connect() as conn:
            found = (await conn.execute(sa.select(usage_key_weeks))).all()
        return {
            (row.week, row.key_id): [float(row._mapping[n]) for n in (*SUMS, "cost")]
            for row in found
        }

    async def scenario() -> None:
        async with await KeyStore.open(database_url) as store:
            await migrate_to(database_url, "0006")
            engine = create_engine(database_url)
            try:
                async with engine.begin() as conn:
                    await conn.execute(usage_key_days.insert(), rows)
                await store.migrate()
                assert await weeks(engine) == expected
                assert len(expected) == 8  # 4 weeks, 2 keys
                # Down drops the table, up sums it again.
                await migrate_to(database_url, "0006", down=True)
                await store.migrate()
                assert await weeks(engine) == expected
            finally:
                await engine.dispose()

    asyncio.run(scenario())
