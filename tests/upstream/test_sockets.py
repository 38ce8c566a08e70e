"""Upstream WebSockets opened on pool keys: a refused upgrade is judged like a refused request."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.errors import (
    ConnectFailed,
    ModelNotFound,
    SocketRefused,
    TransportError,
    TransportTimeout,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from chatgpt_proxy.settings import PoolSettings, RetrySettings, TimeoutSettings, UpstreamSettings
from chatgpt_proxy.upstream.pool import KeyState
from chatgpt_proxy.upstream.router import Router, Upstream
from chatgpt_proxy.upstream.sockets import SocketOpener
from chatgpt_proxy.upstream.transport import (
    SocketFrame,
    SocketRequest,
    TransportRequest,
    TransportResponse,
    UpstreamSocket,
)
from chatgpt_proxy.upstream.transport import Transport as BaseTransport

MODEL = "gpt-realtime"


class _Socket(UpstreamSocket):
    def __init__(self) -> None:
        self.protocol = "realtime"
        self.closed_with: int | None = None

    async def send(self, frame: SocketFrame) -> None:
        return None

    async def receive(self) -> SocketFrame:
        return SocketFrame("close", code=1000)

    async def close(self, code: int = 1000) -> None:
        self.closed_with = code


class _Sockets(BaseTransport):
    """Opens sockets as scripted: each failure in turn, then a socket."""

    def __init__(self, *failures: TransportError) -> None:
        self.failures = list(failures)
        self.requests: list[SocketRequest] = []
        self.socket = _Socket()

    async def send(self, request: TransportRequest) -> TransportResponse:
        raise AssertionError("no HTTP request expected")

    async def connect_socket(self, request: SocketRequest) -> UpstreamSocket:
        self.requests.append(request)
        if self.failures:
            raise self.failures.pop(0)
        return self.socket

    async def close(self) -> None:
        return None


def _upstream(**settings: object) -> Upstream:
    config = {"name": "openai", "keys": ["sk-one", "sk-two", "sk-three"], **settings}
    return Router.from_settings([UpstreamSettings.model_validate(config)], PoolSettings()).route(
        MODEL
    )


def _open(transport: _Sockets, upstream: Upstream, protocols: tuple[str, ...] = ()) -> object:
    opener = SocketOpener(transport, TimeoutSettings(), RetrySettings())
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer pk-client", "X-Other": "1"}))

    async def main() -> object:
        try:
            lease = await opener.open(
                upstream, "/realtime", f"model={MODEL}", headers, MODEL, protocols
            )
        except Exception as exc:
            return exc
        await lease.close(4000)
        return lease

    return asyncio.run(main())


def test_the_socket_goes_to_the_ws_url_with_a_pool_key_and_the_allowed_headers() -> None:
    transport = _Sockets()
    upstream = _upstream(base_url="https://api.example.com/v1")
    _open(transport, upstream, ("realtime",))
    (request,) = transport.requests
    assert request.url == f"wss://api.example.com/v1/realtime?model={MODEL}"
    assert request.headers["Authorization"] in ("Bearer sk-one", "Bearer sk-two", "Bearer sk-three")
    assert "X-Other" not in request.headers  # an allowlist, as for every request upstream
    assert request.protocols == ("realtime",)
    assert transport.socket.closed_with == 4000
    assert all(key.inflight == 0 for key in upstream.pool.keys())  # given back on close


def test_an_azure_upstream_gets_its_key_in_api_key_and_its_query() -> None:
    transport = _Sockets()
    upstream = _upstream(
        base_url="http://azure.example/openai", auth="api-key", query={"api-version": "x"}
    )
    _open(transport, upstream)
    (request,) = transport.requests
    assert request.url == f"ws://azure.example/openai/realtime?model={MODEL}&api-version=x"
    assert "Authorization" not in request.headers and request.headers["api-key"].startswith("sk-")


def test_a_refused_key_is_retired_and_another_tried() -> None:
    transport = _Sockets(SocketRefused("WSServerHandshakeError", status=401))
    upstream = _upstream()
    _open(transport, upstream)
    first, second = (r.headers["Authorization"] for r in transport.requests)
    assert first != second
    states = {key.secret: key.state for key in upstream.pool.keys()}
    assert states[first.removeprefix("Bearer ")] is KeyState.RETIRED


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (SocketRefused("WSServerHandshakeError", status=429), UpstreamRateLimited),
        (SocketRefused("WSServerHandshakeError", status=500), UpstreamError),
        (SocketRefused("WSServerHandshakeError", status=404), ModelNotFound),
        (ConnectFailed("ClientConnectorError"), UpstreamError),
        (TransportTimeout("TimeoutError"), UpstreamTimeout),
    ],
)
def test_when_every_try_fails_the_last_failure_is_the_answer(
    failure: TransportError, expected: type[Exception]
) -> None:
    transport = _Sockets(failure, failure, failure)
    answer = _open(transport, _upstream())
    assert isinstance(answer, expected)
    assert "sk-" not in str(answer)
    assert len(transport.requests) == RetrySettings().max_attempts
