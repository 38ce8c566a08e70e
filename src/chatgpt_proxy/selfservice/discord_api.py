"""The two calls this proxy makes to Discord's API: registering its slash commands, and
following up a deferred reply. The host is ``discord.api_base`` from configuration only.

Discord's failures are translated here, at this one boundary, into ``UpstreamError``; the bot
token is never part of a message::

    api = DiscordApi(session, settings.discord)
    await api.register()                        # PUT .../applications/{id}/commands
    await api.follow_up(token, "Your key: ...") # PATCH .../webhooks/{id}/{token}/messages/@original
"""

from __future__ import annotations

from typing import Any

import aiohttp

from chatgpt_proxy.errors import ConfigError, UpstreamError
from chatgpt_proxy.settings import DiscordSettings

STRING_OPTION = 3
CHAT_INPUT = 1
ROTATE = "rotate"
TIMEOUT = aiohttp.ClientTimeout(total=10)

COMMANDS: tuple[dict[str, Any], ...] = (
    {
        "name": "key",
        "type": CHAT_INPUT,
        "description": "Get your own API key for this proxy (only you see it)",
        "options": [
            {
                "type": STRING_OPTION,
                "name": "action",
                "description": "rotate: revoke your key and get a new one",
                "required": False,
                "choices": [{"name": ROTATE, "value": ROTATE}],
            }
        ],
    },
    {
        "name": "usage",
        "type": CHAT_INPUT,
        "description": "Your usage today and this month, and what your limits leave",
    },
)


class DiscordApi:
    """Discord's HTTP API, as far as this proxy uses it."""

    def __init__(self, session: aiohttp.ClientSession, settings: DiscordSettings) -> None:
        self._session = session
        self._settings = settings
        self._base = settings.api_base.rstrip("/")

    async def register(self) -> list[dict[str, Any]]:
        """Replace the application's commands (in ``guild_id`` only, when set) with ours."""
        settings = self._settings
        if settings.application_id is None or settings.bot_token is None:
            raise ConfigError("discord.application_id and discord.bot_token are needed to register")
        path = f"/applications/{settings.application_id}"
        if settings.guild_id is not None:
            path += f"/guilds/{settings.guild_id}"
        headers = {"Authorization": f"Bot {settings.bot_token.get_secret_value()}"}
        answer = await self._call("PUT", path + "/commands", list(COMMANDS), headers)
        return answer if isinstance(answer, list) else []

    async def follow_up(self, token: str, content: str) -> None:
        """Replace a deferred reply's "thinking..." with ``content`` (it stays ephemeral)."""
        path = f"/webhooks/{self._settings.application_id}/{token}/messages/@original"
        await self._call("PATCH", path, {"content": content}, {})

    async def _call(self, method: str, path: str, body: object, headers: dict[str, str]) -> object:
        try:
            async with self._session.request(
                method, self._base + path, json=body, headers=headers, timeout=TIMEOUT
            ) as response:
                if response.status >= 400:
                    text = (await response.text(errors="replace"))[:300]
                    raise UpstreamError(f"Discord answered {response.status}: {text}")
                if response.content_type == "application/json":
                    return await response.json()
                return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"Discord could not be reached ({type(exc).__name__}).") from exc
