"""The server's edge: what every request passes before a route sees it.

aiohttp answers some requests itself, in plain text, before the app's routes run: no route
for a ``CONNECT``, an ``Expect`` it cannot honour, a body it cannot decode. ``Edge.serve``
runs in front of the app so that those are OpenAI's envelope too, and refuses at once what
would otherwise fail half-way through a handler (an unknown ``Content-Encoding``, a
``Content-Type`` that does not parse). It also holds the process's own limits: requests in
flight, with a bounded wait for a slot (an overloaded proxy answers 503 at once instead of
holding requests for seconds), and open connections per client address::

    edge = Edge(settings.server, app_handler, request_ids)
    response = await edge.serve(request)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from urllib.parse import unquote

from aiohttp import HttpVersion10, HttpVersion11, web

from chatgpt_proxy.errors import (
    ExpectationFailed,
    InvalidContentType,
    Overloaded,
    ProxyError,
    UnknownRoute,
    UnsupportedEncoding,
    VersionNotSupported,
)
from chatgpt_proxy.exchange import error_response, http_error
from chatgpt_proxy.ids import UniqueIds
from chatgpt_proxy.metrics import Metrics
from chatgpt_proxy.settings import ServerSettings

AppHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# Encodings aiohttp decodes itself; anything else would reach a handler still encoded.
_ENCODINGS = frozenset({"identity", "gzip", "deflate"})
# Probes must answer while the proxy is full: that is when they matter.
_UNGATED = frozenset({"/healthz", "/readyz", "/metrics"})


class InFlightGate:
    """At most ``limit`` requests at once; up to ``pending`` more wait ``wait`` seconds each.

    >>> gate = InFlightGate(limit=2, pending=1, wait=1.0)
    >>> if gate.try_enter() or await gate.enter():
    ...     try: ...
    ...     finally: gate.leave()

    A counter rather than an ``asyncio.Semaphore``: a request that finds a free slot (nearly
    all of them) takes it with one comparison, without a coroutine; a freed slot passes
    straight to the oldest waiter, so one that just arrived cannot overtake the queue.
    """

    def __init__(self, limit: int, pending: int, wait: float) -> None:
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._pending_limit = pending
        self._wait = wait

    def try_enter(self) -> bool:
        """Take a free slot at once, if there is one (then no request is waiting)."""
        if self._free > 0:
            self._free -= 1
            return True
        return False

    async def enter(self) -> bool:
        """Take a slot, waiting a bounded time in a bounded queue; False when full."""
        if self.try_enter():
            return True
        if len(self._waiters) >= self._pending_limit:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._wait):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # the slot came as the time ran out: pass it on
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

    def leave(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot is the waiter's now
                return
        self._free += 1


class ConnectionCounts:
    """Open connections per client address; an address without connections takes no memory."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if self._limit and count >= self._limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)


