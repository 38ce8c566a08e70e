"""The Discord interactions endpoint's route (``discord.path``), served only when configured."""

from __future__ import annotations

from aiohttp import web

from chatgpt_proxy.errors import UnknownRoute
from chatgpt_proxy.exchange import context
from chatgpt_proxy.settings import DiscordSettings
from chatgpt_proxy.state import STATE


async def interactions(request: web.Request) -> web.Response:
    context(request).endpoint = "discord"
    endpoint = request.app[STATE].interactions
    if endpoint is None:  # the route exists only when configured; kept safe anyway
        raise UnknownRoute(f"Invalid URL ({request.method} {request.path})")
    return await endpoint.handle(request)


def interaction_routes(settings: DiscordSettings) -> list[web.RouteDef]:
    return [web.post(settings.path, interactions)] if settings.enabled else []
