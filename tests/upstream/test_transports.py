"""``server.upstream_http`` picks the transport, in one place."""

from __future__ import annotations

import asyncio

import pytest

from chatgpt_proxy.settings import ServerSettings
from chatgpt_proxy.upstream.httpx_transport import HttpxTransport
from chatgpt_proxy.upstream.transport import AiohttpTransport, Transport
from chatgpt_proxy.upstream.transports import build_transport


@pytest.mark.parametrize(("http", "kind"), [("1.1", AiohttpTransport), ("2", HttpxTransport)])
def test_the_setting_picks_the_transport(http: str, kind: type[Transport]) -> None:
    async def built() -> Transport:
        transport = build_transport(ServerSettings(upstream_http=http))
        await transport.close()
        return transport

    assert type(asyncio.run(built())) is kind


def test_http_1_1_is_the_default() -> None:
    assert ServerSettings().upstream_http == "1.1"
