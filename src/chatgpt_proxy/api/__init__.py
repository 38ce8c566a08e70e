"""The HTTP routes, one module per endpoint family; the route table is an allowlist."""

from aiohttp import web

from chatgpt_proxy.api.admin import add_admin_routes
from chatgpt_proxy.api.health import add_health_routes
from chatgpt_proxy.api.models import add_model_routes
from chatgpt_proxy.api.proxy import add_proxy_routes


def add_routes(app: web.Application) -> None:
    add_model_routes(app)  # before /v1/models/{model}, which would not match it anyway
    add_proxy_routes(app)
    add_admin_routes(app)
    add_health_routes(app)