class Edge:
    """The checks and limits in front of the app, and how their refusals are answered."""

    def __init__(self, settings: ServerSettings, handler: AppHandler, ids: UniqueIds) -> None:
        self.settings = settings
        self.connections = ConnectionCounts(settings.max_connections_per_address)
        self._handler = handler
        self._ids = ids
        # Answers no route sees, hence in no access line: counted for /metrics instead.
        self.overloaded = 0
        self.connections_refused = 0
        self.timed_out = 0
        self._gate = (
            InFlightGate(
                settings.max_requests_in_flight,
                settings.max_pending_requests,
                settings.pending_timeout,
            )
            if settings.max_requests_in_flight
            else None
        )

    async def serve(self, request: web.BaseRequest) -> web.StreamResponse:
        refusal = _refusal(request)
        if refusal is not None:
            if isinstance(refusal, VersionNotSupported) and request.transport is not None:
                # aiohttp writes the status line in the request's own version, and no HTTP/1
                # client reads `HTTP/2.0 505`: answer in HTTP/1.1, as nginx does, and close.
                request.transport.write(self.raw_response(refusal))
                request.transport.close()
            return self.response(refusal, close=True)
        # One coroutine for the gate and the handler both: every resumption of the request
        # passes through each coroutine around it.
        gate = self._gate
        if gate is not None and request.path in _UNGATED:
            gate = None
        if gate is not None and not (gate.try_enter() or await gate.enter()):
            self.overloaded += 1
            return self.response(Overloaded("The server is overloaded. Retry shortly."))
        try:
            return await self._handler(request)
        except web.HTTPException as exc:
            # Raised by aiohttp before any route runs (no resource for a CONNECT target...).
            return self.response(http_error(request, exc))
        finally:
            if gate is not None:
                gate.leave()

    def watch(self, metrics: Metrics) -> None:
        """Export the edge's counts at /metrics."""
        metrics.watch(
            "chatgpt_proxy_overloaded_total",
            "requests answered 503 because the process was full",
            lambda: float(self.overloaded),
        )
        metrics.watch(
            "chatgpt_proxy_connections_refused_total",
            "connections refused: too many open from one client address",
            lambda: float(self.connections_refused),
        )
        metrics.watch(
            "chatgpt_proxy_client_timeouts_total",
            "clients timed out: slow headers, an idle body or an answer left unread",
            lambda: float(self.timed_out),
        )

    def response(self, error: ProxyError, *, close: bool = False) -> web.Response:
        """``error`` in OpenAI's envelope, with the headers every answer carries."""
        response = error_response(error)
        response.headers["x-request-id"] = self._ids.next()
        response.headers["openai-processing-ms"] = "0"
        if close:
            response.force_close()
        return response

    def raw_response(self, error: ProxyError) -> bytes:
        """``error`` as the bytes of a whole HTTP/1.1 answer, for a connection that has no
        request to answer through aiohttp (a timeout while reading headers, a refused
        connection). The connection is closed after it."""
        body = error.body()
        head = [
            f"HTTP/1.1 {error.status} {_reason(error.status)}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
            f"x-request-id: {self._ids.next()}",
            "openai-processing-ms: 0",
            *(f"{name}: {value}" for name, value in error.headers.items()),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _refusal(request: web.BaseRequest) -> ProxyError | None:
    """Why ``request`` cannot be served at all, or None."""
    if request.version not in (HttpVersion11, HttpVersion10):
        return VersionNotSupported("Only HTTP/1.0 and HTTP/1.1 are supported.")
    if _has_dot_segment(request.raw_path):
        # Refused before routing: no normalisation may turn it into another route.
        return UnknownRoute(f"Invalid URL ({request.method} {request.path})")
    headers = request.headers
    expect = headers.get("Expect")
    if expect is not None and expect.lower() != "100-continue":
        return ExpectationFailed("The only Expect value supported is 100-continue.")
    encoding = headers.get("Content-Encoding")
    if encoding is not None and (
        len(headers.getall("Content-Encoding")) > 1 or encoding.strip().lower() not in _ENCODINGS
    ):
        return UnsupportedEncoding("The body may be sent as identity, gzip or deflate only.")
    if "Content-Type" in headers:
        try:
            request.content_type  # noqa: B018 - parsed once here, and cached for the route
        except Exception:  # the standard library's MIME parser fails on odd parameters
            return InvalidContentType("The Content-Type header could not be parsed.")
    return None


def _has_dot_segment(target: str) -> bool:
    """Whether a segment of ``target``'s path is ``.`` or ``..``, however often it was
    percent-encoded (``%2e%2e``, ``%252e%252e``, ``..%2F..``)."""
    path = target.partition("?")[0]
    if "%" not in path and "/." not in path:
        return False  # the usual path: nothing to decode
    for segment in path.split("/"):
        for _ in range(3):
            if any(part in (".", "..") for part in segment.split("/")):
                return True
            decoded = unquote(segment)
            if decoded == segment:
                break
            segment = decoded
    return False


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
