"""``GET /v1/models``: the models the configured upstreams serve, that this key may use."""

from __future__ import annotations

import orjson
from aiohttp import web

from chatgpt_proxy.exchange import context
from chatgpt_proxy.state import STATE


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ctx = context(request)
    ctx.endpoint = "models.list"
    key = state.keys.authenticate(request.headers.get("Authorization"), request.remote)
    ctx.key_id = key.id
    models = [m for m in await state.catalog.models() if key.policy.allows_model(m["id"])]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": models}), content_type="application/json"
    )


def model_routes() -> list[web.RouteDef]:
    return [web.get("/v1/models", list_models)]
