"""Limits and metering through the proxy, with the official SDK, in memory and in Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from chatgpt_proxy.keystore import KeyPolicy, KeyStore
from fake_openai import FakeOpenAI
from harness import ADMIN_KEY, Proxy

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "say hello to me"}]  # 4 words; the fake replies 4 more


def _chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, **extra
    )


def _create(proxy: Proxy, **fields: Any) -> dict[str, Any]:
    answer = proxy.http().post("/admin/keys", json={"name": "limited", **fields}, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def _usage(proxy: Proxy, key_id: str) -> list[dict[str, Any]]:
    proxy.loop.run(proxy.state.meter.flush())
    answer = proxy.http().get(f"/admin/keys/{key_id}/usage", headers=ADMIN)
    assert answer.status_code == 200
    rows: list[dict[str, Any]] = answer.json()["data"]
    return rows


def test_rpm_answers_429_with_retry_after_and_headers_on_every_answer(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy()
    client = proxy.client(proxy.create_key("limited", KeyPolicy(rpm=2, tpm=10_000)))
    first = _chat(client)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert _chat(client).headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as caught:
        _chat(client)
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert 1 <= int(error.response.headers["retry-after"]) <= 60
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_key_without_limits_gets_no_rate_limit_headers(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy()
    headers = _chat(proxy.client()).headers
    assert not [name for name in headers if name.startswith("x-ratelimit")]


def test_a_spent_budget_answers_insufficient_quota(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy()
    client = proxy.client(proxy.create_key("budget", KeyPolicy(daily_token_budget=10)))
    _chat(client)  # 8 tokens: some left
    _chat(client)  # 16: spent
    with pytest.raises(openai.RateLimitError) as caught:
        _chat(client)
    assert caught.value.code == "insufficient_quota"


def test_new_keys_get_the_configured_defaults_and_null_clears_one(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(limits={"default_rpm": 7, "default_models": ["gpt-4o*"]})
    assert _create(proxy)["rpm"] == 7
    assert _create(proxy)["models"] == ["gpt-4o*"]
    assert _create(proxy, rpm=3)["rpm"] == 3
    assert _create(proxy, rpm=None)["rpm"] is None


def test_a_changed_limit_applies_at_once(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy()
    created = _create(proxy, rpm=1)
    client = proxy.client(created["key"])
    _chat(client)
    with pytest.raises(openai.RateLimitError):
        _chat(client)
    answer = proxy.http().patch(f"/admin/keys/{created['id']}", json={"rpm": 3}, headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["rpm"] == 3
    assert _chat(client).headers["x-ratelimit-remaining-requests"] == "1"


def test_priced_usage_is_recorded_with_its_cost_and_cost_budgets_hold(
    start_proxy: Callable[..., Proxy],
) -> None:
    # 1 USD per 1M prompt tokens, 2 per 1M completion tokens: a HELLO costs 4e-6 + 8e-6.
    proxy = start_proxy(pricing={"gpt-4o-mini*": {"prompt": 1.0, "completion": 2.0}})
    created = _create(proxy, total_cost_budget=0.00002)
    client = proxy.client(created["key"])
    _chat(client)
    _chat(client)  # 2.4e-5 spent
    with pytest.raises(openai.RateLimitError) as caught:
        _chat(client)
    assert caught.value.code == "insufficient_quota"
    [row] = _usage(proxy, created["id"])
    assert row["requests"] == 2 and row["total_tokens"] == 16
    assert row["cost"] == pytest.approx(2 * 12e-6)


def test_streams_are_metered_and_the_usage_chunk_asked_for_is_hidden(
    start_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = start_proxy()
    created = _create(proxy, tpm=10_000)
    client = proxy.client(created["key"])
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    assert all(chunk.usage is None for chunk in chunks) and chunks[-1].choices
    assert fake.last("/v1/chat/completions").json()["stream_options"] == {"include_usage": True}
    asked = list(
        client.chat.completions.create(
            model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert asked[-1].usage is not None and asked[-1].usage.total_tokens == 8
    rows = {row["model"]: row for row in _usage(proxy, created["id"])}
    assert {model: row["total_tokens"] for model, row in rows.items()} == {
        "gpt-4o": 8,
        "gpt-4o-mini": 8,
    }
    assert rows["gpt-4o"]["prompt_tokens"] == 4 and rows["gpt-4o"]["completion_tokens"] == 4


def test_usage_is_written_on_a_clean_shutdown(
    start_proxy: Callable[..., Proxy], database_url: str
) -> None:
    proxy = start_proxy()
    created = _create(proxy, rpm=100)
    client = proxy.client(created["key"])
    for _ in range(3):
        _chat(client)
    proxy.close()  # before the meter's next batch

    async def totals() -> tuple[int, float]:
        async with await KeyStore.open(database_url) as store:
            return await store.usage.totals(created["id"])

    assert proxy.loop.run(totals()) == (24, 0.0)
