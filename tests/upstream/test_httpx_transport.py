"""The HTTP/2 transport's own behaviour (its contract with the proxy is tested with aiohttp's in
``test_transport.py``): streams share a connection up to its cap, then a new one opens; and a
missing extra is a clear configuration error."""

from __future__ import annotations

import asyncio
import sys

import pytest

from asgi_upstream import asgi_app, serve_h2c
from chatgpt_proxy.errors import ConfigError
from chatgpt_proxy.upstream import httpx_transport
from chatgpt_proxy.upstream.httpx_transport import HttpxTransport
from chatgpt_proxy.upstream.transport import Timeouts, TransportRequest, TransportResponse


def test_streams_share_a_connection_until_it_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpx_transport, "STREAMS_PER_CONNECTION", 2)

    async def main() -> list[bytes]:
        async with serve_h2c(asgi_app()) as base:
            transport = HttpxTransport(max_connections=4)
            request = TransportRequest("GET", base + "/held", {}, timeouts=Timeouts(5.0, 5.0))
            held: list[TransportResponse] = []
            try:
                for _ in range(3):
                    held.append(await transport.send(request))
                return [await response.read_chunk() for response in held]
            finally:
                for response in held:
                    response.close()
                await transport.close()

    ports = asyncio.run(main())
    assert ports[0] == ports[1] != ports[2]  # the third stream found the first connection full


def test_without_the_extra_the_transport_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "httpx2", None)  # an import of it fails
    httpx_transport._errors.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"chatgpt-proxy\[http2\]"):
            HttpxTransport()
    finally:
        httpx_transport._errors.cache_clear()
