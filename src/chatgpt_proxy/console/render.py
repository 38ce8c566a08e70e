"""Rendering console pages: the template environment, the page wrapper, form reading."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from chatgpt_proxy.console.guard import Refused, Signed, check_change, protect, signed_in
from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.state import STATE

PageHandler = Callable[[web.Request, Signed], Awaitable[web.StreamResponse]]
ChangeHandler = Callable[[web.Request, Signed, dict[str, str]], Awaitable[web.StreamResponse]]
# The policy fields a key's form edits, and how each is read from text.
INT_FIELDS = ("rpm", "tpm", "max_concurrency", "daily_token_budget", "total_token_budget")
FLOAT_FIELDS = ("daily_cost_budget", "total_cost_budget")


def setup(app: web.Application) -> None:
    """The console's templates, autoescaped: nothing from a request is ever markup."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("chatgpt_proxy.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def base_path(request: web.Request) -> str:
    """Where the console lives as the browser sees it: behind ``server.root_path``."""
    return f"{request.app[STATE].settings.server.root_path}/admin"


def render(
    request: web.Request,
    template: str,
    context: Mapping[str, Any],
    *,
    signed: Signed | None = None,
    status: int = 200,
) -> web.Response:
    values = {
        "base": base_path(request),
        "signed": signed,
        "csrf": signed.csrf if signed is not None else "",
        **context,
    }
    response = aiohttp_jinja2.render_template(template, request, values, status=status)
    protect(response)
    return response


def refused(request: web.Request, refusal: Refused, signed: Signed | None = None) -> web.Response:
    return render(
        request, "refused.html", {"message": refusal.message}, signed=signed, status=refusal.status
    )


def see_other(location: str) -> web.Response:
    """A redirect after a form (returned: the route wrapper treats a raised one as an error)."""
    response = web.Response(status=303, headers={"Location": location})
    protect(response)
    return response


def to_login(request: web.Request) -> web.Response:
    """Back to the sign-in form; htmx follows HX-Redirect instead of swapping the form in."""
    target = f"{base_path(request)}/"
    if request.headers.get("HX-Request") == "true":
        response = web.Response(status=204, headers={"HX-Redirect": target})
        protect(response)
        return response
    return see_other(target)


def page(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A page for signed-in operators; anyone else is sent to the sign-in form."""

    @functools.wraps(handler)
    async def show(request: web.Request) -> web.StreamResponse:
        signed = await signed_in(request)
        if signed is None:
            return to_login(request)
        try:
            return await handler(request, signed)
        except Refused as refusal:
            return refused(request, refusal, signed)

    return show


def change(handler: ChangeHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A state-changing POST: same origin, a live session, the right CSRF token."""

    @functools.wraps(handler)
    async def act(request: web.Request) -> web.StreamResponse:
        form = await read_form(request)
        try:
            signed = await check_change(request, form)
        except Refused as refusal:
            return refused(request, refusal)
        try:
            return await handler(request, signed, form)
        except Refused as refusal:
            return refused(request, refusal, signed)
        except ProxyError as err:  # the store's validation: a bad limit, name or date
            return refused(request, Refused(err.status, err.message), signed)

    return act


async def read_form(request: web.Request) -> dict[str, str]:
    if request.method != "POST":
        return {}
    posted = await request.post()
    return {name: value for name, value in posted.items() if isinstance(value, str)}


def policy_document(form: Mapping[str, str], *, blank_clears: bool) -> dict[str, Any]:
    """A key's form as the admin API's JSON body: numbers as numbers, models as a list.

    An empty field means "no limit" when changing a key, "the default" when creating one.
    """
    document: dict[str, Any] = {}
    for name in (*INT_FIELDS, *FLOAT_FIELDS, "models", "expires_at"):
        if name not in form:
            continue
        text = form[name].strip()
        if not text:
            if blank_clears:
                document[name] = [] if name == "models" else None
            continue
        document[name] = _field_value(name, text)
    if form.get("name", "").strip():
        document["name"] = form["name"].strip()
    return document


def _field_value(name: str, text: str) -> Any:
    try:
        if name in INT_FIELDS:
            return int(text)
        if name in FLOAT_FIELDS:
            return float(text)
    except ValueError as exc:
        raise Refused(400, f"{name} must be a number.") from exc
    if name == "models":
        return [model.strip() for model in text.split(",") if model.strip()]
    return text
