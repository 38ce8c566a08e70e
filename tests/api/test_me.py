"""``/me``: a key holder's own standing, with their ``pk-`` key; never another key's."""

from __future__ import annotations

from collections.abc import Callable

from chatgpt_proxy.keystore import KeyPolicy
from harness import Proxy


def test_me_shows_the_keys_limits_usage_and_what_is_left(
    make_proxy: Callable[..., Proxy],
) -> None:
    proxy = make_proxy()
    secret = proxy.create_key("member", KeyPolicy(rpm=30, daily_token_budget=10_000))
    member = proxy.loop.run(proxy.state.store.list())[-1]
    client = proxy.client(secret)
    for _ in range(2):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    proxy.loop.run(proxy.state.meter.flush())
    rows = proxy.loop.run(proxy.state.store.usage.summary(member.id))
    tokens = sum(row.total_tokens for row in rows)

    http = proxy.http(headers={"Authorization": f"Bearer {secret}"})
    me = http.get("/me").json()
    assert me["key"]["id"] == member.id and me["key"]["rpm"] == 30
    assert "key_hash" not in me["key"] and secret not in str(me)
    assert me["today"]["requests"] == 2 and me["today"]["total_tokens"] == tokens
    assert me["left_today"]["total_tokens"] == 10_000 - tokens
    usage = http.get("/me/usage").json()
    assert usage["key_id"] == member.id
    assert sum(row["requests"] for row in usage["data"]) == 2
    assert http.get(f"/me/keys/{member.id}").json()["key"]["id"] == member.id
    assert http.get(f"/me/keys/{member.id}/usage").json()["key_id"] == member.id


def test_another_keys_id_is_a_404(proxy: Proxy) -> None:
    other = proxy.key_id  # the harness's own key
    secret = proxy.create_key("member")
    http = proxy.http(headers={"Authorization": f"Bearer {secret}"})
    for path in (f"/me/keys/{other}", f"/me/keys/{other}/usage", "/me/keys/key_0000/usage"):
        answer = http.get(path)
        assert answer.status_code == 404, path
        assert other not in answer.text or answer.json()["error"]["param"] == "id"
        assert "total_tokens" not in answer.text


def test_me_needs_a_valid_key(proxy: Proxy) -> None:
    http = proxy.http()
    assert http.get("/me").status_code == 401
    assert http.get("/me", headers={"Authorization": "Bearer pk-nope"}).status_code == 401
    revoked = proxy.create_key("gone")
    key = proxy.loop.run(proxy.state.store.list())[-1]
    proxy.state.keys.apply(proxy.loop.run(proxy.state.store.revoke(key.id)))  # type: ignore[arg-type]
    answer = http.get("/me", headers={"Authorization": f"Bearer {revoked}"})
    assert answer.status_code == 401


def test_a_bad_since_is_a_400(proxy: Proxy) -> None:
    http = proxy.http(headers={"Authorization": f"Bearer {proxy.key}"})
    answer = http.get("/me/usage", params={"since": "yesterday"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "since"
