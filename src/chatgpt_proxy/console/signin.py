"""Signing in and out of the console with the admin key, through a plain HTML form."""

from __future__ import annotations

from aiohttp import web

from chatgpt_proxy.app import STATE
from chatgpt_proxy.console.guard import (
    GUARD,
    Refused,
    Signed,
    check_origin,
    clear_cookie,
    is_admin_key,
    lifetimes,
    set_cookie,
    signed_in,
)
from chatgpt_proxy.console.overview import overview
from chatgpt_proxy.console.render import (
    base_path,
    change,
    read_form,
    refused,
    render,
    see_other,
)
from chatgpt_proxy.errors import RateLimited


def _address(request: web.Request) -> str:
    return request.remote or "-"


async def home(request: web.Request) -> web.StreamResponse:
    """``/admin/``: the overview when signed in, else the sign-in form (or how to enable it)."""
    if request.app[STATE].settings.auth.admin_key is None:
        return render(request, "disabled.html", {}, status=403)
    signed = await signed_in(request)
    if signed is None:
        return render(request, "login.html", {"error": None})
    return await overview(request, signed)


async def login(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if state.settings.auth.admin_key is None:
        return render(request, "disabled.html", {}, status=403)
    form = await read_form(request)
    address = _address(request)
    try:
        check_origin(request)
        request.app[GUARD].throttle.check(address)
    except Refused as refusal:
        return refused(request, refusal)
    except RateLimited as err:
        error = "Too many failed sign-ins from your address: wait a few minutes."
        response = render(request, "login.html", {"error": error}, status=429)
        response.headers.update(err.headers)
        return response
    if not is_admin_key(state, form.get("password", "")):
        request.app[GUARD].throttle.failed(address)
        await state.store.audit.record("console", "login.failed", address=address)
        return render(request, "login.html", {"error": "That is not the admin key."}, status=401)
    # Sessions nobody came back for go at the next sign-in: no background task needed.
    idle, lifetime = lifetimes(state)
    await state.store.sessions.sweep(idle=idle, lifetime=lifetime)
    secret, session = await state.store.sessions.create(address)
    await state.store.audit.record(f"console:{session.label}", "login", address=address)
    response = see_other(f"{base_path(request)}/")
    set_cookie(request, response, secret)
    return response


@change
async def logout(request: web.Request, signed: Signed, form: dict[str, str]) -> web.StreamResponse:
    state = request.app[STATE]
    await state.store.sessions.delete(signed.secret)
    await state.store.audit.record(signed.actor, "logout", address=_address(request))
    response = see_other(f"{base_path(request)}/")
    clear_cookie(request, response)
    return response
