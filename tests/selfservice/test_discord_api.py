"""``selfservice/discord_api.py``: the two calls made to Discord, against the fake Discord API
on 127.0.0.1; Discord's failures become ``UpstreamError``, the bot token never in a message."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest

from chatgpt_proxy.errors import ConfigError, UpstreamError
from chatgpt_proxy.selfservice.discord_api import COMMANDS, DiscordApi
from chatgpt_proxy.settings import DiscordSettings
from selfservice.discord_helpers import APPLICATION_ID, BOT_TOKEN, GUILD_ID, FakeDiscord

T = TypeVar("T")
TOKEN = "tok_1400000000000000001"


def call(settings: DiscordSettings, use: Callable[[DiscordApi], Awaitable[T]]) -> T:
    async def main() -> T:
        async with aiohttp.ClientSession() as session:
            return await use(DiscordApi(session, settings))

    return asyncio.run(main())


def settings_for(fake: FakeDiscord, **overrides: Any) -> DiscordSettings:
    values: dict[str, Any] = {
        "application_id": APPLICATION_ID,
        "bot_token": BOT_TOKEN,
        "api_base": fake.url + "/api/v10",
        **overrides,
    }
    return DiscordSettings(**values)


def test_register_puts_both_commands_in_the_guild(fake_discord: FakeDiscord) -> None:
    registered = call(settings_for(fake_discord, guild_id=GUILD_ID), DiscordApi.register)
    assert [command["name"] for command in registered] == ["key", "usage"]
    assert all(command["id"] for command in registered)  # Discord's answer, as it came
    [sent] = fake_discord.wait_for_calls(1)
    assert sent.method == "PUT"
    assert sent.path == f"/api/v10/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands"
    assert sent.headers["Authorization"] == f"Bot {BOT_TOKEN}"
    assert sent.body == list(COMMANDS)


def test_register_without_a_guild_is_global(fake_discord: FakeDiscord) -> None:
    call(settings_for(fake_discord, api_base=fake_discord.url + "/api/v10/"), DiscordApi.register)
    [sent] = fake_discord.wait_for_calls(1)
    assert sent.path == f"/api/v10/applications/{APPLICATION_ID}/commands"  # one slash only


def test_the_key_command_offers_rotate_and_usage_takes_nothing() -> None:
    key, usage = COMMANDS
    [action] = key["options"]
    assert action["required"] is False
    assert action["choices"] == [{"name": "rotate", "value": "rotate"}]
    assert "options" not in usage
    assert all(command["type"] == 1 for command in COMMANDS)  # slash commands


@pytest.mark.parametrize("missing", ["application_id", "bot_token"])
def test_register_needs_the_application_id_and_the_bot_token(
    fake_discord: FakeDiscord, missing: str
) -> None:
    with pytest.raises(ConfigError, match=missing):
        call(settings_for(fake_discord, **{missing: None}), DiscordApi.register)
    assert fake_discord.calls == []


def test_follow_up_replaces_the_deferred_reply(fake_discord: FakeDiscord) -> None:
    settings = settings_for(fake_discord)
    call(settings, lambda api: api.follow_up(TOKEN, "Your key: ..."))
    [sent] = fake_discord.wait_for_calls(1)
    assert sent.method == "PATCH"
    assert sent.path == f"/api/v10/webhooks/{APPLICATION_ID}/{TOKEN}/messages/@original"
    assert sent.body == {"content": "Your key: ..."}
    assert "Authorization" not in sent.headers  # the interaction's token is the credential


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500])
def test_a_refusal_by_discord_is_an_upstream_error_without_the_token(
    fake_discord: FakeDiscord, status: int
) -> None:
    fake_discord.refuse_with = status
    settings = settings_for(fake_discord, guild_id=GUILD_ID)
    for use in (DiscordApi.register, lambda api: api.follow_up(TOKEN, "hi")):
        with pytest.raises(UpstreamError) as raised:
            call(settings, use)
        assert raised.value.status == 502
        assert f"Discord answered {status}" in raised.value.message
        assert "Refused by the fake" in raised.value.message
        assert BOT_TOKEN not in raised.value.message


def test_discord_out_of_reach_is_an_upstream_error(fake_discord: FakeDiscord) -> None:
    settings = settings_for(fake_discord, api_base="http://127.0.0.1:9/api/v10")  # no listener
    with pytest.raises(UpstreamError) as raised:
        call(settings, DiscordApi.register)
    assert raised.value.message.startswith("Discord could not be reached")
    assert BOT_TOKEN not in raised.value.message
