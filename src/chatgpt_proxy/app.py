"""Builds the server from settings: resources, routes, their wrapper, start-up and shutdown.

Wiring only. Everything that lives as long as the server is created here, kept on one
``AppState`` (no module-level state), and closed in reverse order on shutdown::

    app = await create_app(load_settings("config.yaml"))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import aiohttp
from aiohttp import web

from chatgpt_proxy.auth import FailedAuthThrottle, KeyCache
from chatgpt_proxy.catalog import ModelCatalog
from chatgpt_proxy.drain import Drain
from chatgpt_proxy.errors import (
    InvalidRequest,
    MethodNotAllowed,
    ProxyError,
    RequestTooLarge,
    UnknownRoute,
)
from chatgpt_proxy.ids import UniqueIds
from chatgpt_proxy.keystore import KeyStore
from chatgpt_proxy.keystore.objects import ObjectOwners
from chatgpt_proxy.limits import Limiter
from chatgpt_proxy.limits.fallback import FallbackLimiter
from chatgpt_proxy.limits.memory import MemoryLimiter
from chatgpt_proxy.limits.redis import RedisLimiter
from chatgpt_proxy.logs import AccessLog, access_log_enabled
from chatgpt_proxy.metering import Meter
from chatgpt_proxy.metrics import Metrics
from chatgpt_proxy.moderation import Moderator, build_moderator
from chatgpt_proxy.periodic import TaskErrors
from chatgpt_proxy.pricing import Pricing
from chatgpt_proxy.redaction import Redactor
from chatgpt_proxy.redis_link import RedisLink
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.shared_state import SharedState
from chatgpt_proxy.sse import error_event
from chatgpt_proxy.upstream.client import UpstreamClient
from chatgpt_proxy.upstream.idle import IdleWatch
from chatgpt_proxy.upstream.prober import Prober
from chatgpt_proxy.upstream.router import Router

if TYPE_CHECKING:
    from redis.asyncio import Redis

errors_logger = logging.getLogger("chatgpt_proxy.app")

CLIENT_CLOSED = 499  # nginx's status for a client that went away before its answer


@dataclass(slots=True)
class AppState:
    """Every long-lived part of a running proxy."""

    settings: Settings
    router: Router
    client: UpstreamClient
    store: KeyStore
    keys: KeyCache
    limiter: Limiter
    moderator: Moderator
    meter: Meter
    metrics: Metrics
    redactor: Redactor
    catalog: ModelCatalog
    objects: ObjectOwners  # who owns each stored object (response...), in the database
    access_log: AccessLog | None = None  # None when access_log is off
    # Unique request ids without a system call each.
    request_ids: UniqueIds = field(default_factory=lambda: UniqueIds("req_", digits=10))
    redis: Redis | None = None  # the one Redis client, when redis_url is set
    shared: SharedState | None = None  # key changes and upstream states, with Redis
    ready: bool = False
    drain: Drain = field(default_factory=Drain)  # shutting down: streams in flight, new calls


@dataclass(slots=True)
class RequestContext:
    """What the proxy learns about one request, for its headers, access log and metrics."""

    request_id: str
    started: float
    endpoint: str = "-"
    key_id: str = "-"
    model: str = "-"
    upstream: str = "-"
    headers: Mapping[str, str] | None = None  # the x-ratelimit-* headers of the client key
    stream: web.StreamResponse | None = None  # a streamed answer whose headers were sent

    def stamp(self, response: web.StreamResponse) -> None:
        """Put the headers every answer carries on ``response``, before it is prepared."""
        headers = response.headers
        headers["x-request-id"] = self.request_id
        headers["openai-processing-ms"] = str(int((time.monotonic() - self.started) * 1000))
        if self.headers:
            headers.update(self.headers)


STATE = web.AppKey("state", AppState)
CONTEXT = web.RequestKey("context", RequestContext)


def context(request: web.Request) -> RequestContext:
    return request[CONTEXT]


async def start_stream(request: web.Request, response: web.StreamResponse) -> None:
    """Send a streamed answer's headers, with those every answer carries."""
    ctx = context(request)
    ctx.stamp(response)
    ctx.stream = response
    await response.prepare(request)


