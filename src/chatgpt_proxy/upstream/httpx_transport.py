"""The HTTP/2 transport: many requests as streams over few connections, with httpx2 and h2.

Selected by ``server.upstream_http: "2"`` (``pip install 'chatgpt-proxy[http2]'``). To an
``https://`` upstream HTTP/2 is agreed by ALPN; to an ``http://`` one it is spoken from the first
byte (h2c "prior knowledge"), so such an upstream must speak HTTP/2 in clear.

httpcore puts every request to an origin on one HTTP/2 connection and caps it at 100 streams
(its own ``SETTINGS_MAX_CONCURRENT_STREAMS``, or the server's when lower), queueing the rest
behind them: a long stream would hold a place a new request waits for. So this transport keeps
*lanes*, each an httpx2 transport allowed a single connection, gives a request the first lane
with a free stream, and opens another lane (at most ``max_connections``) when none has one::

    transport = HttpxTransport(max_connections=100)          # up to 100 x 100 streams
    response = await transport.send(request)

Known limit, measured in ``bench/h2_transport.py``: httpcore closes an abandoned stream without
an ``RST_STREAM``, so the upstream learns of a client's cancel only when the connection closes.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.errors import (
    BrokenBody,
    ConfigError,
    ConnectFailed,
    TransportError,
    TransportTimeout,
)
from chatgpt_proxy.upstream.transport import (
    SocketRequest,
    Transport,
    TransportRequest,
    TransportResponse,
    UpstreamSocket,
)

if TYPE_CHECKING:
    import httpx2

_MISSING_HTTPX = (
    "server.upstream_http is \"2\" but httpx2 or h2 is missing: pip install 'chatgpt-proxy[http2]'"
)
# httpcore's own cap on one connection's concurrent streams (its SETTINGS_MAX_CONCURRENT_STREAMS).
STREAMS_PER_CONNECTION = 100


@functools.cache
def _errors() -> tuple[type[BaseException], tuple[type[BaseException], ...]]:
    """httpx2's timeout, and what it and h2 raise for a failed exchange (httpcore lets some of
    h2's protocol errors through, a body shorter than announced among them); ``ConfigError``
    when the extra is missing."""
    try:
        import h2.exceptions
        import httpx2
    except ImportError as exc:
        raise ConfigError(_MISSING_HTTPX) from exc
    return httpx2.TimeoutException, (httpx2.TransportError, h2.exceptions.H2Error, OSError)


def _translate(exc: BaseException, failure: type[TransportError]) -> BaseException:
    """The project's error for httpx2's ``exc`` (``failure`` when not a timeout), or ``exc``."""
    timeout, error = _errors()
    if isinstance(exc, TimeoutError | timeout):
        return TransportTimeout(_cause(exc))
    if isinstance(exc, error):
        return failure(_cause(exc))
    return exc


class _Lane:
    """One httpx2 transport with a single connection, and how many streams it carries now."""

    __slots__ = ("open", "transport")

    def __init__(self, transport: httpx2.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.open = 0


class HttpxTransport(Transport):
    """Requests as HTTP/2 streams, up to ``STREAMS_PER_CONNECTION`` per connection, on at most
    ``max_connections`` connections (0: no cap).

    Like ``AiohttpTransport`` it never follows a redirect and keeps no cookie: it drives
    httpx2's transports directly, under the client layer that would.
    """

    def __init__(self, *, max_connections: int = 100, sockets: Transport | None = None) -> None:
        _errors()  # a missing extra is told at start-up, not at the first request
        import httpx2

        self._request = httpx2.Request
        self._max_lanes = max_connections or sys.maxsize  # 0: no cap, as with aiohttp
        self._lanes: dict[str, list[_Lane]] = {}  # by origin: a lane's one connection is to one
        self._count = 0
        self._closing: set[asyncio.Task[None]] = set()  # responses closed from sync code
        # WebSockets (the Realtime API) are HTTP/1.1 upgrades: ``sockets`` opens them.
        self._sockets = sockets

    async def send(self, request: TransportRequest) -> TransportResponse:
        timeouts = request.timeouts
        first_byte, idle = timeouts.first_byte, timeouts.idle
        outbound = self._request(
            request.method,
            request.url,
            headers=request.headers,
            content=request.body,
            # read bounds every wait on the network, headers and chunks alike, like aiohttp's
            # sock_read; pool is never waited on: a lane is chosen with a free stream.
            extensions={
                "timeout": {"connect": timeouts.connect, "read": idle, "write": None, "pool": None}
            },
        )
        lane = self._lane(request.url)
        lane.open += 1
        try:
            if first_byte is None or (idle is not None and idle <= first_byte):
                response = await lane.transport.handle_async_request(outbound)
            else:
                async with asyncio.timeout(first_byte):
                    response = await lane.transport.handle_async_request(outbound)
        except BaseException as exc:
            lane.open -= 1
            failure = _translate(exc, ConnectFailed)
            if failure is exc:
                raise
            raise failure from exc
        return _HttpxResponse(self, lane, response)

    def _lane(self, url: str) -> _Lane:
        scheme, _, rest = url.partition("://")
        lanes = self._lanes.setdefault(scheme + "://" + rest.partition("/")[0], [])
        for lane in lanes:
            if lane.open < STREAMS_PER_CONNECTION:
                return lane
        if self._count >= self._max_lanes and lanes:
            # Every stream of every connection taken: the request waits on the least loaded.
            return min(lanes, key=lambda lane: lane.open)
        lane = _Lane(_new_transport(_tls()))
        lanes.append(lane)
        self._count += 1
        return lane

    def finish(self, lane: _Lane, response: httpx2.Response) -> None:
        """The stream is done: its place on the lane is free, its closing runs aside."""
        lane.open -= 1
        task = asyncio.get_running_loop().create_task(response.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def connect_socket(self, request: SocketRequest) -> UpstreamSocket:
        if self._sockets is None:
            return await super().connect_socket(request)
        return await self._sockets.connect_socket(request)

    async def close(self) -> None:
        if self._sockets is not None:
            await self._sockets.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        lanes, self._lanes, self._count = self._lanes, {}, 0
        for origin in lanes.values():
            for lane in origin:
                await lane.transport.aclose()


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every lane: building one loads the CA store (~0.2 s, ~1 MB)."""
    import httpx2

    return httpx2.create_ssl_context()


