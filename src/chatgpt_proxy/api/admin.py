"""The admin API: client keys, upstream key states and moderation blocks, behind the admin key.

The admin key and client keys are separate credentials (DESIGN §3.4): a client key is refused
here with 401, and without a configured admin key the whole API answers 403.
"""

from __future__ import annotations

import hmac
from datetime import date

import orjson
from aiohttp import web

from chatgpt_proxy.errors import (
    AuthenticationFailed,
    InvalidRequest,
    PermissionDenied,
    UnknownRoute,
)
from chatgpt_proxy.exchange import context
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.keystore.requests import parse_create, parse_update
from chatgpt_proxy.limits.policy import default_policy
from chatgpt_proxy.requestbody import read_json
from chatgpt_proxy.selfservice.service import is_discord_id, owner_of
from chatgpt_proxy.state import STATE, AppState


def _authorize(request: web.Request) -> AppState:
    state = request.app[STATE]
    context(request).endpoint = "admin"
    admin_key = state.settings.auth.admin_key
    if admin_key is None:
        raise PermissionDenied("The admin API is disabled: set auth.admin_key to enable it.")
    header = request.headers.get("Authorization", "")
    expected = f"Bearer {admin_key.get_secret_value()}"
    if not hmac.compare_digest(header.encode("utf-8", "replace"), expected.encode()):
        raise AuthenticationFailed("Incorrect admin key provided.")
    return state


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _key_or_404(state: AppState, key_id: str) -> ClientKey:
    key = await state.store.get(key_id)
    if key is None:
        raise _no_such_key(key_id)
    return key


def _no_such_key(key_id: str) -> UnknownRoute:
    # The id comes from the client: named in the message, but clipped (it may be huge).
    return UnknownRoute(f"No client key with id {key_id[:64]!r}.", param="id")


async def _changed(state: AppState, key: ClientKey) -> None:
    """Apply a key's change here at once, and (with Redis) on every other replica too.

    Without Redis the others see it at their next poll of the store (``cache_refresh_seconds``).
    """
    state.keys.apply(key)
    if state.shared is not None:
        await state.shared.key_changed(key.id)


async def _audit(
    state: AppState, request: web.Request, action: str, target: str, detail: str | None = None
) -> None:
    """Record an action of the admin API (the actor is "api": the admin key has no name)."""
    await state.store.audit.record(
        "api", action, target=target, address=request.remote, detail=detail
    )


