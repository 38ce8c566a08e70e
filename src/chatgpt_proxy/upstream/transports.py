"""The one place that picks the upstream transport from the settings (``server.upstream_http``)."""

from __future__ import annotations

from chatgpt_proxy.settings.sections import ServerSettings
from chatgpt_proxy.upstream.httpx_transport import HttpxTransport
from chatgpt_proxy.upstream.transport import AiohttpTransport, Transport


def build_transport(server: ServerSettings) -> Transport:
    """HTTP/1.1 over aiohttp, or HTTP/2 over httpx2 (``ConfigError`` without the extra).

    ``max_upstream_connections`` caps the connections either way (0: no cap; unset: one per
    request the process may hold in flight). Over HTTP/2 short calls need no lane of their own:
    a connection carries up to 100 streams, and a new one opens when all are taken.
    """
    lasting = server.max_upstream_connections
    cap = server.max_requests_in_flight if lasting is None else lasting
    http1 = AiohttpTransport(
        max_connections=cap, short_connections=server.max_short_upstream_connections
    )
    if server.upstream_http == "2":
        # Realtime's WebSockets are HTTP/1.1 upgrades, so HTTP/2 leaves them to aiohttp.
        return HttpxTransport(max_connections=cap, sockets=http1)
    return http1
