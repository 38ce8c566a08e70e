"""``selfservice/standing.py``: a key's usage today and this month, and what its daily budgets
leave, from usage recorded in a real store (SQLite); also as the lines of ``/usage``."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest

from chatgpt_proxy.keystore import ClientKey, KeyPolicy, KeyStore, UsageEvent, UsageRow
from chatgpt_proxy.selfservice.standing import Standing, Totals

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
EXPIRES = datetime(2099, 1, 1, tzinfo=UTC)


def event(
    key: ClientKey, when: datetime, model: str, tokens: int, cost: float | None
) -> UsageEvent:
    return UsageEvent(
        key_id=key.id,
        model=model,
        upstream="openai#1",
        endpoint="/v1/chat/completions",
        status=200,
        prompt_tokens=tokens // 2,
        completion_tokens=tokens - tokens // 2,
        total_tokens=tokens,
        latency_ms=5,
        cost=cost,
        created_at=when,
    )


def standing_of(url: str, policy: KeyPolicy, expires: datetime | None = None) -> Standing:
    """A key with ``policy``, its usage this month, today, and last month, and its standing."""

    async def main() -> Standing:
        async with await KeyStore.open(url) as store:
            await store.migrate()
            key, _ = await store.create("member", policy, expires)
            refused = await store.usage.record(
                [
                    event(key, datetime(2026, 10, 31, 23, 59, tzinfo=UTC), "gpt-4o", 1000, 1.0),
                    event(key, datetime(2026, 11, 1, 0, 0, tzinfo=UTC), "gpt-4o", 400, 0.04),
                    event(key, datetime(2026, 11, 15, 0, 0, tzinfo=UTC), "gpt-4o", 100, 0.01),
                    event(key, datetime(2026, 11, 15, 11, 0, tzinfo=UTC), "gpt-4o", 20, 0.002),
                    event(key, datetime(2026, 11, 15, 11, 30, tzinfo=UTC), "o-mini", 30, None),
                ]
            )
            assert refused == []
            return await Standing.of(store, key, NOW)

    return asyncio.run(main())


def test_today_and_this_month_are_summed_last_month_left_out(sqlite_database_url: str) -> None:
    standing = standing_of(sqlite_database_url, KeyPolicy())
    assert standing.today == Totals(requests=3, total_tokens=150, cost=pytest.approx(0.012))
    assert standing.month == Totals(requests=4, total_tokens=550, cost=pytest.approx(0.052))
    assert [(row.day, row.model, row.requests) for row in standing.rows] == [
        (date(2026, 11, 1), "gpt-4o", 1),
        (date(2026, 11, 15), "gpt-4o", 2),
        (date(2026, 11, 15), "o-mini", 1),
    ]


def test_what_the_daily_budgets_leave(sqlite_database_url: str) -> None:
    within = standing_of(
        sqlite_database_url, KeyPolicy(daily_token_budget=1000, daily_cost_budget=0.5)
    )
    assert within.left_today() == {"total_tokens": 850, "cost": pytest.approx(0.488)}


def test_an_overspent_budget_leaves_nothing_not_less(sqlite_database_url: str) -> None:
    over = standing_of(
        sqlite_database_url, KeyPolicy(daily_token_budget=100, daily_cost_budget=0.001)
    )
    assert over.left_today() == {"total_tokens": 0, "cost": 0.0}


def test_no_budget_leaves_none(sqlite_database_url: str) -> None:
    assert standing_of(sqlite_database_url, KeyPolicy()).left_today() == {
        "total_tokens": None,
        "cost": None,
    }


def test_to_dict_shows_the_key_without_its_hash(sqlite_database_url: str) -> None:
    standing = standing_of(sqlite_database_url, KeyPolicy(daily_token_budget=1000))
    document = standing.to_dict()
    assert set(document) == {"key", "today", "month", "left_today"}
    assert document["key"]["id"] == standing.key.id and "key_hash" not in document["key"]
    assert standing.key.key_hash not in str(document)
    assert document["today"] == {"requests": 3, "total_tokens": 150, "cost": pytest.approx(0.012)}
    assert document["month"]["total_tokens"] == 550
    assert document["left_today"]["total_tokens"] == 850


def test_the_summary_lists_usage_limits_models_and_expiry(sqlite_database_url: str) -> None:
    policy = KeyPolicy(rpm=20, tpm=40_000, daily_token_budget=1000, models=("gpt-4o*", "o-*"))
    standing = standing_of(sqlite_database_url, policy, EXPIRES)
    assert standing.summary().splitlines() == [
        f"Key `{standing.key.prefix}...` (active)",
        "Today: 3 requests, 150 tokens",
        "This month: 4 requests, 550 tokens",
        "Left today: 850 of 1000 tokens",
        "Limits: 20 requests/min, 40000 tokens/min",
        "Models: gpt-4o*, o-*",
        "Expires: 2099-01-01 00:00 UTC",
    ]


def test_the_summary_leaves_out_what_the_key_has_not(sqlite_database_url: str) -> None:
    standing = standing_of(sqlite_database_url, KeyPolicy(tpm=500))
    lines = standing.summary().splitlines()
    assert lines[3:] == ["Limits: 500 tokens/min"]


def test_totals_of_no_rows_are_zero() -> None:
    assert Totals.of([]) == Totals(0, 0, 0.0)
    row = UsageRow(date(2026, 11, 15), "gpt-4o", 2, 1, 2, 3, 0.5)
    assert Totals.of([row, row]).to_dict() == {"requests": 4, "total_tokens": 6, "cost": 1.0}
