"""The Discord and self-service settings: off until configured, a real public key, a safe path."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from chatgpt_proxy.settings import DiscordSettings, SelfServiceSettings, Settings
from chatgpt_proxy.settings.community import DISCORD_API_BASE

PUBLIC_KEY = "0123456789abcdefABCDEF0123456789abcdef0123456789abcdef0123456789"


def test_discord_is_off_until_both_the_application_and_its_key_are_set() -> None:
    assert DiscordSettings().enabled is False
    assert DiscordSettings(application_id="123").enabled is False
    assert DiscordSettings(public_key=PUBLIC_KEY).enabled is False
    assert DiscordSettings(application_id="123", public_key=PUBLIC_KEY).enabled is True


def test_discord_defaults() -> None:
    discord = DiscordSettings()
    assert discord.api_base == DISCORD_API_BASE == "https://discord.com/api/v10"
    assert discord.path == "/discord/interactions"
    assert discord.bot_token is None and discord.guild_id is None
    assert discord.required_role is None
    assert discord.max_age_seconds == 300.0 and discord.reply_within == 2.0


@pytest.mark.parametrize(
    "key",
    [PUBLIC_KEY[:-1], PUBLIC_KEY + "0", "g" * 64, " " + PUBLIC_KEY[1:], ""],
    ids=["63-digits", "65-digits", "not-hex", "space", "empty"],
)
def test_the_public_key_must_be_64_hex_digits(key: str) -> None:
    with pytest.raises(ValidationError, match="64 hex digits"):
        DiscordSettings(public_key=key)


def test_the_bot_token_is_a_secret() -> None:
    discord = DiscordSettings.model_validate({"bot_token": "bot-token-secret"})
    assert discord.bot_token is not None
    assert discord.bot_token.get_secret_value() == "bot-token-secret"
    assert "bot-token-secret" not in repr(discord)


def test_the_interactions_path_lies_outside_the_api() -> None:
    assert DiscordSettings(path="/hooks/discord").path == "/hooks/discord"
    assert DiscordSettings(path="/v1").path == "/v1"  # not under /v1/
    for bad in ("discord", "/v1/interactions", "/admin/discord", "/me", "/me/keys"):
        with pytest.raises(ValidationError, match="outside /v1"):
            DiscordSettings(path=bad)


@pytest.mark.parametrize(
    "values",
    [{"reply_within": 3}, {"reply_within": 0}, {"max_age_seconds": 0}],
    ids=["reply-at-discords-limit", "reply-at-once", "max-age"],
)
def test_bad_discord_timings_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DiscordSettings.model_validate(values)


def test_self_service_defaults_are_a_modest_key() -> None:
    policy = SelfServiceSettings()
    assert (policy.rpm, policy.tpm, policy.daily_token_budget) == (20, 40_000, 200_000)
    assert policy.models == () and policy.expires_days == 30
    assert policy.max_new_keys_per_hour == 30 and policy.max_keys_per_user_per_day == 3
    assert policy.public_url is None


def test_self_service_limits_may_be_lifted_with_null() -> None:
    nulls = dict.fromkeys(
        ("rpm", "tpm", "daily_token_budget", "expires_days", "max_new_keys_per_hour"), None
    )
    policy = SelfServiceSettings.model_validate({**nulls, "max_keys_per_user_per_day": None})
    assert policy.rpm is None and policy.max_keys_per_user_per_day is None
    assert SelfServiceSettings(max_new_keys_per_hour=0).max_new_keys_per_hour == 0  # none issued


@pytest.mark.parametrize(
    "values",
    [
        {"rpm": 0},
        {"tpm": 0},
        {"daily_token_budget": -1},
        {"expires_days": 0},
        {"max_new_keys_per_hour": -1},
        {"max_keys_per_user_per_day": 0},
    ],
    ids=["rpm", "tpm", "daily-budget", "expires", "per-hour", "per-user"],
)
def test_bad_self_service_values_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SelfServiceSettings.model_validate(values)


def test_both_sections_hang_off_the_settings() -> None:
    settings = Settings.model_validate(
        {
            "upstreams": [{"name": "openai", "keys": ["sk-x"]}],
            "discord": {"application_id": "123", "public_key": PUBLIC_KEY},
            "self_service": {"rpm": 5},
        }
    )
    assert settings.discord.enabled and settings.self_service.rpm == 5
