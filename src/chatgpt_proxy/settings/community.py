"""The settings of self-service keys: the Discord application that issues them, and their policy."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from chatgpt_proxy.settings.base import _Section

DISCORD_API_BASE = "https://discord.com/api/v10"


class DiscordSettings(_Section):
    application_id: str | None = Field(
        None, description="the Discord application's id; with `public_key`, turns the endpoint on"
    )
    public_key: str | None = Field(
        None,
        description="the application's public key, in hex as the Developer Portal shows it; "
        "every interaction's Ed25519 signature is checked against it",
    )
    bot_token: SecretStr | None = Field(
        None, description="the bot's token, used only by `chatgpt-proxy discord register`"
    )
    api_base: str = Field(DISCORD_API_BASE, description="Discord's API root, with its version")
    path: str = Field(
        "/discord/interactions", description="the interactions endpoint URL's path on this proxy"
    )
    guild_id: str | None = Field(
        None, description="only members of this server (guild) may use the commands"
    )
    required_role: str | None = Field(
        None, description="only members holding this role id may use the commands"
    )
    max_age_seconds: float = Field(
        300.0, gt=0, description="an interaction signed longer ago than this is refused (401)"
    )
    reply_within: float = Field(
        2.0,
        gt=0,
        lt=3,
        description="seconds to answer in before deferring and following up (Discord allows 3)",
    )

    @property
    def enabled(self) -> bool:
        return self.application_id is not None and self.public_key is not None

    @field_validator("public_key")
    @classmethod
    def _hex_key(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("must be the 64 hex digits of an Ed25519 public key")
        return value

    @field_validator("path")
    @classmethod
    def _outside_v1(cls, value: str) -> str:
        if not value.startswith("/") or value.startswith(("/v1/", "/admin/", "/me")):
            raise ValueError("must start with / and lie outside /v1, /admin and /me")
        return value


class SelfServiceSettings(_Section):
    rpm: int | None = Field(20, ge=1, description="requests per minute of a self-service key")
    tpm: int | None = Field(40_000, ge=1, description="tokens per minute of a self-service key")
    daily_token_budget: int | None = Field(
        200_000, ge=0, description="tokens per UTC day of a self-service key"
    )
    models: tuple[str, ...] = Field(
        (), description="glob patterns of the models a self-service key may use (empty: all)"
    )
    expires_days: int | None = Field(
        30, ge=1, description="days a self-service key lasts; then its owner asks for a new one"
    )
    max_new_keys_per_hour: int | None = Field(
        30,
        ge=0,
        description="self-service keys issued per hour across the server, at most (null: no "
        "cap); refusals are logged and counted in /metrics",
    )
    max_keys_per_user_per_day: int | None = Field(
        3,
        ge=1,
        description="keys one user may be issued in 24 hours, rotations included (null: no "
        "cap); each new key starts a fresh daily budget",
    )
    public_url: str | None = Field(
        None,
        description="this proxy's public URL, told to new key holders as their SDK's base URL "
        "(with /v1 added)",
    )