def _new_transport(tls: ssl.SSLContext) -> httpx2.AsyncHTTPTransport:
    import httpx2

    return httpx2.AsyncHTTPTransport(
        verify=tls,
        http1=False,
        http2=True,
        limits=httpx2.Limits(max_connections=1, max_keepalive_connections=1),
        trust_env=False,  # the upstream is reached as configured, never through an env proxy
        retries=0,
    )


class _HttpxResponse(TransportResponse):
    def __init__(self, owner: HttpxTransport, lane: _Lane, response: httpx2.Response) -> None:
        self._owner = owner
        self._lane = lane
        self._response = response
        self._chunks: AsyncIterator[bytes] = response.aiter_raw()
        self._reader: asyncio.Task[object] | None = None
        self._done = False
        self.status = response.status_code
        self.headers = CIMultiDictProxy(CIMultiDict(response.headers.multi_items()))
        media = self.headers.get("Content-Type", "application/octet-stream")
        self.content_type = media.partition(";")[0].strip().lower()
        length = self.headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    async def read_chunk(self) -> bytes:
        if self._done:
            return b""
        reader = self._reader = asyncio.current_task()
        try:
            return await anext(self._chunks, b"")
        except asyncio.CancelledError:
            # close() from another task cancels the read it ends; any other cancel goes on.
            if self._done and reader is not None and reader.uncancel() == 0:
                return b""
            raise
        except BaseException as exc:
            failure = _translate(exc, BrokenBody)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            self._reader = None

    def release(self) -> None:
        self.close()  # an HTTP/2 stream is never reused: giving it back and dropping it are one

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._owner.finish(self._lane, self._response)


def _cause(exc: BaseException) -> str:
    """The foreign exception's class: its text may name hosts or carry what a server said."""
    return type(exc).__name__
