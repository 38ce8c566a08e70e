"""Who may use the console: sessions, their cookie, CSRF tokens, the Origin check, sign-in
throttling and the security headers of every page (DESIGN §3.9).

The cookie holds a random session id and nothing else (never a key); the database holds only
its hash. A change (any POST) must come from a page of this console: its Origin (or Referer)
names this host, and it carries the CSRF token derived from the session id, which a page of
another site can neither read nor guess.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from aiohttp import web

from chatgpt_proxy.auth import FailedAuthThrottle
from chatgpt_proxy.console.passwords import verify_password
from chatgpt_proxy.keystore.sessions import ConsoleSession
from chatgpt_proxy.state import STATE, AppState

COOKIE = "chatgpt_proxy_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
# Only the proxy's own files: no inline script or style, no other origin, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """A console request refused: its status and a sentence for the operator."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Signed:
    """A request's live session, the id from its cookie and the CSRF token pages embed."""

    session: ConsoleSession
    secret: str

    @property
    def csrf(self) -> str:
        return csrf_token(self.secret)

    @property
    def actor(self) -> str:
        return f"console:{self.session.label}"


@dataclass(slots=True)
class Guard:
    """The console's per-process state: the failed sign-in throttle."""

    throttle: FailedAuthThrottle


GUARD = web.AppKey("console_guard", Guard)


def csrf_token(secret: str) -> str:
    """The session's CSRF token: derived from its id, so no table holds it and no replica
    disagrees; the id cannot be recovered from it."""
    return hmac.new(secret.encode(), b"console-csrf", hashlib.sha256).hexdigest()


def lifetimes(state: AppState) -> tuple[timedelta, timedelta]:
    """How long a session may stay idle, and live at most."""
    console = state.settings.console
    return (
        timedelta(minutes=console.session_idle_minutes),
        timedelta(hours=console.session_max_hours),
    )


async def signed_in(request: web.Request) -> Signed | None:
    """The request's live session, or None (no cookie, unknown, expired or logged out)."""
    secret = request.cookies.get(COOKIE)
    if not secret:
        return None
    state = request.app[STATE]
    idle, lifetime = lifetimes(state)
    session = await state.store.sessions.find(secret, idle=idle, lifetime=lifetime)
    return None if session is None else Signed(session, secret)


def check_origin(request: web.Request) -> None:
    """Refuse a change that a page of another origin sent (the browser names it in Origin).

    The page's host is this request's Host, or the X-Forwarded-Host a reverse proxy that
    rewrote Host names. Trusting that header is safe here: a page of another site cannot set
    it on a request a browser sends for it (no CORS is allowed), so it cannot forge a match.
    """
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        raise Refused(403, "Refused: the request does not say which page sent it (no Origin).")
    hosts = {request.host.lower()}
    forwarded = request.headers.get("X-Forwarded-Host")
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip().lower())
    if urlsplit(origin).netloc.lower() not in hosts:
        raise Refused(403, "Refused: the request came from a page of another site.")


async def check_change(request: web.Request, form: dict[str, str]) -> Signed:
    """The session of a state-changing request, which must come from this console's page."""
    check_origin(request)
    signed = await signed_in(request)
    if signed is None:
        raise Refused(401, "Your session has ended: sign in again.")
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(sent.encode("utf-8", "replace"), signed.csrf.encode()):
        raise Refused(403, "Refused: the form's security token is missing or wrong. Reload it.")
    return signed


def can_sign_in(state: AppState) -> bool:
    """Whether any credential opens the console: never without one (no unguarded console)."""
    settings = state.settings
    return settings.auth.admin_key is not None or settings.console.admin_password_hash is not None


async def is_admin(state: AppState, candidate: str) -> bool:
    """Whether ``candidate`` is the admin key or the console's password."""
    admin_key = state.settings.auth.admin_key
    given = candidate.encode("utf-8", "replace")
    if admin_key is not None and hmac.compare_digest(given, admin_key.get_secret_value().encode()):
        return True
    stored = state.settings.console.admin_password_hash
    if stored is None or not candidate:
        return False
    # scrypt takes tens of milliseconds on purpose: off the event loop.
    return await asyncio.to_thread(verify_password, candidate, stored.get_secret_value())


def set_cookie(request: web.Request, response: web.StreamResponse, secret: str) -> None:
    state = request.app[STATE]
    console = state.settings.console
    secure = console.secure_cookie if console.secure_cookie is not None else request.secure
    response.set_cookie(
        COOKIE,
        secret,
        path=f"{state.settings.server.root_path}/admin",
        httponly=True,
        samesite="Strict",
        secure=secure,
        max_age=max(int(console.session_max_hours * 3600), 1),
    )


def clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
    root = request.app[STATE].settings.server.root_path
    response.del_cookie(COOKIE, path=f"{root}/admin")


def protect(response: web.StreamResponse) -> web.StreamResponse:
    """The headers every console page carries."""
    response.headers.update(PAGE_HEADERS)
    return response
