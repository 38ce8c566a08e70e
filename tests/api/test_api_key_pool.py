"""The upstream key pool seen from a client (DESIGN §4): cooling, retiring, retries, strategies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from chatgpt_proxy.upstream.pool import KeyState
from fake_openai import DEFAULT_REPLY, FAKE_KEYS, ORGANIZATION, REDIRECT_TARGET, FakeOpenAI
from harness import ADMIN_KEY, Proxy
from servers import wait_for

KEY1, KEY2 = FAKE_KEYS[0], FAKE_KEYS[1]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _chat(proxy: Proxy, text: str = "hi") -> str | None:
    completion = proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
    return completion.choices[0].message.content


def _post(proxy: Proxy, text: str = "hi") -> httpx2.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return proxy.http().post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {proxy.key}"}
    )


def _states(proxy: Proxy, upstream: int = 0) -> dict[str, Any]:
    return {s.alias: s for s in proxy.state.router.upstreams[upstream].pool.snapshot()}


def _admin_upstreams(proxy: Proxy) -> dict[str, dict[str, Any]]:
    answer = proxy.http().get("/admin/upstreams", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert answer.status_code == 200
    return {entry["alias"]: entry for entry in answer.json()["data"]}


def _upstream(fake: FakeOpenAI, keys: int = 2, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": "openai", "base_url": fake.base_url, "keys": list(FAKE_KEYS[:keys]), **extra}]


# ---------------------------------------------------------------- rate limits


def test_429_cools_the_key_and_the_request_succeeds_on_another(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    fake.script_key(KEY1, "rate_limit", retry_after=30)
    assert _chat(proxy) == DEFAULT_REPLY
    assert fake.keys_used() == [KEY1, KEY2]

    states = _states(proxy)
    assert states["openai#1"].state is KeyState.COOLING
    assert states["openai#1"].until is not None and 25 < states["openai#1"].until <= 30
    assert states["openai#2"].state is KeyState.ACTIVE

    admin = _admin_upstreams(proxy)
    assert admin["openai#1"]["state"] == "cooling"
    assert admin["openai#2"]["state"] == "active"
    assert KEY1 not in str(admin) and KEY2 not in str(admin)

    for _ in range(4):
        assert _chat(proxy) == DEFAULT_REPLY
    assert fake.keys_used()[2:] == [KEY2] * 4


def test_every_key_rate_limited_is_429_with_capped_retry_after(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    fake.script_key(KEY1, "rate_limit", retry_after=500)
    fake.script_key(KEY2, "rate_limit", retry_after=500)
    answer = _post(proxy)
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert error["code"] == "upstream_rate_limited"
    assert answer.headers["retry-after"] == "120"
    assert ORGANIZATION not in answer.text and "Rate limit reached for" not in answer.text
    assert {s.state for s in _states(proxy).values()} == {KeyState.COOLING}

    # While they cool, nothing goes upstream; the SDK sees a RateLimitError.
    before = fake.count("/v1/chat/completions")
    with pytest.raises(openai.RateLimitError) as caught:
        _chat(proxy)
    assert caught.value.code == "upstream_rate_limited"
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 120
    assert fake.count("/v1/chat/completions") == before


def test_short_retry_after_is_reported(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.script_key(KEY1, "rate_limit", retry_after=7)
    fake.script_key(KEY2, "rate_limit", retry_after=7)
    answer = _post(proxy)
    assert answer.status_code == 429
    assert 1 <= int(answer.headers["retry-after"]) <= 7


# ---------------------------------------------------------------- dead keys


@pytest.mark.parametrize(("fault", "reason"), [("invalid", "invalid"), ("no_quota", "no_quota")])
def test_dead_key_is_retired_and_the_request_succeeds(
    proxy: Proxy, fake: FakeOpenAI, fault: Any, reason: str
) -> None:
    fake.script_key(KEY1, fault)
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content == DEFAULT_REPLY
    assert fake.keys_used() == [KEY1, KEY2]
    status = _states(proxy)["openai#1"]
    assert status.state is KeyState.RETIRED and status.reason == reason
    admin = _admin_upstreams(proxy)["openai#1"]
    assert (admin["state"], admin["reason"]) == ("retired", reason)
    for _ in range(3):
        assert _chat(proxy) == DEFAULT_REPLY
    assert fake.keys_used()[2:] == [KEY2] * 3


def test_every_key_invalid_is_503_no_upstream_keys(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.script_key(KEY1, "invalid")
    fake.script_key(KEY2, "no_quota")
    answer = _post(proxy)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "no_upstream_keys"
    assert "Incorrect API key" not in answer.text and "sk-" not in answer.text
    with pytest.raises(openai.InternalServerError) as caught:
        _chat(proxy)
    assert caught.value.status_code == 503 and caught.value.code == "no_upstream_keys"
    assert {s.state for s in _states(proxy).values()} == {KeyState.RETIRED}


# ---------------------------------------------------------------- server errors


def test_one_500_is_retried(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.script_key(KEY1, "server_error", times=1)
    assert _chat(proxy) == DEFAULT_REPLY
    assert fake.keys_used() == [KEY1, KEY2]
    assert _states(proxy)["openai#1"].state is KeyState.ACTIVE  # one failure does not eject


def test_persistent_500_is_502(proxy: Proxy, fake: FakeOpenAI) -> None:
    answer = _post(proxy, "[[fault:500]]")
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "upstream_error" and error["type"] == "server_error"
    assert "Sorry about that" not in answer.text
    assert fake.count("/v1/chat/completions") == 2  # each key once


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
def test_attempts_are_bounded(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, max_attempts: int
) -> None:
    proxy = make_proxy(upstreams=_upstream(fake, keys=4), retries={"max_attempts": max_attempts})
    answer = _post(proxy, "[[fault:500]]")
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_error"
    assert fake.count("/v1/chat/completions") == max_attempts
    assert len(set(fake.keys_used())) == max_attempts  # never the same key twice


@pytest.mark.parametrize("fault", ["html", "redirect"])
def test_html_and_redirect_are_502_and_never_relayed(
    proxy: Proxy, fake: FakeOpenAI, fault: str
) -> None:
    http = proxy.http(follow_redirects=False)
    answer = http.post(
        "/v1/chat/completions",
        json={**CHAT, "messages": [{"role": "user", "content": f"[[fault:{fault}]]"}]},
        headers={"Authorization": f"Bearer {proxy.key}"},
    )
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_error"
    assert answer.headers["content-type"].startswith("application/json")
    assert "location" not in answer.headers
    for fragment in ("<html", "Gateway", "evil", REDIRECT_TARGET, "169.254"):
        assert fragment not in answer.text
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(proxy, f"[[fault:{fault}]]")
    assert caught.value.status_code == 502


@pytest.mark.parametrize("fault", ["html", "redirect"])
def test_html_and_redirect_on_one_key_are_retried(
    proxy: Proxy, fake: FakeOpenAI, fault: Any
) -> None:
    fake.script_key(KEY1, fault, times=1)
    assert _chat(proxy) == DEFAULT_REPLY
    assert fake.keys_used() == [KEY1, KEY2]


# ---------------------------------------------------------------- the client's own mistakes


def test_400_is_passed_through_without_penalty(proxy: Proxy, fake: FakeOpenAI) -> None:
    for _ in range(5):  # more than eject_after
        with pytest.raises(openai.BadRequestError) as caught:
            _chat(proxy, "[[fault:400]]")
        assert caught.value.body == {
            "message": "Invalid value for 'temperature': expected a number between 0 and 2.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_value",
        }
        assert caught.value.code == "invalid_value" and caught.value.param == "temperature"
    assert fake.count("/v1/chat/completions") == 5  # not retried
    for status in _states(proxy).values():
        assert status.state is KeyState.ACTIVE and status.failures == 0
    assert _chat(proxy) == DEFAULT_REPLY


def test_upstream_error_bodies_are_scrubbed_of_org_ids(proxy: Proxy, fake: FakeOpenAI) -> None:
    answer = _post(proxy, f"[[fault:slow:{ORGANIZATION}]]")  # echoed in the fake's 400
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert ORGANIZATION not in answer.text
    assert "org-***" in message and message.startswith("bad argument in")

    missing = proxy.http().get(
        "/v1/responses/proj_FAKEPROJ", headers={"Authorization": f"Bearer {proxy.key}"}
    )
    assert missing.status_code == 404
    assert "proj_FAKEPROJ" not in missing.text and "proj_***" in missing.text
    assert {s.state for s in _states(proxy).values()} == {KeyState.ACTIVE}


def test_404_from_upstream_is_passed_through(proxy: Proxy, fake: FakeOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        proxy.client().models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"
    assert fake.count("/v1/models/gpt-9") == 1
    assert {s.state for s in _states(proxy).values()} == {KeyState.ACTIVE}


# ---------------------------------------------------------------- strategies


def test_round_robin_alternates(make_proxy: Callable[..., Proxy], fake: FakeOpenAI) -> None:
    proxy = make_proxy(upstreams=_upstream(fake, strategy="round_robin"))
    for _ in range(6):
        _chat(proxy)
    assert fake.keys_used() == [KEY1, KEY2] * 3


def test_random_uses_every_key(make_proxy: Callable[..., Proxy], fake: FakeOpenAI) -> None:
    proxy = make_proxy(upstreams=_upstream(fake, keys=3, strategy="random"))
    assert proxy.state.router.upstreams[0].pool.strategy == "random"
    for _ in range(60):
        assert _chat(proxy) == DEFAULT_REPLY
    used = fake.keys_used()
    assert set(used) == set(FAKE_KEYS[:3])  # 3 * (2/3)**60: never all-but-one by chance
    assert used != [KEY1, KEY2, FAKE_KEYS[2]] * 20


@pytest.mark.parametrize(("strategy", "expected"), [("least_busy", 3), ("round_robin", 2)])
def test_least_busy_avoids_a_key_with_a_stream_in_flight(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, strategy: str, expected: int
) -> None:
    proxy = make_proxy(upstreams=_upstream(fake, strategy=strategy))
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "[[fault:slow:0.3]] [[fault:long:20]]"}],
        "stream": True,
    }
    http = proxy.http()
    with http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {proxy.key}"}
    ) as stream:
        chunks = stream.iter_raw()  # kept: a dropped iterator closes the stream
        next(chunks)  # the stream holds a key
        busy = fake.keys_used()[0]
        for _ in range(3):
            assert _chat(proxy) == DEFAULT_REPLY
        quick = fake.keys_used()[1:]
    idle = KEY2 if busy == KEY1 else KEY1
    assert quick.count(idle) == expected


@pytest.mark.parametrize(
    ("strategy", "refused"), [("least_headroom", False), ("round_robin", True)]
)
def test_least_headroom_sends_each_request_where_the_upstream_has_room(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, strategy: str, refused: bool
) -> None:
    # Three keys of 2, 6 and 4 requests a minute: twelve requests fit if each goes where there
    # is room, as the keys' own x-ratelimit-* headers tell; in turn, the first key overflows.
    limits = {FAKE_KEYS[0]: 2, FAKE_KEYS[1]: 6, FAKE_KEYS[2]: 4}
    for key, requests in limits.items():
        fake.limit_key(key, requests=requests, window=60)
    proxy = make_proxy(upstreams=_upstream(fake, keys=3, strategy=strategy))
    for _ in range(12):
        assert _chat(proxy) == DEFAULT_REPLY
    assert (fake.limited() > 0) is refused
    if not refused:
        used = Counter(fake.keys_used())
        assert used == limits
        rooms = [key.room for key in proxy.state.router.upstreams[0].pool.keys()]
        assert [room.requests.remaining if room.requests else None for room in rooms] == [0] * 3


def test_strategies_per_upstream(make_proxy: Callable[..., Proxy], fake: FakeOpenAI) -> None:
    proxy = make_proxy(
        upstreams=[
            {
                "name": "embed",
                "base_url": fake.base_url,
                "keys": [FAKE_KEYS[2], FAKE_KEYS[3]],
                "models": ["text-embedding-*"],
                "strategy": "least_busy",
            },
            {
                "name": "openai",
                "base_url": fake.base_url,
                "keys": [KEY1, KEY2],
                "strategy": "round_robin",
            },
        ]
    )
    pools = {u.name: u.pool.strategy for u in proxy.state.router.upstreams}
    assert pools == {"embed": "least_busy", "openai": "round_robin"}
    client = proxy.client()
    for _ in range(2):
        client.embeddings.create(model="text-embedding-3-small", input="x")
        _chat(proxy)
    assert [r.key for r in fake.requests_to("/v1/embeddings")] == [FAKE_KEYS[2], FAKE_KEYS[3]]
    assert [r.key for r in fake.requests_to("/v1/chat/completions")] == [KEY1, KEY2]
    assert set(_admin_upstreams(proxy)) == {"embed#1", "embed#2", "openai#1", "openai#2"}


# ---------------------------------------------------------------- the prober


def test_prober_readmits_a_recovered_key(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(pool={"probe_interval": 0.2})
    fake.script_key(KEY1, "invalid")
    assert _chat(proxy) == DEFAULT_REPLY
    assert _states(proxy)["openai#1"].state is KeyState.RETIRED

    wait_for(
        lambda: len([r for r in fake.requests_to("/v1/models") if r.key == KEY1]) >= 2,
        message="the prober never probed the retired key twice",
    )
    assert _states(proxy)["openai#1"].state is KeyState.RETIRED  # all refused

    fake.clear_script(KEY1)
    wait_for(
        lambda: _states(proxy)["openai#1"].state is KeyState.ACTIVE,
        message="the prober never re-admitted the key",
    )
    assert _admin_upstreams(proxy)["openai#1"]["state"] == "active"

    start = len(fake.requests_to("/v1/chat/completions"))
    for _ in range(4):
        _chat(proxy)
    keys = [r.key for r in fake.requests_to("/v1/chat/completions")[start:]]
    assert sorted(keys) == sorted([KEY1, KEY1, KEY2, KEY2])


def test_prober_readmits_a_key_back_in_quota(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(pool={"probe_interval": 0.2})
    fake.script_key(KEY1, "no_quota", times=3)  # the request, then two probes
    assert _chat(proxy) == DEFAULT_REPLY
    assert _states(proxy)["openai#1"].reason == "no_quota"
    wait_for(
        lambda: _states(proxy)["openai#1"].state is KeyState.ACTIVE,
        message="the prober never re-admitted the key",
    )
    probes = [r for r in fake.requests_to("/v1/embeddings") if r.key == KEY1]
    assert len(probes) >= 2  # quota is probed with a real (embedding) call
