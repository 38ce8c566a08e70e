"""``selfservice/service.py``: what ``/key`` and ``/usage`` do, the guild and role gates, the
caps and blocking users, driven by signed fake interactions against a running proxy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from chatgpt_proxy.keystore import hash_secret
from chatgpt_proxy.selfservice.service import is_discord_id, owner_of
from harness import ADMIN_KEY, Proxy
from selfservice.discord_helpers import (
    ROTATE,
    USER,
    Signer,
    ask_key,
    chat,
    command,
    owned,
    reply,
    secret_in,
)


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
    rows = discord_proxy.loop.run(discord_proxy.state.store.usage.summary(key.id))
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


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("80351110224678912", True),
        ("1", True),
        ("9" * 20, True),
        ("9" * 21, False),  # longer than a snowflake
        ("", False),
        ("alice", False),
        ("-1", False),
        ("1.5", False),
        ("\u0661\u0662\u0663", False),  # Arabic-Indic digits: isdigit(), yet no Discord id
    ],
)
def test_is_discord_id_accepts_snowflakes_only(value: str, expected: bool) -> None:
    assert is_discord_id(value) is expected


def test_owner_of_names_the_discord_user() -> None:
    assert owner_of("80351110224678912") == "discord:80351110224678912"


def test_an_unknown_command_is_answered_and_issues_nothing(
    discord_proxy: Proxy, signer: Signer
) -> None:
    message = reply(discord_proxy, signer, command(signer, "other", USER))
    assert message["data"] == {"content": "Unknown command.", "flags": 64}
    assert owned(discord_proxy) == []


def test_a_command_without_a_user_is_answered_and_issues_nothing(
    make_discord_proxy: Callable[..., Proxy], signer: Signer
) -> None:
    proxy = make_discord_proxy(required_role=None)
    interaction = orjson.loads(command(signer, "key", USER))
    del interaction["member"]
    message = reply(proxy, signer, orjson.dumps(interaction))
    assert message["data"]["content"] == "This command needs a Discord user."
    assert owned(proxy) == []


def test_without_guild_or_role_a_direct_message_gets_a_key(
    make_discord_proxy: Callable[..., Proxy], signer: Signer
) -> None:
    proxy = make_discord_proxy(guild_id=None, required_role=None)
    secret = secret_in(ask_key(proxy, signer, guild_id=None))
    assert secret is not None
    [key] = owned(proxy)
    assert key.key_hash == hash_secret(secret)


def test_the_key_message_and_expiry_follow_the_self_service_settings(
    make_discord_proxy: Callable[..., Proxy], signer: Signer
) -> None:
    proxy = make_discord_proxy(
        self_service={"public_url": None, "expires_days": None, "rpm": 7, "models": ["gpt-4o*"]}
    )
    message = ask_key(proxy, signer)
    content = message["data"]["content"]
    assert secret_in(message) is not None
    assert "base_url" not in content and "/usage" in content
    [key] = owned(proxy)
    assert key.expires_at is None
    assert key.policy.rpm == 7 and key.policy.models == ("gpt-4o*",)
    usage = reply(proxy, signer, command(signer, "usage", USER))["data"]["content"]
    assert "7 requests/min" in usage and "Models: gpt-4o*" in usage and "Expires" not in usage
