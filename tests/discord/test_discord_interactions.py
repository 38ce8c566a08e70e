"""The Discord interactions endpoint: signed fake interactions against a running proxy."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
from discord_helpers import (
    ROTATE,
    FakeDiscord,
    Signer,
    command,
    ping,
)

from chatgpt_proxy.keystore import ClientKey, hash_secret
from harness import ADMIN_KEY, Proxy

USER = "900000000000000001"
PATH = "/discord/interactions"
SECRET = re.compile(r"pk-[A-Za-z0-9_\-]{20,}")


def send(proxy: Proxy, signer: Signer, body: bytes, **header_changes: Any) -> Any:
    headers = signer.headers(body)
    for name, value in header_changes.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return proxy.http().post(PATH, content=body, headers=headers)


def reply(proxy: Proxy, signer: Signer, body: bytes) -> dict[str, Any]:
    answer = send(proxy, signer, body)
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def owned(proxy: Proxy, user: str = USER) -> list[ClientKey]:
    return proxy.loop.run(proxy.state.store.owned_keys(f"discord:{user}"))


def ask_key(proxy: Proxy, signer: Signer, user: str = USER, **kwargs: Any) -> dict[str, Any]:
    return reply(proxy, signer, command(signer, "key", user, **kwargs))


def secret_in(message: dict[str, Any]) -> str | None:
    found = SECRET.search(message["data"]["content"])
    return None if found is None else found.group(0)


def chat(proxy: Proxy, key: str) -> None:
    proxy.client(key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )


def test_ping_is_answered_with_pong(discord_proxy: Proxy, signer: Signer) -> None:
    assert reply(discord_proxy, signer, ping(signer)) == {"type": 1}


def test_key_is_issued_once_ephemeral_stored_only_as_its_hash(
    discord_proxy: Proxy, signer: Signer
) -> None:
    message = ask_key(discord_proxy, signer)
    assert message["type"] == 4
    assert message["data"]["flags"] & 64  # ephemeral: only the user sees it
    secret = secret_in(message)
    assert secret is not None
    assert "https://proxy.example/v1" in message["data"]["content"]
    [key] = owned(discord_proxy)
    assert key.key_hash == hash_secret(secret)
    assert key.owner == f"discord:{USER}"
    assert key.policy.rpm == 20 and key.expires_at is not None
    database = (discord_proxy.state.settings.database_url).removeprefix("sqlite:///")
    with open(database, "rb") as stored:
        assert secret.encode() not in stored.read()
    chat(discord_proxy, secret)  # it works, through the official SDK


def test_a_second_key_request_shows_no_key(discord_proxy: Proxy, signer: Signer) -> None:
    first = secret_in(ask_key(discord_proxy, signer))
    again = ask_key(discord_proxy, signer)
    assert secret_in(again) is None and first not in again["data"]["content"]
    assert "rotate" in again["data"]["content"] and again["data"]["flags"] & 64
    assert len(owned(discord_proxy)) == 1


def test_rotate_revokes_the_old_key_at_once_and_issues_a_working_one(
    discord_proxy: Proxy, signer: Signer
) -> None:
    old = secret_in(ask_key(discord_proxy, signer))
    assert old is not None
    chat(discord_proxy, old)
    new = secret_in(ask_key(discord_proxy, signer, options=ROTATE))
    assert new is not None and new != old
    with pytest.raises(openai.AuthenticationError):
        chat(discord_proxy, old)
    chat(discord_proxy, new)
    keys = owned(discord_proxy)
    assert [key.revoked_at is None for key in keys] == [True, False]  # newest first


def test_usage_shows_the_recorded_usage(discord_proxy: Proxy, signer: Signer) -> None:
    secret = secret_in(ask_key(discord_proxy, signer))
    assert secret is not None
    for _ in range(3):
        chat(discord_proxy, secret)
    discord_proxy.loop.run(discord_proxy.state.meter.flush())
    [key] = owned(discord_proxy)
    rows = discord_proxy.loop.run(discord_proxy.state.store.usage_summary(key.id))
    requests = sum(row.requests for row in rows)
    tokens = sum(row.total_tokens for row in rows)
    assert requests == 3 and tokens > 0
    content = reply(discord_proxy, signer, command(signer, "usage", USER))["data"]["content"]
    assert f"Today: {requests} requests, {tokens} tokens" in content
    assert f"This month: {requests} requests, {tokens} tokens" in content
    assert f"Left today: {200_000 - tokens} of 200000 tokens" in content


def test_usage_without_a_key_says_how_to_get_one(discord_proxy: Proxy, signer: Signer) -> None:
    content = reply(discord_proxy, signer, command(signer, "usage", USER))["data"]["content"]
    assert "/key" in content


@pytest.mark.parametrize(
    "where",
    [
        {"roles": ()},  # a member without the role
        {"guild_id": "1999999999999999999"},  # another server
        {"guild_id": None},  # a direct message
    ],
    ids=["no-role", "other-guild", "dm"],
)
def test_the_guild_and_role_gates_refuse(
    discord_proxy: Proxy, signer: Signer, where: dict[str, Any]
) -> None:
    message = ask_key(discord_proxy, signer, **where)
    assert secret_in(message) is None and message["data"]["flags"] & 64
    assert owned(discord_proxy) == []


def test_a_blocked_user_loses_their_key_and_is_refused(
    discord_proxy: Proxy, signer: Signer
) -> None:
    secret = secret_in(ask_key(discord_proxy, signer))
    assert secret is not None
    http = discord_proxy.http(headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    blocked = http.post(f"/admin/discord/blocks/{USER}")
    assert blocked.status_code == 200 and blocked.json()["revoked"] == [owned(discord_proxy)[0].id]
    with pytest.raises(openai.AuthenticationError):
        chat(discord_proxy, secret)
    for options in (None, ROTATE):
        assert secret_in(ask_key(discord_proxy, signer, options=options)) is None
    assert all(key.revoked_at is not None for key in owned(discord_proxy))
    listed = http.get("/admin/keys").json()["data"]
    assert {key["owner"] for key in listed} == {None, f"discord:{USER}"}
    assert http.delete(f"/admin/discord/blocks/{USER}").json() == {
        "user_id": USER,
        "blocked": False,
    }
    assert secret_in(ask_key(discord_proxy, signer)) is not None


def test_blocking_a_non_numeric_user_id_is_a_400(discord_proxy: Proxy) -> None:
    http = discord_proxy.http(headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    answer = http.post("/admin/discord/blocks/alice")
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "user_id"


def test_new_keys_per_hour_are_capped_and_refusals_counted(
    make_discord_proxy: Callable[..., Proxy], signer: Signer
) -> None:
    proxy = make_discord_proxy(self_service={"max_new_keys_per_hour": 2})
    users = [f"90000000000000010{i}" for i in range(3)]
    answers = [ask_key(proxy, signer, user) for user in users]
    assert [secret_in(a) is not None for a in answers] == [True, True, False]
    assert owned(proxy, users[2]) == []
    metrics = proxy.http().get("/metrics").text
    assert "chatgpt_proxy_self_service_refusals_capped_total 1.0" in metrics
    assert "chatgpt_proxy_self_service_keys_issued_total 2.0" in metrics


def test_a_slow_command_is_deferred_and_followed_up(
    make_discord_proxy: Callable[..., Proxy], signer: Signer, fake_discord: FakeDiscord
) -> None:
    # Any command takes longer than a microsecond: this one is deferred.
    proxy = make_discord_proxy(reply_within=0.000001)
    body = command(signer, "key", USER)
    token = orjson.loads(body)["token"]
    message = reply(proxy, signer, body)
    assert message == {"type": 5, "data": {"flags": 64}}
    [call] = fake_discord.wait_for_calls(1)
    assert call.method == "PATCH"
    assert call.path.endswith(
        f"/webhooks/{orjson.loads(body)['application_id']}/{token}/messages/@original"
    )
    secret = SECRET.search(call.body["content"])
    assert secret is not None
    chat(proxy, secret.group(0))


@pytest.mark.parametrize(
    "spoil",
    ["bad-signature", "tampered-body", "no-signature", "no-timestamp", "stale", "future"],
)
def test_unsigned_or_stale_interactions_are_refused(
    discord_proxy: Proxy, signer: Signer, spoil: str
) -> None:
    body = command(signer, "key", USER)
    headers = signer.headers(body)
    if spoil == "bad-signature":
        headers["X-Signature-Ed25519"] = "00" * 64
    elif spoil == "tampered-body":
        body = body.replace(USER.encode(), b"900000000000000002")
    elif spoil == "no-signature":
        del headers["X-Signature-Ed25519"]
    elif spoil == "no-timestamp":
        del headers["X-Signature-Timestamp"]
    else:
        offset = -3600 if spoil == "stale" else 3600
        headers = signer.headers(body, timestamp=int(time.time()) + offset)
    answer = discord_proxy.http().post(PATH, content=body, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_signature"
    assert owned(discord_proxy) == [] and owned(discord_proxy, "900000000000000002") == []


def test_a_replayed_interaction_is_refused(discord_proxy: Proxy, signer: Signer) -> None:
    body = command(signer, "key", USER, options=ROTATE)
    headers = signer.headers(body)
    first = discord_proxy.http().post(PATH, content=body, headers=headers)
    assert first.status_code == 200
    replayed = discord_proxy.http().post(PATH, content=body, headers=headers)
    assert replayed.status_code == 401
    assert len(owned(discord_proxy)) == 1  # the replayed rotation issued nothing


def test_a_signed_interaction_of_another_application_is_refused(
    discord_proxy: Proxy, signer: Signer
) -> None:
    body = command(signer, "key", USER).replace(b"1100000000000000001", b"1100000000000000009")
    assert send(discord_proxy, signer, body).status_code == 401
    assert owned(discord_proxy) == []


def test_the_endpoint_is_off_unless_configured(proxy: Proxy, signer: Signer) -> None:
    body = ping(signer)
    assert proxy.http().post(PATH, content=body, headers=signer.headers(body)).status_code == 404


def test_rotations_per_user_are_capped(
    make_discord_proxy: Callable[..., Proxy], signer: Signer
) -> None:
    proxy = make_discord_proxy(self_service={"max_keys_per_user_per_day": 2})
    first = secret_in(ask_key(proxy, signer))
    second = secret_in(ask_key(proxy, signer, options=ROTATE))
    third = ask_key(proxy, signer, options=ROTATE)
    assert first and second and secret_in(third) is None
    assert "tomorrow" in third["data"]["content"]
    chat(proxy, second)  # the refused rotation left the current key alone
    metrics = proxy.http().get("/metrics").text
    assert "chatgpt_proxy_self_service_refusals_user_capped_total 1.0" in metrics


def test_a_dot_segment_token_is_refused(discord_proxy: Proxy, signer: Signer) -> None:
    body = command(signer, "key", USER)
    body = body.replace(orjson.loads(body)["token"].encode(), b"..")
    assert send(discord_proxy, signer, body).status_code == 400
    assert owned(discord_proxy) == []
