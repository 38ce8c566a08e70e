"""Signing in and out of the console with the admin key, through a plain HTML form."""

from __future__ import annotations

from aiohttp import web

from chatgpt_proxy.console.guard import (
    GUARD,
    Refused,
    Signed,
    can_sign_in,
    check_origin,
    clear_cookie,
    is_admin,
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
from chatgpt_proxy.state import STATE


def _address(request: web.Request) -> str:
    return request.remote or "-"


async def home(request: web.Request) -> web.StreamResponse:
    """``/admin/``: the overview when signed in, else the sign-in form (or how to enable it)."""
    if not can_sign_in(request.app[STATE]):
        return render(request, "disabled.html", {}, status=403)
    signed = await signed_in(request)
    if signed is None:
        return render(request, "login.html", {"error": None})
    return await overview(request, signed)


async def login(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if not can_sign_in(state):
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
    if not await is_admin(state, form.get("password", "")):
        request.app[GUARD].throttle.failed(address)
        await state.store.audit.record("console", "login.failed", address=address)
        error = "That is not the admin key (or the console's password)."
        return render(request, "login.html", {"error": error}, status=401)
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
