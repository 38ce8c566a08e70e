"""The one place that picks the upstream transport from the settings (``server.upstream_http``)."""

from __future__ import annotations

from chatgpt_proxy.settings.sections import ServerSettings
from chatgpt_proxy.upstream.httpx_transport import HttpxTransport
from chatgpt_proxy.upstream.transport import AiohttpTransport, Transport


def build_transport(server: ServerSettings) -> Transport:
    """HTTP/1.1 over aiohttp, or HTTP/2 over httpx2 (``ConfigError`` without the extra)."""
    if server.upstream_http == "2":
        return HttpxTransport(max_connections=server.max_upstream_connections)
    return AiohttpTransport(max_connections=server.max_upstream_connections)
