"""The Discord interactions endpoint: signed POSTs in, JSON answers out, within 3 seconds.

The order is the security: the raw body is read within its limit, its signature and age are
checked, only then is it parsed, and its id must not have been seen before (on any replica:
the ids live in the database). A command slower than ``discord.reply_within`` is answered
"deferred" and its reply follows through the interaction's webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import aiohttp
import orjson
from aiohttp import web

from chatgpt_proxy.errors import InvalidRequest, InvalidSignature
from chatgpt_proxy.keystore import KeyStore
from chatgpt_proxy.requestbody import check_declared_length, too_large
from chatgpt_proxy.selfservice import interactions
from chatgpt_proxy.selfservice.discord_api import DiscordApi
from chatgpt_proxy.selfservice.interactions import Interaction, InteractionType
from chatgpt_proxy.selfservice.service import SelfService
from chatgpt_proxy.selfservice.signature import SignatureCheck
from chatgpt_proxy.settings import DiscordSettings

logger = logging.getLogger("chatgpt_proxy.selfservice")

MAX_BODY_BYTES = 64 * 1024  # Discord's interactions are a few KiB


class InteractionEndpoint:
    """The endpoint's parts, created at start-up when ``discord`` is configured.

    >>> endpoint = InteractionEndpoint(settings.discord, store, service)
    >>> app.router.add_post(settings.discord.path, served(endpoint.handle))
    >>> await endpoint.close()     # waits for follow-ups in flight, closes the session
    """

    def __init__(self, settings: DiscordSettings, store: KeyStore, service: SelfService) -> None:
        assert settings.public_key is not None
        self._settings = settings
        self._store = store
        self._service = service
        self._check = SignatureCheck(settings.public_key, max_age=settings.max_age_seconds)
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self._api = DiscordApi(self._session, settings)
        self._follow_ups: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._follow_ups):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._session.close()

    async def handle(self, request: web.Request) -> web.Response:
        body = await _read(request)
        self._check.verify(request.headers, body)
        interaction = interactions.parse(body)
        if interaction.application_id != self._settings.application_id:
            raise InvalidSignature("The interaction is for another application.")
        window = timedelta(seconds=2 * self._settings.max_age_seconds)
        if not await self._store.owners.first_sighting(interaction.id, window):
            raise InvalidSignature("This interaction was already answered.")
        if interaction.type == InteractionType.PING:
            return _json(interactions.pong())
        if interaction.type != InteractionType.APPLICATION_COMMAND:
            return _json(interactions.ephemeral("This interaction is not supported."))
        if interaction.token is None:
            raise InvalidRequest("A command interaction needs its token.")
        return await self._command(interaction, interaction.token)

    async def _command(self, interaction: Interaction, token: str) -> web.Response:
        work = asyncio.create_task(self._service.answer(interaction))
        try:
            done, _ = await asyncio.wait({work}, timeout=self._settings.reply_within)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if work in done:
            return _json(interactions.ephemeral(work.result()))
        follow_up = asyncio.create_task(self._follow_up(work, token))
        self._follow_ups.add(follow_up)
        follow_up.add_done_callback(self._follow_ups.discard)
        return _json(interactions.deferred())

    async def _follow_up(self, work: asyncio.Task[str], token: str) -> None:
        try:
            await self._api.follow_up(token, await work)
        except Exception:  # a follow-up lost must not go unnoticed, nor end anything else
            logger.exception("the follow-up of a deferred Discord reply failed")


async def _read(request: web.Request) -> bytes:
    """The raw body, within its limit: the signature covers these exact bytes."""
    check_declared_length(request, MAX_BODY_BYTES)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large(MAX_BODY_BYTES)
    return bytes(body)


def _json(data: object) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")
