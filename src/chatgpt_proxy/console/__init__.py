"""The operator's web console at ``/admin/``: server-rendered pages, htmx, no build step.

Pages live under ``/admin/`` (sign-in and overview) and ``/admin/console/...``; its files under
``/admin/static/``. The JSON admin API keeps ``/admin/keys``, ``/admin/upstreams``... and its
Bearer authentication: the two share no path, and neither accepts the other's credentials.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from chatgpt_proxy.auth import FailedAuthThrottle
from chatgpt_proxy.console import keys, reports, signin
from chatgpt_proxy.console.guard import GUARD, Guard
from chatgpt_proxy.console.overview import overview_figures
from chatgpt_proxy.console.render import setup
from chatgpt_proxy.exchange import context
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.state import Handler

STATIC = Path(__file__).parent / "static"


def console_routes() -> list[web.RouteDef]:
    return [
        web.get("/admin/", signin.home),
        web.post("/admin/login", signin.login),
        web.post("/admin/logout", signin.logout),
        web.get("/admin/console/overview", overview_figures),
        web.get("/admin/console/keys", keys.list_keys),
        web.post("/admin/console/keys", keys.create_key),
        web.get("/admin/console/keys/{id}", keys.show_key),
        web.post("/admin/console/keys/{id}", keys.update_key),
        web.post("/admin/console/keys/{id}/revoke", keys.revoke_key),
        web.get("/admin/console/upstreams", reports.upstreams),
        web.post("/admin/console/upstreams/{alias}/readmit", reports.readmit),
        web.get("/admin/console/usage", reports.usage),
        web.get("/admin/console/usage.csv", reports.usage_csv),
        web.get("/admin/console/moderation", reports.moderation),
        web.get("/admin/console/audit", reports.audit),
    ]


def add_console(app: web.Application, settings: Settings) -> list[web.RouteDef]:
    """Set the console up on ``app`` (its templates, files, sign-in throttle); its routes."""
    console = settings.console
    app[GUARD] = Guard(
        FailedAuthThrottle(console.failed_login_limit, 60.0, console.failed_login_block_seconds)
    )
    setup(app)
    app.router.add_static("/admin/static", STATIC, append_version=False)
    return [web.route(r.method, r.path, _labelled(r.handler)) for r in console_routes()]


def _labelled(handler: Handler) -> Handler:
    """``handler``, its requests counted in /metrics and the access log as "console"."""

    async def handle(request: web.Request) -> web.StreamResponse:
        context(request).endpoint = "console"
        return await handler(request)

    return handle
