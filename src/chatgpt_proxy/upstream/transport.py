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

``AiohttpTransport`` is the real one; ``FakeTransport`` (``upstream.fake_transport``) answers
from a script, in process, for tests.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import aiohttp
from multidict import CIMultiDictProxy

from chatgpt_proxy.errors import BrokenBody, ConnectFailed, TransportTimeout


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
    """One request to send: ``url`` is absolute, ``headers`` final (the key included)."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | AsyncIterable[bytes] | None = None
    timeouts: Timeouts = NO_LIMITS


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

    def at_end(self) -> bool:
        """Whether the body has been read to its end, without waiting: nothing is left
        buffered and the end has arrived (``False`` when that cannot be told)."""
        return False

    @abstractmethod
    def release(self) -> None:
        """Done with the answer: its connection may serve another request."""

    @abstractmethod
    def close(self) -> None:
        """Drop the connection now; the upstream sees the request cancelled."""


class Transport(ABC):
    """Sends requests upstream; ``send`` returns once the answer's headers are in."""

    @abstractmethod
    async def send(self, request: TransportRequest) -> TransportResponse:
        """The answer to ``request``; ``ConnectFailed`` or ``TransportTimeout`` if none."""

    @abstractmethod
    async def close(self) -> None:
        """Release what the transport holds (connections); it sends nothing after."""


class AiohttpTransport(Transport):
    """The transport over an aiohttp ``ClientSession`` of its own.

    >>> transport = AiohttpTransport(max_connections=100)   # in a running event loop
    >>> response = await transport.send(request)
    >>> await transport.close()

    Redirects are never followed (a 3xx is an answer, judged by the caller), and cookies are
    never kept: upstream cookies are the account's, never a client's.
    """

    def __init__(self, *, max_connections: int = 100) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, enable_cleanup_closed=True),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
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
        answer = self._session.request(
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

    async def close(self) -> None:
        await self._session.close()


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

    def at_end(self) -> bool:
        return self._content.at_eof()  # public: buffer empty and the end of the body fed

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


def _cause(exc: BaseException) -> str:
    """The foreign exception's class: its text may name hosts or carry what a server said."""
    return type(exc).__name__