async def create_key(request: web.Request) -> web.Response:
    state = _authorize(request)
    _, document = await read_json(request, 64 * 1024)
    wanted = parse_create(document, default_policy(state.settings.limits))
    assert wanted.name is not None and wanted.policy is not None
    expires = None if wanted.expires_at is ... else wanted.expires_at
    key, secret = await state.store.create(wanted.name, wanted.policy, expires)
    await _changed(state, key)
    await _audit(state, request, "key.create", key.id)
    return _json({**key.public_dict(), "key": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    state = _authorize(request)
    keys = await state.store.list()
    return _json({"object": "list", "data": [key.public_dict() for key in keys]})


async def get_key(request: web.Request) -> web.Response:
    state = _authorize(request)
    key = await _key_or_404(state, request.match_info["id"])
    return _json(key.public_dict())


async def update_key(request: web.Request) -> web.Response:
    state = _authorize(request)
    key = await _key_or_404(state, request.match_info["id"])
    _, document = await read_json(request, 64 * 1024)
    change = parse_update(key, document)
    updated = await state.store.update(
        key.id, name=change.name, policy=change.policy, expires_at=change.expires_at
    )
    if updated is None:
        raise _no_such_key(key.id)
    await _changed(state, updated)
    fields = ", ".join(sorted(name for name in document if name != "name")) or "-"
    await _audit(state, request, "key.update", key.id, f"fields: {fields}")
    return _json(updated.public_dict())


async def revoke_key(request: web.Request) -> web.Response:
    state = _authorize(request)
    key = await state.store.revoke(request.match_info["id"])
    if key is None:
        raise _no_such_key(request.match_info["id"])
    await _changed(state, key)
    await _audit(state, request, "key.revoke", key.id)
    return _json(key.public_dict())


async def key_usage(request: web.Request) -> web.Response:
    state = _authorize(request)
    key = await _key_or_404(state, request.match_info["id"])
    since = parse_since(request.query.get("since"))
    rows = await state.store.usage.summary(key.id, since)
    return _json({"object": "list", "key_id": key.id, "data": [row.to_dict() for row in rows]})


async def upstreams(request: web.Request) -> web.Response:
    state = _authorize(request)
    data = [
        {
            "alias": status.alias,
            "upstream": upstream.name,
            "state": str(status.state),
            "until_seconds": status.until,
            "inflight": status.inflight,
            "requests": status.requests,
            "failures": status.failures,
            "reason": status.reason,
        }
        for upstream in state.router.upstreams
        for status in upstream.pool.snapshot()
    ]
    return _json({"object": "list", "data": data})


async def moderation_blocks(request: web.Request) -> web.Response:
    state = _authorize(request)
    limit = _limit(request, 100)
    blocks = state.moderator.recent_blocks(limit)
    return _json({"object": "list", "total": state.moderator.blocks_total, "data": blocks})


async def audit_log(request: web.Request) -> web.Response:
    """The audit log, newest first; ``?before=<id>`` pages to older entries."""
    state = _authorize(request)
    limit = _limit(request, 50)
    before = request.query.get("before")
    if before is not None and not (before.isdigit() and len(before) < 19):
        raise InvalidRequest("`before` must be an entry's id.", param="before")
    entries = await state.store.audit.page(limit=limit, before=int(before) if before else None)
    data = [entry.to_dict() for entry in entries]
    more = len(entries) == limit
    return _json({"object": "list", "data": data, "has_more": more})


def _limit(request: web.Request, default: int) -> int:
    try:
        return min(1000, max(1, int(request.query.get("limit", str(default)))))
    except ValueError as exc:
        raise InvalidRequest("`limit` must be a number.", param="limit") from exc


async def block_discord_user(request: web.Request) -> web.Response:
    """Block a Discord user from self-service: their keys are revoked, ``/key`` refuses them."""
    state = _authorize(request)
    assert state.self_service is not None
    user_id = _discord_user(request)
    revoked = await state.self_service.block(user_id)
    return _json({"user_id": user_id, "blocked": True, "revoked": [key.id for key in revoked]})


async def unblock_discord_user(request: web.Request) -> web.Response:
    state = _authorize(request)
    user_id = _discord_user(request)
    await state.store.owners.unblock(owner_of(user_id))
    return _json({"user_id": user_id, "blocked": False})


def _discord_user(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not is_discord_id(user_id):
        raise InvalidRequest("A Discord user id is a number of up to 20 digits.", param="user_id")
    return user_id


def parse_since(value: str | None) -> date | None:
    """A report's `since` query parameter: an ISO date, or None when absent."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest("`since` must be a date such as 2026-11-01.", param="since") from exc


def admin_routes() -> list[web.RouteDef]:
    return [
        web.post("/admin/keys", create_key),
        web.get("/admin/keys", list_keys),
        web.get("/admin/keys/{id}", get_key),
        web.patch("/admin/keys/{id}", update_key),
        web.delete("/admin/keys/{id}", revoke_key),
        web.get("/admin/keys/{id}/usage", key_usage),
        web.get("/admin/upstreams", upstreams),
        web.get("/admin/moderation", moderation_blocks),
        web.get("/admin/audit", audit_log),
        web.post("/admin/discord/blocks/{user_id}", block_discord_user),
        web.delete("/admin/discord/blocks/{user_id}", unblock_discord_user),
    ]
