"""The upstream client's one seam to the network: a request out, an answer in.

``Transport.send`` takes a ``TransportRequest`` and returns a ``TransportResponse`` once the
answer's headers are in; its body is then read with ``read_chunk()`` (what has arrived,
``b""`` at the end) or ``read(limit)``, and the response is given back with ``release()``
(the connection may serve another request) or ``close()`` (the connection is dropped: the
upstream sees the cancel). Failures of the network come out as the project's own
``TransportError`` tree (``errors``), translated here with ``from``: nothing above this module
catches or imports the HTTP client's exceptions::

    transport = AiohttpTransport(max_connections=100)
    request = TransportRequest("GET", url, headers, timeouts=Timeouts(10.0, 30.0, 30.0))
    response = await transport.send(request)
    try:
        body = await response.read(1024 * 1024)
    finally:
        response.release()
    await transport.close()

``connect_socket`` opens a WebSocket instead (the Realtime API): an ``UpstreamSocket`` whose
frames are the transport's own ``SocketFrame`` values, so that nothing above knows aiohttp's
client. ``AiohttpTransport`` is the real one; ``FakeTransport`` (``upstream.fake_transport``)
answers from a script, in process, for tests, and opens no sockets.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import aiohttp
from multidict import CIMultiDictProxy

from chatgpt_proxy.errors import BrokenBody, ConnectFailed, SocketRefused, TransportTimeout

# Largest WebSocket message taken from an upstream (Realtime audio comes base64 in JSON).
MAX_SOCKET_MESSAGE = 16 * 1024 * 1024
_SOCKET_CLOSE_WAIT = 2.0  # seconds a closing socket waits for the other side's close frame
# Close codes that name a state, not a code one may send (RFC 6455 §7.4.1).
_UNSENDABLE_CODES = frozenset({1004, 1005, 1006, 1015})

# Connections for short calls when the caller names no number (tests, the bench, one-offs).
_SHORT_CONNECTIONS = 100


class Timeouts(NamedTuple):  # a tuple: one is built for most attempts, cheaper than a dataclass
    """How long one request may wait on its upstream, in seconds; ``None`` is no limit.

    ``connect``: to open a connection. ``first_byte``: from sending the request to the
    answer's headers. ``idle``: the longest silence between two pieces of the body (when
    shorter than ``first_byte``, it bounds the wait for the headers too); ``None`` when the
    caller watches the silence itself (``upstream.idle``), so that no timer is re-armed on
    every chunk.

    >>> Timeouts(connect=10.0, first_byte=600.0, idle=600.0)  # an answer that comes whole
    >>> Timeouts(connect=10.0, first_byte=60.0)               # a stream, watched for silence
    """

    connect: float | None = None
    first_byte: float | None = None
    idle: float | None = None

    def within(self, seconds: float) -> Timeouts:
        """These limits, with no wait on the answer longer than ``seconds``."""
        first_byte, idle = self.first_byte, self.idle
        if (first_byte is None or seconds < first_byte) or (idle is not None and seconds < idle):
            first_byte = seconds if first_byte is None else min(first_byte, seconds)
            idle = None if idle is None else min(idle, seconds)
            return Timeouts(self.connect, first_byte, idle)
        return self


NO_LIMITS = Timeouts()


@dataclass(slots=True)
class TransportRequest:
    """One request to send: ``url`` is absolute, ``headers`` final (the key included).

    ``lasting``: the answer may hold its connection for minutes (a stream, a generation); a
    short call (a moderation, the model list, embeddings, a key probe) is not, and is sent over
    connections of its own, so that it never waits behind thousands of open streams.
    """

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | AsyncIterable[bytes] | None = None
    timeouts: Timeouts = NO_LIMITS
    lasting: bool = False


class TransportResponse(ABC):
    """An answer whose headers have arrived; its body is read from the network as asked.

    ``read_chunk`` and ``read`` raise ``TransportTimeout`` or ``BrokenBody`` when the body
    stops short; after ``close()`` (from any task) a read ends the body: ``b""`` or
    ``BrokenBody``.
    """

    status: int
    headers: CIMultiDictProxy[str]
    content_type: str  # the media type alone, lower case: "application/json"
    content_length: int | None

    @abstractmethod
    async def read_chunk(self) -> bytes:
        """What has arrived of the body (waiting for something); ``b""`` at its end."""

    async def read(self, limit: int) -> bytes:
        """The body up to ``limit`` bytes (less only when it ends first)."""
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = await self.read_chunk()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
        return body[:limit] if size > limit else body

    @abstractmethod
    def release(self) -> None:
        """Done with the answer: its connection may serve another request."""

    @abstractmethod
    def close(self) -> None:
        """Drop the connection now; the upstream sees the request cancelled."""


class SocketFrame(NamedTuple):
    """One WebSocket frame: ``text`` (``data`` a str), ``binary``, ``ping`` or ``pong`` (bytes),
    or ``close`` with its ``code`` (None when the connection ended without one)."""

    kind: Literal["text", "binary", "ping", "pong", "close"]
    data: str | bytes = b""
    code: int | None = None


def sendable_close_code(code: int | None) -> int:
    """A close code that may go on the wire: a code received, or 1000 for one that may not."""
    if code is None or code in _UNSENDABLE_CODES or not 1000 <= code <= 4999:
        return 1000
    return code


@dataclass(slots=True)
class SocketRequest:
    """A WebSocket to open: ``url`` is absolute (ws:// or wss://), ``headers`` final."""

    url: str
    headers: Mapping[str, str]
    protocols: tuple[str, ...] = ()
    timeouts: Timeouts = NO_LIMITS


class UpstreamSocket(ABC):
    """An open WebSocket to an upstream. Pings and pongs are frames like the others (they are
    relayed, not answered here). ``receive`` returns a ``close`` frame once the socket ends,
    and raises ``BrokenBody`` when it broke."""

    protocol: str | None  # the subprotocol the upstream agreed to

    @abstractmethod
    async def send(self, frame: SocketFrame) -> None:
        """Send one frame; ``BrokenBody`` when the socket is gone."""

    @abstractmethod
    async def receive(self) -> SocketFrame:
        """The next frame from the upstream."""

    @abstractmethod
    async def close(self, code: int = 1000) -> None:
        """Close the socket (briefly waiting for the upstream's close frame); idempotent."""


class Transport(ABC):
    """Sends requests upstream; ``send`` returns once the answer's headers are in."""

    @abstractmethod
    async def send(self, request: TransportRequest) -> TransportResponse:
        """The answer to ``request``; ``ConnectFailed`` or ``TransportTimeout`` if none."""

    async def connect_socket(self, request: SocketRequest) -> UpstreamSocket:
        """An open WebSocket; ``SocketRefused`` (with the status) when the upstream answered
        the upgrade with another status, ``ConnectFailed`` or ``TransportTimeout`` if none."""
        raise ConnectFailed(f"{type(self).__name__} opens no WebSockets")

    @abstractmethod
    async def close(self) -> None:
        """Release what the transport holds (connections); it sends nothing after."""


class AiohttpTransport(Transport):
    """The transport over two aiohttp client sessions of its own, one per lane.

    >>> transport = AiohttpTransport(max_connections=8000, short_connections=500)
    >>> response = await transport.send(request)   # in a running event loop
    >>> await transport.close()

    Lasting requests (``TransportRequest.lasting``) share ``max_connections`` (0: no cap);
    short calls have ``short_connections`` of their own. With one pool for both, a process
    holding as many open streams as it had connections made every new request's moderation
    wait for one of them to end. Redirects are never followed (a 3xx is an answer, judged by
    the caller), and cookies are never kept: upstream cookies are the account's, never a
    client's.
    """

    def __init__(
        self, *, max_connections: int = 100, short_connections: int = _SHORT_CONNECTIONS
    ) -> None:
        self._session = _session(max_connections)
        self._short_session = _session(short_connections)
        self._limits = aiohttp.ClientTimeout(total=None)  # immutable, so safe to share

    async def send(self, request: TransportRequest) -> TransportResponse:
        timeouts = request.timeouts
        # sock_read bounds the wait for the headers and for every next chunk (aiohttp re-arms
        # it per chunk); an answer whose silence the caller watches has none, and its headers
        # are waited for under a timeout of their own.
        limits = self._limits
        if limits.sock_connect != timeouts.connect or limits.sock_read != timeouts.idle:
            # Nearly every request has the same limits (the settings'): the last ones built
            # are reused, which spares building an attrs object per request.
            limits = aiohttp.ClientTimeout(sock_connect=timeouts.connect, sock_read=timeouts.idle)
            self._limits = limits
        first_byte, idle = timeouts.first_byte, timeouts.idle
        session = self._session if request.lasting else self._short_session
        answer = session.request(
            request.method,
            request.url,
            headers=request.headers,
            data=request.body,
            allow_redirects=False,
            timeout=limits,
        )
        try:
            if first_byte is None or (idle is not None and idle <= first_byte):
                response = await answer
            else:
                async with asyncio.timeout(first_byte):
                    response = await answer
        except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
            raise TransportTimeout(_cause(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectFailed(_cause(exc)) from exc
        return _AiohttpResponse(response)

    async def connect_socket(self, request: SocketRequest) -> UpstreamSocket:
        opening = self._session.ws_connect(
            request.url,
            headers=request.headers,
            protocols=request.protocols,
            autoping=False,  # pings and pongs are relayed between client and upstream
            autoclose=True,
            max_msg_size=MAX_SOCKET_MESSAGE,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_SOCKET_CLOSE_WAIT),
        )
        try:
            # The whole upgrade (connecting included) within first_byte: ws_connect has no
            # timeout of its own for the handshake.
            async with asyncio.timeout(request.timeouts.first_byte):
                socket = await opening
        except aiohttp.WSServerHandshakeError as exc:
            raise SocketRefused(_cause(exc), status=exc.status) from exc
        except TimeoutError as exc:
            raise TransportTimeout(_cause(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectFailed(_cause(exc)) from exc
        return _AiohttpSocket(socket)

    async def close(self) -> None:
        await self._session.close()
        await self._short_session.close()


def _session(max_connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, enable_cleanup_closed=True),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class _AiohttpSocket(UpstreamSocket):
    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self.protocol = socket.protocol

    async def send(self, frame: SocketFrame) -> None:
        socket, data = self._socket, frame.data
        try:
            if frame.kind == "text":
                await socket.send_str(data if isinstance(data, str) else data.decode())
            elif frame.kind == "close":
                await self.close(sendable_close_code(frame.code))
            else:
                raw = data.encode() if isinstance(data, str) else data
                if frame.kind == "binary":
                    await socket.send_bytes(raw)
                elif frame.kind == "ping":
                    await socket.ping(raw)
                else:
                    await socket.pong(raw)
        except (aiohttp.ClientError, OSError) as exc:
            raise BrokenBody(_cause(exc)) from exc

    async def receive(self) -> SocketFrame:
        message = await self._socket.receive()
        kind = message.type
        if kind == aiohttp.WSMsgType.TEXT:
            return SocketFrame("text", message.data)
        if kind == aiohttp.WSMsgType.BINARY:
            return SocketFrame("binary", message.data)
        if kind == aiohttp.WSMsgType.PING:
            return SocketFrame("ping", message.data)
        if kind == aiohttp.WSMsgType.PONG:
            return SocketFrame("pong", message.data)
        if kind == aiohttp.WSMsgType.ERROR:
            raise BrokenBody(_cause(message.data))
        # CLOSE (its code in data), or CLOSING / CLOSED: the socket has ended.
        code = message.data if kind == aiohttp.WSMsgType.CLOSE else self._socket.close_code
        return SocketFrame("close", code=code)

    async def close(self, code: int = 1000) -> None:
        await self._socket.close(code=code)


class _AiohttpResponse(TransportResponse):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._content = response.content
        self.status = response.status
        self.headers = response.headers
        self.content_type = response.content_type
        self.content_length = response.content_length

    async def read_chunk(self) -> bytes:
        try:
            return await self._content.readany()
        except TimeoutError as exc:
            raise TransportTimeout(_cause(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise BrokenBody(_cause(exc)) from exc

    async def read(self, limit: int) -> bytes:
        # StreamReader.read(n) hands back up to n bytes of what is buffered, in fewer calls
        # than read_chunk would take.
        chunks: list[bytes] = []
        size = 0
        try:
            while size < limit:
                chunk = await self._content.read(limit - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except TimeoutError as exc:
            raise TransportTimeout(_cause(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise BrokenBody(_cause(exc)) from exc
        return b"".join(chunks)

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


def _cause(exc: BaseException) -> str:
    """The foreign exception's class: its text may name hosts or carry what a server said."""
    return type(exc).__name__
