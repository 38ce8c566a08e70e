"""The client keys page: paged, searched and sorted in SQL; create, change, revoke."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from aiohttp import web

from chatgpt_proxy.console.guard import Refused, Signed
from chatgpt_proxy.console.render import change, page, policy_document, render
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.keystore.requests import parse_create, parse_update
from chatgpt_proxy.keystore.store import SORTABLE
from chatgpt_proxy.limits.policy import default_policy
from chatgpt_proxy.state import STATE, AppState

PAGE_SIZE = 50


def _number(text: str | None, default: int) -> int:
    try:
        return max(int(text or default), 1)
    except ValueError:
        return default


@page
async def list_keys(request: web.Request, signed: Signed) -> web.StreamResponse:
    query = request.query
    search = query.get("q", "")[:100]
    sort = query.get("sort", "created_at")
    sort = sort if sort in SORTABLE else "created_at"
    descending = query.get("dir", "desc") != "asc"
    number = _number(query.get("page"), 1)
    store = request.app[STATE].store
    keys, total = await store.page(
        search=search,
        sort=sort,
        descending=descending,
        offset=(number - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    context = {
        "keys": [key.public_dict() for key in keys],
        "total": total,
        "page": number,
        "pages": max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1),
        "q": search,
        "sort": sort,
        "dir": "desc" if descending else "asc",
        "sortable": SORTABLE,
        "created": None,
    }
    template = "_keys_table.html" if request.headers.get("HX-Request") == "true" else "keys.html"
    return render(request, template, context, signed=signed)


@change
async def create_key(
    request: web.Request, signed: Signed, form: dict[str, str]
) -> web.StreamResponse:
    state = request.app[STATE]
    wanted = parse_create(
        policy_document(form, blank_clears=False), default_policy(state.settings.limits)
    )
    assert wanted.name is not None and wanted.policy is not None
    expires = None if wanted.expires_at is ... else wanted.expires_at
    key, secret = await state.store.create(wanted.name, wanted.policy, expires)
    await _changed(state, key)
    await state.store.audit.record(
        signed.actor, "key.create", target=key.id, address=request.remote
    )
    # The one time the key is shown: in this answer's body, never in a URL or a cookie.
    return render(
        request,
        "created.html",
        {"key": key.public_dict(), "secret": secret},
        signed=signed,
        status=201,
    )


@page
async def show_key(request: web.Request, signed: Signed) -> web.StreamResponse:
    state = request.app[STATE]
    key = await _key(state, request.match_info["id"])
    return render(request, "key.html", await _key_context(state, key), signed=signed)


@change
async def update_key(
    request: web.Request, signed: Signed, form: dict[str, str]
) -> web.StreamResponse:
    state = request.app[STATE]
    key = await _key(state, request.match_info["id"])
    document = policy_document(form, blank_clears=True)
    wanted = parse_update(key, document)
    updated = await state.store.update(
        key.id, name=wanted.name, policy=wanted.policy, expires_at=wanted.expires_at
    )
    if updated is None:
        raise Refused(404, "No such key.")
    await _changed(state, updated)
    fields = ", ".join(sorted(name for name in document if name != "name")) or "-"
    await state.store.audit.record(
        signed.actor,
        "key.update",
        target=key.id,
        address=request.remote,
        detail=f"fields: {fields}",
    )
    context = await _key_context(state, updated)
    context["message"] = "Saved."
    return render(request, "key.html", context, signed=signed)


@change
async def revoke_key(
    request: web.Request, signed: Signed, form: dict[str, str]
) -> web.StreamResponse:
    state = request.app[STATE]
    key = await state.store.revoke(request.match_info["id"])
    if key is None:
        raise Refused(404, "No such key.")
    await _changed(state, key)
    await state.store.audit.record(
        signed.actor, "key.revoke", target=key.id, address=request.remote
    )
    context = await _key_context(state, key)
    context["message"] = "Revoked: the key is refused from now on."
    return render(request, "key.html", context, signed=signed)


async def _key(state: AppState, key_id: str) -> ClientKey:
    key = await state.store.get(key_id)
    if key is None:
        raise Refused(404, "No such key.")
    return key


async def _changed(state: AppState, key: ClientKey) -> None:
    """As the admin API does: here at once, on the other replicas through Redis."""
    state.keys.apply(key)
    if state.shared is not None:
        await state.shared.key_changed(key.id)


async def _key_context(state: AppState, key: ClientKey) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    since = today - timedelta(days=29)
    usage = await state.store.usage.summary(key.id, since)
    tokens_today, cost_today = await state.store.usage.totals(
        key.id, datetime.combine(today, time.min, tzinfo=UTC)
    )
    policy = key.policy
    left = {
        "tokens": None
        if policy.daily_token_budget is None
        else max(policy.daily_token_budget - tokens_today, 0),
        "cost": None
        if policy.daily_cost_budget is None
        else max(policy.daily_cost_budget - cost_today, 0.0),
    }
    days = [since + timedelta(days=n) for n in range(30)]
    per_model: dict[str, dict[date, int]] = {}
    for row in usage:
        per_model.setdefault(row.model, {})[row.day] = row.total_tokens
    # One line per model, the busiest first (a few: a chart of fifty lines says nothing).
    busiest = sorted(per_model, key=lambda model: -sum(per_model[model].values()))[:6]
    series = [[model, [per_model[model].get(day, 0) for day in days]] for model in busiest]
    return {
        "key": key.public_dict(),
        "usage": [row.to_dict() for row in usage],
        "chart": {"days": [day.isoformat() for day in days], "series": series},
        "today": {"tokens": tokens_today, "cost": cost_today},
        "left": left,
        "message": None,
    }
