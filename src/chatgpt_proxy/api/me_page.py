"""The key holders' page: sign in with a ``pk-`` key, see your own standing, sign out.

A narrow session of its own (DESIGN §3.9): a random id in an ``HttpOnly``, ``SameSite=Strict``
cookie scoped to ``/me``, only its hash in the database (so every replica knows it); the key
itself is sent once, in the sign-in form's body, and never put in a cookie, URL or script.
Every POST must come from this origin (``Origin``), and signing out carries a CSRF token
derived from the session id. The page has no script; its CSP forbids any.

    GET  /me/page          the sign-in form, or the signed-in holder's standing
    POST /me/page/login    form field ``key``
    POST /me/page/logout   form field ``csrf``
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from aiohttp import web

from chatgpt_proxy.errors import AuthenticationFailed, PermissionDenied
from chatgpt_proxy.exchange import context
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.requestbody import check_declared_length
from chatgpt_proxy.selfservice.standing import Standing
from chatgpt_proxy.state import STATE, AppState

COOKIE = "holder_session"
SESSION_HOURS = 12
MAX_FORM_BYTES = 4096
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _csrf(session_id: str) -> str:
    # Derived from the secret session id: a page of another origin can neither read nor guess it.
    return hmac.new(session_id.encode(), b"holder-page-csrf", hashlib.sha256).hexdigest()


async def page(request: web.Request) -> web.Response:
    state = _state(request)
    found = await _session(state, request)
    if found is None:
        return _html(_SIGN_IN)
    session_id, key = found
    return _html(_standing_page(await Standing.of(state.store, key), _csrf(session_id)))


async def login(request: web.Request) -> web.Response:
    state = _state(request)
    _same_origin(request)
    form = await _form(request)
    secret = form.get("key", "")
    try:
        key = state.keys.authenticate(f"Bearer {secret.strip()}", request.remote)
    except AuthenticationFailed:
        response = _html("<p>That key is not valid.</p>" + _SIGN_IN)
        response.set_status(401)
        return response
    session_id = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(hours=SESSION_HOURS)
    await state.store.owners.start_session(_hash(session_id), key.id, expires)
    response = _html(_standing_page(await Standing.of(state.store, key), _csrf(session_id)))
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=SESSION_HOURS * 3600,
        path="/me",
        secure=request.secure,
        httponly=True,
        samesite="Strict",
    )
    return response


async def logout(request: web.Request) -> web.Response:
    state = _state(request)
    _same_origin(request)
    form = await _form(request)
    session_id = request.cookies.get(COOKIE, "")
    if not session_id or not hmac.compare_digest(
        form.get("csrf", "").encode(), _csrf(session_id).encode()
    ):
        raise PermissionDenied("Missing or invalid CSRF token.")
    await state.store.owners.end_session(_hash(session_id))
    response = _html(_SIGN_IN)
    response.del_cookie(COOKIE, path="/me")
    return response


def _state(request: web.Request) -> AppState:
    context(request).endpoint = "me.page"
    return request.app[STATE]


async def _session(state: AppState, request: web.Request) -> tuple[str, ClientKey] | None:
    session_id = request.cookies.get(COOKIE)
    if not session_id or len(session_id) > 100:
        return None
    key = await state.store.owners.session_key(_hash(session_id))
    if key is None or not key.is_active(datetime.now(UTC)):
        return None  # a revoked or expired key ends its sessions too
    context(request).key_id = key.id
    return session_id, key


def _same_origin(request: web.Request) -> None:
    """Refuse a POST that a browser did not send from this very origin."""
    origin = request.headers.get("Origin")
    if origin is None or urlsplit(origin).netloc != request.host:
        raise PermissionDenied("This form must be sent from this site's own page.")


async def _form(request: web.Request) -> dict[str, str]:
    check_declared_length(request, MAX_FORM_BYTES)
    if request.content_type != "application/x-www-form-urlencoded":
        return {}
    data = await request.post()
    return {name: value for name, value in data.items() if isinstance(value, str)}


def _html(body: str) -> web.Response:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Your key</title></head>"
        f'<body style="font-family:sans-serif;max-width:40em;margin:2em auto">{body}</body></html>'
    )
    return web.Response(text=document, content_type="text/html", headers=_HEADERS)


_SIGN_IN = (
    "<h1>Your key's usage</h1>"
    '<form method="post" action="/me/page/login">'
    '<label>Key <input name="key" type="password" autocomplete="off" required></label> '
    "<button>Sign in</button></form>"
)


def _standing_page(standing: Standing, csrf: str) -> str:
    rows = "".join(
        f"<tr><td>{row.day.isoformat()}</td><td>{html.escape(row.model)}</td>"
        f"<td>{row.requests}</td><td>{row.total_tokens}</td></tr>"
        for row in standing.rows
    )
    return (
        "<h1>Your key's usage</h1>"
        f"<pre>{html.escape(standing.summary())}</pre>"
        "<table><tr><th>Day</th><th>Model</th><th>Requests</th><th>Tokens</th></tr>"
        f"{rows}</table>"
        '<form method="post" action="/me/page/logout">'
        f'<input type="hidden" name="csrf" value="{csrf}"><button>Sign out</button></form>'
    )


def me_page_routes() -> list[web.RouteDef]:
    return [
        web.get("/me/page", page),
        web.post("/me/page/login", login),
        web.post("/me/page/logout", logout),
    ]
