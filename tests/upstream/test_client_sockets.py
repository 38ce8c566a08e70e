"""The upstream client against the fake upstream: a key's failure is retried on another key,
the client's own mistake is passed on as it is, and what no key can answer becomes the
project's own error, never naming a key."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.errors import NoUpstreamKeys, ProxyError, UpstreamRateLimited, UpstreamTimeout
from chatgpt_proxy.upstream.client import Outbound, Reply
from fake_openai import FAKE_KEYS, FakeOpenAI
from harness import Proxy

KEY1, KEY2 = FAKE_KEYS[0], FAKE_KEYS[1]
JSON = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


def _chat(text: str = "hi") -> Outbound:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
    return Outbound("POST", "/chat/completions", "", JSON, body, model="gpt-4o-mini")


def _send(proxy: Proxy, outbound: Outbound) -> tuple[Reply, bytes]:
    async def send() -> tuple[Reply, bytes]:
        reply = await proxy.state.client.send(proxy.state.router.upstreams[0], outbound)
        try:
            return reply, await reply.read()
        finally:
            reply.close()

    return proxy.loop.run(send())


def _error(proxy: Proxy, outbound: Outbound) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        _send(proxy, outbound)
    for secret in FAKE_KEYS:
        assert secret not in caught.value.message
    return caught.value


def test_a_failing_key_is_retried_on_another(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.script_key(KEY1, "server_error")
    for _ in range(2):
        reply, body = _send(proxy, _chat())
        assert reply.response.status == 200 and reply.alias == "openai#2"
        assert orjson.loads(body)["object"] == "chat.completion"
    assert KEY1 in fake.keys_used()  # it was tried, and failed over


def test_the_clients_own_mistake_is_passed_on_without_a_retry(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    reply, body = _send(proxy, _chat("[[fault:nosuchfault]]"))
    assert reply.response.status == 400 and reply.attempts == 1
    assert "error" in orjson.loads(body)
    assert fake.count("/v1/chat/completions") == 1


def test_when_every_key_is_cooling_the_client_is_told_when_to_retry(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    for key in (KEY1, KEY2):
        fake.script_key(key, "rate_limit", retry_after=30)
    error = _error(proxy, _chat())
    assert isinstance(error, UpstreamRateLimited)
    assert 0 < float(error.headers["retry-after"]) <= 30


def test_when_every_key_is_retired_there_is_no_key_to_try(proxy: Proxy, fake: FakeOpenAI) -> None:
    for key in (KEY1, KEY2):
        fake.script_key(key, "invalid")
    assert isinstance(_error(proxy, _chat()), NoUpstreamKeys)


def test_an_upstream_silent_past_the_first_byte_limit_is_a_timeout(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(timeouts={"first_byte": 0.2}, retries={"max_attempts": 1})
    fake.script_key(KEY1, "hang")
    fake.script_key(KEY2, "hang")
    assert isinstance(_error(proxy, _chat()), UpstreamTimeout)
