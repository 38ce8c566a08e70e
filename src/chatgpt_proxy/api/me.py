"""A key holder's own standing, with nothing but their ``pk-`` key as bearer.

Outside ``/v1``, so no OpenAI SDK path can collide with it. A key sees only itself: another
key's id in the path is answered 404, exactly as an id that does not exist::

    GET /me                      the key, its limits, usage today and this month, what is left
    GET /me/usage[?since=DAY]    usage per UTC day and model (default: this month)
    GET /me/keys/{id}            /me, if {id} is the caller's own key id
    GET /me/keys/{id}/usage      /me/usage, likewise

and the same as a small page behind a session (``me_page``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import orjson
from aiohttp import web

from chatgpt_proxy.api.admin import parse_since
from chatgpt_proxy.api.me_page import me_page_routes
from chatgpt_proxy.errors import UnknownRoute
from chatgpt_proxy.exchange import context
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.selfservice.standing import Standing
from chatgpt_proxy.state import STATE, AppState


def _caller(request: web.Request) -> tuple[AppState, ClientKey]:
    state = request.app[STATE]
    ctx = context(request)
    ctx.endpoint = "me"
    key = state.keys.authenticate(request.headers.get("Authorization"), request.remote)
    ctx.key_id = key.id
    wanted = request.match_info.get("id")
    # Any other id, existing or not, is the same 404: a key learns nothing of other keys.
    if wanted is not None and wanted != key.id:
        raise UnknownRoute(f"No client key with id {wanted[:64]!r}.", param="id")
    return state, key


def _json(data: object) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def me(request: web.Request) -> web.Response:
    state, key = _caller(request)
    standing = await Standing.of(state.store, key)
    return _json({"object": "key_standing", **standing.to_dict()})


async def me_usage(request: web.Request) -> web.Response:
    state, key = _caller(request)
    since = _since(request.query.get("since"))
    rows = await state.store.usage.summary(key.id, since)
    return _json({"object": "list", "key_id": key.id, "data": [row.to_dict() for row in rows]})


def _since(value: str | None) -> date:
    """`since` as given, or the first day of this month (UTC)."""
    since = parse_since(value)
    if since is None:
        today = datetime.now(UTC).date()
        return date(today.year, today.month, 1)
    return since


def me_routes() -> list[web.RouteDef]:
    return [
        *me_page_routes(),
        web.get("/me", me),
        web.get("/me/usage", me_usage),
        web.get("/me/keys/{id}", me),
        web.get("/me/keys/{id}/usage", me_usage),
    ]
