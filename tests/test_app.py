"""The app factory: the parts chosen from settings, one state per app, routes wrapped so every
answer (even aiohttp's own) is OpenAI's envelope, and everything closed at shutdown."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from chatgpt_proxy.keystore import KeyStore
from chatgpt_proxy.limits.fallback import FallbackLimiter
from chatgpt_proxy.limits.memory import MemoryLimiter
from harness import Proxy
from services import redis_url


def test_without_redis_every_part_is_local(make_proxy: Callable[..., Proxy]) -> None:
    state = make_proxy().state
    assert isinstance(state.limiter, MemoryLimiter)
    assert state.redis is None and state.shared is None
    assert state.ready
    assert state.access_log is not None  # on by default


def test_with_redis_limits_and_states_are_shared(make_proxy: Callable[..., Proxy]) -> None:
    prefix = f"cgp-test:{secrets.token_hex(4)}:"
    state = make_proxy(redis_url=redis_url(), limits={"redis_prefix": prefix}).state
    assert isinstance(state.limiter, FallbackLimiter)
    assert state.redis is not None and state.shared is not None


def test_the_access_log_can_be_turned_off(make_proxy: Callable[..., Proxy]) -> None:
    assert make_proxy(server={"access_log": False}).state.access_log is None


def test_two_apps_share_nothing(make_proxy: Callable[..., Proxy]) -> None:
    first, second = make_proxy(), make_proxy()
    assert first.state is not second.state
    assert first.state.keys is not second.state.keys
    assert first.state.request_ids is not second.state.request_ids


def test_routing_misses_are_answered_in_the_envelope(proxy: Proxy) -> None:
    http = proxy.http()
    missing = http.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_url"
    wrong_method = http.put(
        "/v1/chat/completions", headers={"Authorization": f"Bearer {proxy.key}"}
    )
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()["error"]) == {"message", "type", "param", "code"}
    assert wrong_method.headers["x-request-id"].startswith("req_")


def test_shutdown_writes_what_the_meter_holds_and_stops_being_ready(
    make_proxy: Callable[..., Proxy],
) -> None:
    proxy = make_proxy()
    state = proxy.state
    proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    proxy.close()
    assert not state.ready

    async def written() -> int:
        async with await KeyStore.open(state.settings.database_url) as store:
            tokens, _ = await store.usage.totals(proxy.key_id)
            return tokens

    assert proxy.loop.run(written()) > 0
