"""Running the app: the event loop, the listening socket, signals, graceful shutdown, workers.

On SIGTERM (or SIGINT) the proxy stops accepting connections, fails readiness, starts no new
upstream call and gives the requests in flight ``grace_seconds`` to finish: a stream half-way
through is not cut because a deployment rolled, and one still running after that ends with an
error event. ``workers > 1`` runs that many processes on one port (``SO_REUSEPORT``):
their limits are shared only through Redis.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import signal
from typing import Any

import uvloop
from aiohttp import web
from aiohttp.web import BaseRequest, RequestHandler

from chatgpt_proxy.app import create_app
from chatgpt_proxy.edge import Edge
from chatgpt_proxy.errors import InvalidRequest, ProxyError, RateLimited, RequestTimeout
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.state import STATE

logger = logging.getLogger("chatgpt_proxy.server")

# Young objects the collector may gather before it runs (CPython's default: 700).
_GC_YOUNG_THRESHOLD = 50_000
# A timer that fires this much later than it was due found the event loop busy elsewhere (a
# burst of work, a starved process): the time it lost was the loop's, not the client's.
_LOOP_LAG_TOLERANCE = 0.25
# Connections the kernel may hold for the process to accept (capped by net.core.somaxconn):
# thousands of clients that open their streams at once overflowed 1,024, and an overflowed
# accept queue costs a client a SYN retry (1 s, then 3 s...) or a reset.
_LISTEN_BACKLOG = 8192


class _OpenAIErrorHandler(RequestHandler):
    """One client connection, as aiohttp serves it, with the proxy's edge around it.

    Requests that fail to parse (bad header bytes, CRLF, NUL...) are answered in OpenAI's
    format: aiohttp answers those before any route runs, as plain text; SDKs expect JSON.
    Slow clients are timed: a request's line and headers must arrive within
    ``header_timeout`` (a connection that sent nothing is closed, one half-way through a
    request gets a 408), and a body that stays silent for ``body_idle_timeout`` fails its
    read with a 408. A client that leaves its answer unread for ``send_timeout`` is dropped.
    Each client address may hold only so many connections.
    """

    def __init__(self, manager: ProxyServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager.edge
        self._edge_loop = asyncio.get_running_loop()
        self._edge_address: str | None = None
        self._edge_busy = False  # a request is being served
        self._edge_request: BaseRequest | None = None  # the request whose body is awaited
        # One timer per connection, for the header and body-idle timeouts alike: arming only
        # moves ``_edge_deadline`` (and disarming clears it), and the timer, when it fires,
        # compares the deadline and sleeps on if it moved. Arming and cancelling a loop timer
        # for every request cost more than anything else the edge did per request.
        self._edge_timer: asyncio.TimerHandle | None = None
        self._edge_deadline: float | None = None
        self._edge_delay = 0.0  # the window the deadline was set for
        self._edge_partial = False  # bytes of a request not yet begun have arrived
        self._edge_last_data = 0.0
        self._edge_send_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else None
        if address is not None:
            if not self._edge.connections.admit(address):
                self._edge.connections_refused += 1
                refusal = RateLimited("Too many connections from your address.", retry_after=1)
                self._answer_and_close(refusal)
                return
            self._edge_address = address
        self._arm(self._edge.settings.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._edge_timer is not None:
            self._edge_timer.cancel()
            self._edge_timer = None
        self._stop_send_timer()
        if self._edge_address is not None:
            self._edge.connections.release(self._edge_address)
            self._edge_address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._edge_busy:
            self._edge_last_data = self._edge_loop.time()
        elif data:  # (aiohttp replays its buffer with b"" when reading resumes)
            if self._edge_deadline is None:  # the first bytes of the next request
                self._arm(self._edge.settings.header_timeout)
            self._edge_partial = True
        super().data_received(data)

    def request_started(self, request: BaseRequest) -> None:
        """The request's headers are in: from now on, only its body is timed."""
        self._disarm()
        self._edge_busy = True
        self._edge_partial = False
        if not request.content.is_eof():
            self._edge_request = request
            self._edge_last_data = self._edge_loop.time()
            self._arm(self._edge.settings.body_idle_timeout)

    def request_ended(self, request: BaseRequest, response: web.StreamResponse | None) -> None:
        self._disarm()
        self._edge_busy = False
        self._edge_request = None
        if not request.content.is_eof() and request.content.exception() is not None:
            # The body timed out: none of the rest is read or waited for, and the connection
            # closes after the answer (what follows on it is the rest of that body).
            request.content.feed_eof()
            if response is not None:
                response.force_close()

    def pause_writing(self) -> None:
        # The client is not reading what it is sent (the transport's buffer is full): it has
        # ``send_timeout`` seconds to start again, else it is dropped, and its upstream call
        # with it. asyncio's flow control callbacks are the public way to see a stalled reader.
        super().pause_writing()
        self._edge_send_timer = self._edge_loop.call_later(
            self._edge.settings.send_timeout, self._send_expired
        )

    def resume_writing(self) -> None:
        self._stop_send_timer()
        super().resume_writing()

    def _stop_send_timer(self) -> None:
        if self._edge_send_timer is not None:
            self._edge_send_timer.cancel()
            self._edge_send_timer = None

    def _send_expired(self) -> None:
        self._edge_send_timer = None
        if self.transport is not None:
            self._edge.timed_out += 1
            self.transport.abort()

    def _arm(self, delay: float) -> None:
        self._edge_delay = delay
        deadline = self._edge_deadline = self._edge_loop.time() + delay
        timer = self._edge_timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._edge_timer = self._edge_loop.call_at(deadline, self._fire)

    def _disarm(self) -> None:
        self._edge_deadline = None  # a pending timer finds nothing due when it fires

    def _fire(self) -> None:
        self._edge_timer = None
        deadline = self._edge_deadline
        if deadline is None:
            return
        now = self._edge_loop.time()
        if deadline > now:  # re-armed since the timer was set
            self._edge_timer = self._edge_loop.call_at(deadline, self._fire)
            return
        if now - deadline > _LOOP_LAG_TOLERANCE:
            # The loop could not watch the client while it was late: what the client sent
            # meanwhile may wait unread in the socket (uvloop runs due timers before it reads).
            # The client gets a full window again, measured by a loop that is watching.
            self._arm(self._edge_delay)
            return
        self._edge_deadline = None
        self._expired()

    def _expired(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        request = self._edge_request
        if request is None:
            self._edge.timed_out += 1
            if self._edge_partial:
                self._answer_and_close(RequestTimeout("The request headers took too long."))
            else:
                transport.close()
            return
        if request.content.is_eof():
            return
        idle_limit = self._edge.settings.body_idle_timeout
        idle = self._edge_loop.time() - self._edge_last_data
        if idle < idle_limit:
            self._arm(idle_limit - idle)
            return
        # The handler's read fails with it, and the handler answers it as any error.
        self._edge.timed_out += 1
        request.content.set_exception(RequestTimeout("The request body stopped arriving."))

    def _answer_and_close(self, error: ProxyError) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(self._edge.raw_response(error))
            transport.close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
            error: ProxyError = ProxyError("The server had an error processing your request.")
        else:
            error = InvalidRequest("The request is not valid HTTP: malformed line or header.")
            error.status = status
        return self._edge.response(error, close=True)


class ProxyServer(web.Server):
    """aiohttp's low-level server, the protocol factory a site listens with, serving the app
    through ``edge`` on connections each served by an ``_OpenAIErrorHandler``.

    aiohttp has no setting for how a connection answers a request it cannot parse (it
    answers in plain text, from ``RequestHandler.handle_error``): a server that builds its
    own ``RequestHandler`` subclass is its way to change that. ``ProxyRunner`` gives it the
    app's request factory and the edge once the app has started::

        server = ProxyServer(handler_cancellation=True, access_log=None)
        server.request_factory, server.edge = app_request_factory, Edge(...)
        runner = web.ServerRunner(server)
    """

    edge: Edge

    def __init__(self, *, handler_cancellation: bool = False, **kwargs: Any) -> None:
        super().__init__(self.serve, handler_cancellation=handler_cancellation, **kwargs)
        self._connection_loop = asyncio.get_running_loop()
        self._connection_kwargs = kwargs  # what each connection's handler is built with

    def __call__(self) -> RequestHandler:
        return _OpenAIErrorHandler(self, loop=self._connection_loop, **self._connection_kwargs)

    async def serve(self, request: BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if not isinstance(protocol, _OpenAIErrorHandler):
            return await self.edge.serve(request)
        protocol.request_started(request)
        response = None
        try:
            response = await self.edge.serve(request)
            failure = request.content.exception()
            if isinstance(failure, RequestTimeout) and not response.prepared:
                # Whatever the handler made of its failed read (an upload streamed upstream
                # fails there as an upstream error), the client's silence is the cause.
                response = self.edge.response(failure, close=True)
            return response
        finally:
            protocol.request_ended(request, response)


class ProxyRunner(web.ServerRunner):
    """Runs ``app`` as ``web.AppRunner`` does, its connections served by a ``ProxyServer``.

    A ``web.AppRunner`` of its own starts and stops the app and builds the app's request
    handler and request factory; the ``ProxyServer`` serves them. At cleanup the listening
    stops, idle connections close and busy ones get ``shutdown_timeout`` to finish, and then
    the app's shutdown and cleanup hooks run::

        runner = ProxyRunner(app, handler_cancellation=True, shutdown_timeout=30.0)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        ...
        await runner.cleanup()
    """

    def __init__(
        self,
        app: web.Application,
        *,
        handle_signals: bool = False,
        shutdown_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        # aiohttp refuses header fields over 8 KiB before auth runs; a long junk key must still
        # be a 401 invalid_api_key, so allow 16 KiB (auth rejects anything over 512 chars).
        kwargs.setdefault("max_field_size", 16 * 1024)
        self._app_runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, **kwargs)
        self._proxy_server = ProxyServer(**kwargs)
        super().__init__(
            self._proxy_server, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout
        )

    @property
    def app(self) -> web.Application:
        return self._app_runner.app

    async def setup(self) -> None:
        await self._app_runner.setup()  # the app's start-up hooks run here
        app_server = self._app_runner.server
        assert app_server is not None
        state = self.app[STATE]
        server = self._proxy_server
        server.request_factory = app_server.request_factory
        server.edge = Edge(state.settings.server, app_server.request_handler, state.request_ids)
        server.edge.watch(state.metrics)
        await super().setup()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._app_runner.cleanup()


async def _serve(settings: Settings, host: str, port: int, *, reuse_port: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = await create_app(settings)
    runner = ProxyRunner(
        app,
        handle_signals=False,
        access_log=None,
        handler_cancellation=True,  # a client that leaves cancels its upstream call at once
        shutdown_timeout=settings.server.grace_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=_LISTEN_BACKLOG)
    await site.start()
    logger.info("chatgpt-proxy listening on http://%s:%d", host, port)
    _tune_gc()
    await stop.wait()
    logger.info("shutting down: letting requests in flight finish")
    state = app[STATE]
    state.ready = False  # /readyz fails at once
    # No new upstream call from now on; streams still running after the grace period end
    # with an error event (before aiohttp cancels what is left).
    state.drain.begin(settings.server.grace_seconds)
    await runner.cleanup()


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    With the default threshold, the collector runs every few requests and walks every live
    request's objects, promoting them to older generations that it then walks again; and the
    ~100,000 objects of start-up (SQLAlchemy, pydantic, aiohttp...) are walked by every full
    collection. Freezing start-up's objects and collecting young ones less often measured
    +25-40% requests per second on one core (bench/). Memory barely grows: objects without
    reference cycles are freed by reference counting as before.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, older, oldest)


def _run_one(settings: Settings, host: str, port: int, reuse_port: bool) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(settings, host, port, reuse_port=reuse_port))


def run(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> None:
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    count = workers or settings.server.workers
    if count == 1:
        _run_one(settings, host, port, reuse_port=False)
        return
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_run_one, args=(settings, host, port, True), name=f"worker-{n}")
        for n in range(count)
    ]
    for process in processes:
        process.start()

    def forward(_signum: int, _frame: object) -> None:
        # Each worker stops gracefully on its own SIGTERM (see _serve).
        for process in processes:
            if process.is_alive():
                process.terminate()

    signal.signal(signal.SIGTERM, forward)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join()