async def create_app(
    settings: Settings, *, store: KeyStore | None = None, log_stream: TextIO | None = None
) -> web.Application:
    """Create the resources and the app.

    ``store`` lets a caller share an open key store; access lines go to ``log_stream``
    (standard error by default), where ``configure_logging`` sends the other logs.
    """
    stack = contextlib.AsyncExitStack()
    try:
        state = await _open_state(settings, stack, store)
        if settings.server.access_log and access_log_enabled():
            json = settings.server.log_format == "json"
            state.access_log = AccessLog(log_stream or sys.stderr, state.redactor, json=json)
            stack.callback(state.access_log.flush)  # closed first: the last lines written
    except BaseException:
        await stack.aclose()
        raise
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[STATE] = state

    async def close(_: web.Application) -> None:
        state.ready = False
        await stack.aclose()

    app.on_cleanup.append(close)
    from chatgpt_proxy.api import add_routes  # the api package imports this module

    add_routes(app)
    state.ready = True
    return app


async def _open_state(
    settings: Settings, stack: contextlib.AsyncExitStack, store: KeyStore | None
) -> AppState:
    router = Router.from_settings(settings.upstreams, settings.pool)
    redactor = Redactor(router.secrets())
    task_errors = TaskErrors()  # failed runs of the background tasks below, for /metrics
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=settings.server.max_upstream_connections, enable_cleanup_closed=True
        ),
        # Upstream cookies are the account's, never the client's.
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    stack.push_async_callback(session.close)
    idle = IdleWatch(settings.timeouts.stream_idle, errors=task_errors)
    idle.start()
    stack.push_async_callback(idle.stop)
    client = UpstreamClient(session, settings.timeouts, settings.retries, idle=idle)
    if store is None:
        store = await KeyStore.open(settings.database_url)
        stack.push_async_callback(store.close)
        await store.migrate()
    auth = settings.auth
    throttle = (
        FailedAuthThrottle(
            auth.failed_auth_limit, auth.failed_auth_window, auth.failed_auth_block_seconds
        )
        if auth.failed_auth_limit
        else None
    )
    keys = KeyCache(
        store, refresh_seconds=auth.cache_refresh_seconds, throttle=throttle, errors=task_errors
    )
    await keys.start()
    stack.push_async_callback(keys.stop)
    pricing = Pricing(settings.pricing)
    meter = Meter(store, pricing=pricing, errors=task_errors)
    meter.start()
    stack.push_async_callback(meter.close)
    link = RedisLink.open(settings) if settings.redis_url is not None else None
    limiter: Limiter = MemoryLimiter(store, pricing)
    shared = None
    if link is not None:
        stack.push_async_callback(link.close)  # closed last: the others below still use it
        shared_limiter = RedisLimiter(
            link, store, pricing, lease_seconds=settings.limits.concurrency_lease_seconds
        )
        limiter = FallbackLimiter(shared_limiter, MemoryLimiter(store, pricing), link)
        shared = SharedState(link, router, keys, errors=task_errors)
        await shared.start()
        stack.push_async_callback(shared.stop)
    stack.push_async_callback(limiter.close)
    moderator = build_moderator(settings, client, router)
    stack.push_async_callback(moderator.close)
    prober = Prober(client, router, interval=settings.pool.probe_interval, errors=task_errors)
    prober.start()
    stack.push_async_callback(prober.stop)
    metrics = Metrics(router.upstreams)
    metrics.watch_tasks(task_errors)
    meter.export(metrics)
    metrics.watch(
        "chatgpt_proxy_moderation_blocks_total",
        "requests blocked by moderation",
        lambda: float(moderator.blocks_total),
    )
    catalog = ModelCatalog(client, router)
    state = AppState(
        settings,
        router,
        client,
        store,
        keys,
        limiter,
        moderator,
        meter,
        metrics,
        redactor,
        catalog,
        objects=ObjectOwners(store),
    )
    state.redis = link.client if link is not None else None
    state.shared = shared
    return state


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def served(handler: Handler) -> Handler:
    """``handler`` as every route runs it: with a request id, errors rendered as OpenAI's
    envelope, the headers every answer carries, metrics and one access log line.

    Wrapped into each route when it is added rather than run as a middleware: the same work,
    without aiohttp's middleware chain around every request. A handler that streams its
    answer sends it with ``start_stream``, which stamps it; any other answer is stamped here.
    """

    async def serve(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        ctx = RequestContext(state.request_ids.next(), time.monotonic())
        request[CONTEXT] = ctx
        try:
            response = await handler(request)
            status = response.status
        except asyncio.CancelledError:
            # aiohttp cancels the handler of a client that went away: logged as nginx does.
            _observe(state, request, ctx, CLIENT_CLOSED)
            raise
        except Exception as exc:
            response, status = await _failed(request, ctx, exc)
        if not response.prepared:
            ctx.stamp(response)
        _observe(state, request, ctx, status)
        return response

    return serve


def _observe(state: AppState, request: web.Request, ctx: RequestContext, status: int) -> None:
    """The request's metrics and access log line."""
    elapsed = time.monotonic() - ctx.started
    state.metrics.observe(ctx.endpoint, status, elapsed)
    if state.access_log is not None:
        state.access_log.request(
            ctx.request_id,
            request.method,
            request.path,
            status,
            ctx.key_id,
            ctx.model,
            ctx.upstream,
            elapsed,
            endpoint=ctx.endpoint,
        )


async def _failed(
    request: web.Request, ctx: RequestContext, exc: Exception
) -> tuple[web.StreamResponse, int]:
    """The answer to a request whose handler raised ``exc``, and the status to log."""
    stream = ctx.stream
    gone = request.transport is None or request.transport.is_closing()
    if stream is not None and gone:  # the client left mid-answer: no one to tell
        if not isinstance(exc, ConnectionError | ProxyError):
            errors_logger.exception("unexpected error in %s %s", request.method, request.path)
        return stream, CLIENT_CLOSED
    if isinstance(exc, ProxyError):
        err = exc
    elif isinstance(exc, web.HTTPException | web.RequestPayloadError):
        err = _http_error(request, exc)
    else:
        # The logs' redacting filter scrubs the traceback of anything secret.
        errors_logger.exception("unexpected error in %s %s", request.method, request.path)
        err = ProxyError("The server had an error processing your request.")
    if stream is None:
        return error_response(err), err.status
    # Its headers are sent: a second answer cannot follow, so the stream ends with an error
    # event (an SSE stream) or cut short (any other body), never as if complete.
    errors_logger.warning("answer to %s %s failed after its headers", request.method, request.path)
    if stream.content_type == "text/event-stream":
        with contextlib.suppress(ConnectionError):
            await stream.write(error_event(err, typed=ctx.endpoint.startswith("responses")))
            await stream.write_eof()
            return stream, stream.status
    if request.transport is not None:
        request.transport.close()
    return stream, stream.status


async def no_route(request: web.Request) -> web.StreamResponse:
    """The catch-all route: 405 for a path some route serves with another method, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        raise MethodNotAllowed(f"Invalid method for URL ({request.method} {request.path}).")
    raise _unknown_route(request)


def error_response(err: ProxyError) -> web.Response:
    return web.Response(
        body=err.body(),
        status=err.status,
        content_type="application/json",
        headers=err.headers,
    )


def _http_error(
    request: web.BaseRequest, exc: web.HTTPException | web.RequestPayloadError
) -> ProxyError:
    """aiohttp's own refusal of ``request`` as the proxy's error."""
    if isinstance(exc, web.RequestPayloadError):
        # A body that does not decode as its Content-Encoding says, or whose framing is broken.
        return InvalidRequest("The request body could not be read: it is not encoded as declared.")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return RequestTooLarge("The request body is too large.")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"Invalid method for URL ({request.method} {request.path}).")
    return _unknown_route(request)


def _unknown_route(request: web.BaseRequest) -> UnknownRoute:
    return UnknownRoute(f"Invalid URL ({request.method} {request.path})")
