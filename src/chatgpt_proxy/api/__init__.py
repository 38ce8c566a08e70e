"""The HTTP routes, one module per endpoint family; the route table is an allowlist."""

from aiohttp import web

from chatgpt_proxy.api.admin import admin_routes
from chatgpt_proxy.api.health import health_routes
from chatgpt_proxy.api.interactions import interaction_routes
from chatgpt_proxy.api.me import me_routes
from chatgpt_proxy.api.models import model_routes
from chatgpt_proxy.api.proxy import proxy_routes
from chatgpt_proxy.api.realtime import realtime_routes
from chatgpt_proxy.console import add_console
from chatgpt_proxy.exchange import no_route
from chatgpt_proxy.state import STATE, served


def add_routes(app: web.Application) -> None:
    """Every route of ``app``, whose ``STATE`` is set: the proxy's pipelines are built here."""
    # /v1/models before /v1/models/{model}, which would not match it anyway
    state = app[STATE]
    routes = [*model_routes(), *proxy_routes(state), *realtime_routes(state)]
    routes += [*admin_routes(), *health_routes()]
    settings = app[STATE].settings
    if settings.console.enabled:
        routes += add_console(app, settings)
    for route in [*routes, *me_routes(), *interaction_routes(settings.discord)]:
        web.route(route.method, route.path, served(route.handler), **route.kwargs).register(
            app.router
        )
    # Last: what no route above took gets its 404 or 405 in OpenAI's format.
    app.router.add_route("*", r"/{path:[\s\S]*}", served(no_route))  # newlines too
