"""Background work survives any exception: it is logged, counted by task, and goes on."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatgpt_proxy.errors import StoreUnavailable
from chatgpt_proxy.keystore import ClientKey, KeyPolicy
from chatgpt_proxy.periodic import Periodic, TaskErrors
from harness import Proxy
from servers import wait_for, wait_for_async
from services import redis_url

DEADLINE_S = 10.0


def test_a_task_goes_on_after_any_exception(caplog: pytest.LogCaptureFixture) -> None:
    failures: list[BaseException] = [RuntimeError("a bug"), KeyError("x"), StoreUnavailable("db")]
    runs: list[int] = []

    async def work() -> None:
        if failures:
            raise failures.pop(0)
        runs.append(1)

    async def scenario() -> TaskErrors:
        errors = TaskErrors()
        periodic = Periodic("testing", 0.01, work, errors=errors)
        periodic.start()
        await wait_for_async(lambda: runs, DEADLINE_S, "the task stopped at its first exception")
        await periodic.stop()
        return errors

    with caplog.at_level(logging.INFO, logger="chatgpt_proxy.periodic"):
        errors = asyncio.run(scenario())
    assert runs, "the task stopped at its first unexpected exception"
    assert errors.counts == {"testing": 3}
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 1  # once per streak of failures, not once per run
    assert failed[0].exc_info is not None  # a bug is logged with its traceback
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_a_stopped_task_stops_even_while_failing() -> None:
    async def work() -> None:
        raise RuntimeError("always")

    async def scenario() -> None:
        periodic = Periodic("testing", 0.001, work)
        periodic.start()
        await wait_for_async(lambda: periodic.errors.counts.get("testing"), DEADLINE_S)
        await asyncio.wait_for(periodic.stop(), DEADLINE_S)
        assert periodic.errors.counts["testing"] >= 1

    asyncio.run(scenario())


def _background_errors(proxy: Proxy) -> dict[str, float]:
    text = proxy.http().get("/metrics").text
    return {
        sample.labels["task"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "chatgpt_proxy_background_errors_total"
    }


def test_key_refresh_goes_on_after_a_store_bug(proxy: Proxy) -> None:
    store = proxy.state.store
    original = store.changed_since
    calls: list[int] = []

    async def once_broken(since: datetime | None) -> list[ClientKey]:
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("not a ProxyError")
        return await original(since)

    store.changed_since = once_broken  # type: ignore[method-assign]
    try:
        # Made behind the cache's back: only the refresh loop can bring it in.
        _, secret = proxy.loop.run(store.create("later", KeyPolicy()))
        auth = {"Authorization": f"Bearer {secret}"}
        wait_for(
            lambda: proxy.http().get("/v1/models", headers=auth).status_code == 200,
            DEADLINE_S,
            "the refresh loop never brought the key in",
        )
        assert len(calls) >= 2
        assert _background_errors(proxy)["refreshing client keys"] == 1
    finally:
        store.changed_since = original  # type: ignore[method-assign]


def test_sharing_upstream_key_states_goes_on_after_a_bug(make_proxy: Callable[..., Proxy]) -> None:
    prefix = f"cgp-test:{secrets.token_hex(4)}:"
    proxy = make_proxy(redis_url=redis_url(), limits={"redis_prefix": prefix})
    shared = proxy.state.shared
    assert shared is not None
    original = shared._changes
    calls: list[int] = []

    def once_broken() -> list[dict[str, Any]]:
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("a bug")
        return original()

    shared._changes = once_broken  # type: ignore[method-assign]
    wait_for(lambda: len(calls) >= 3, DEADLINE_S, "the watcher stopped at its first exception")
    assert _background_errors(proxy)["sharing upstream key states"] == 1
