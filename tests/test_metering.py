"""Usage metering: one poisoned request never stops the usage of every other key being written."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatgpt_proxy.errors import StoreUnavailable
from chatgpt_proxy.keystore import KeyPolicy, KeyStore, UsageEvent
from chatgpt_proxy.metering import Meter
from fake_openai import FakeOpenAI
from harness import Proxy
from servers import wait_for

DEADLINE_S = 15.0


def _used(proxy: Proxy, key_id: str) -> int:
    tokens, _ = proxy.loop.run(proxy.state.store.usage.totals(key_id))
    return tokens


def _wait_for_usage(proxy: Proxy, key_id: str) -> int:
    """Poll the store until the background writer has written ``key_id``'s usage."""
    return wait_for(lambda: _used(proxy, key_id), DEADLINE_S, "the usage was never written")


@pytest.mark.parametrize(
    "model",
    ["gpt-4o\u0000mini", "\u0000", "gpt-4o-mini\x00\x01\x7f", "m" * 5000 + "\u0000"],
    ids=["nul-inside", "only-nul", "control-chars", "huge-with-nul"],
)
def test_a_nul_in_model_does_not_stop_metering_for_other_keys(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, database_url: str, model: str
) -> None:
    proxy = make_proxy(database_url=database_url)
    poisoned = proxy.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    assert poisoned.choices  # the fake answers any model
    other = proxy.create_key("bystander")
    other_id = proxy.loop.run(proxy.state.store.list())[-1].id
    proxy.client(key=other).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}]
    )
    assert _wait_for_usage(proxy, other_id) > 0
    # The poisoned request itself is metered too, under a storable model name.
    rows = proxy.loop.run(proxy.state.store.usage.summary(proxy.key_id))
    assert [row.requests for row in rows] == [1]
    assert "\x00" not in rows[0].model and len(rows[0].model) <= 200
    assert proxy.state.meter.pending == 0


def _failing_usage_writes(store: KeyStore) -> list[BaseException]:
    """Make the store's usage writes fail as told (the database away, or a bug): each exception
    put in the list returned is raised by one write, in turn."""
    failures: list[BaseException] = []
    record = store.usage.record

    async def flaky(events: Sequence[UsageEvent]) -> list[UsageEvent]:
        if failures:
            raise failures.pop(0)
        return await record(events)

    store.usage.record = flaky  # type: ignore[method-assign]
    return failures


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_written(
    database_url: str,
) -> None:
    async def scenario() -> None:
        async with await KeyStore.open(database_url) as store:
            await store.migrate()
            key, _ = await store.create("ci", KeyPolicy())
            meter = Meter(store, interval=3600)
            # A key the database does not know (deleted behind the proxy's back) is refused.
            meter.record("key_gone", "gpt-4o", "openai#1", "chat.completions", 200, None, None, 5)
            meter.record(key.id, "gpt-4o", "openai#1", "chat.completions", 200, None, None, 5)
            await meter.flush()
            assert meter.pending == 0
            assert meter.set_aside == 1 and meter.written == 1
            (row,) = await store.usage.summary(key.id)
            assert row.requests == 1
            await meter.close()

    asyncio.run(scenario())


def test_a_failing_writer_keeps_its_rows_and_shows_it(sqlite_database_url: str) -> None:
    async def scenario() -> None:
        async with await KeyStore.open(sqlite_database_url) as store:
            failures = _failing_usage_writes(store)
            await store.migrate()
            key, _ = await store.create("ci", KeyPolicy())
            meter = Meter(store, interval=3600)
            meter.record(key.id, "gpt-4o", "openai#1", "chat.completions", 200, None, None, 5)
            failures.extend(
                [StoreUnavailable("down"), RuntimeError("a bug"), StoreUnavailable("x")]
            )
            for _ in range(3):
                with pytest.raises((StoreUnavailable, RuntimeError)):
                    await meter.flush()
                assert meter.pending == 1  # kept for the next flush, whatever the failure
            assert meter.failed_flushes == 3 and meter.failing
            await meter.flush()
            assert meter.pending == 0 and not meter.failing
            assert (await store.usage.totals(key.id))[0] == 0  # no tokens, but one request
            (row,) = await store.usage.summary(key.id)
            assert row.requests == 1
            await meter.close()

    asyncio.run(scenario())


def _samples(proxy: Proxy) -> dict[str, float]:
    text = proxy.http().get("/metrics").text
    return {
        sample.name + "".join(f"[{v}]" for v in sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _poll(check: Callable[[], bool]) -> bool:
    return wait_for(check, DEADLINE_S)


def test_a_failing_usage_writer_shows_in_readyz_and_metrics(proxy: Proxy) -> None:
    store = proxy.state.store
    original = store.usage.record
    broken = [True]

    async def failing(events: Sequence[UsageEvent]) -> list[UsageEvent]:
        if broken[0]:
            raise RuntimeError("a bug in the writer")
        return await original(events)

    store.usage.record = failing  # type: ignore[method-assign]
    try:
        assert proxy.http().get("/readyz").status_code == 200
        proxy.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert _poll(lambda: proxy.http().get("/readyz").status_code == 503)
        problems = proxy.http().get("/readyz").json()["problems"]
        assert any("usage writer failing" in problem for problem in problems), problems
        samples = _samples(proxy)
        assert samples["chatgpt_proxy_usage_pending_requests"] == 1
        assert samples["chatgpt_proxy_usage_failed_flushes_total"] >= 3
        assert samples["chatgpt_proxy_background_errors_total[writing usage]"] >= 3
        broken[0] = False
        assert _poll(lambda: proxy.http().get("/readyz").status_code == 200)
        assert _used(proxy, proxy.key_id) > 0
        samples = _samples(proxy)
        assert samples["chatgpt_proxy_usage_pending_requests"] == 0
        assert samples["chatgpt_proxy_usage_written_requests_total"] == 1
        assert samples["chatgpt_proxy_usage_set_aside_rows_total"] == 0
    finally:
        store.usage.record = original  # type: ignore[method-assign]
