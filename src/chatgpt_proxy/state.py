"""The running proxy's shared state, and the wrapper every route is served in.

Everything that lives as long as the server hangs off one ``AppState`` (created by
``app.create_app``, no module-level state); ``served`` gives each request its id, renders
its errors as OpenAI's envelope, stamps its answer and records its metrics and access line::

    app[STATE] = state
    web.post("/v1/...", served(handler))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from chatgpt_proxy.auth import KeyCache
from chatgpt_proxy.catalog import ModelCatalog
from chatgpt_proxy.drain import Drain
from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.exchange import (
    CLIENT_CLOSED,
    CONTEXT,
    RequestContext,
    error_response,
    http_error,
)
from chatgpt_proxy.ids import UniqueIds
from chatgpt_proxy.keystore import KeyStore
from chatgpt_proxy.keystore.objects import ObjectOwners
from chatgpt_proxy.limits import Limiter
from chatgpt_proxy.logs import AccessLog
from chatgpt_proxy.metering import Meter
from chatgpt_proxy.metrics import Metrics
from chatgpt_proxy.moderation import Moderator
from chatgpt_proxy.redaction import Redactor
from chatgpt_proxy.selfservice.endpoint import InteractionEndpoint
from chatgpt_proxy.selfservice.service import SelfService
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.shared_state import SharedState
from chatgpt_proxy.sse import error_event
from chatgpt_proxy.upstream.client import UpstreamClient
from chatgpt_proxy.upstream.router import Router
from chatgpt_proxy.upstream.sockets import SocketOpener

if TYPE_CHECKING:
    from redis.asyncio import Redis

errors_logger = logging.getLogger("chatgpt_proxy.app")  # the name these lines have always had


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
    sockets: SocketOpener  # WebSockets upstream (the Realtime API)
    access_log: AccessLog | None = None  # None when access_log is off
    # Unique request ids without a system call each.
    request_ids: UniqueIds = field(default_factory=lambda: UniqueIds("req_", digits=10))
    redis: Redis | None = None  # the one Redis client, when redis_url is set
    shared: SharedState | None = None  # key changes and upstream states, with Redis
    ready: bool = False
    drain: Drain = field(default_factory=Drain)  # shutting down: streams in flight, new calls
    self_service: SelfService | None = None  # self-service keys (Discord users, blocks)
    interactions: InteractionEndpoint | None = None  # when discord is configured


STATE = web.AppKey("state", AppState)


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
            usage=ctx.usage,
            cost=ctx.cost,
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
        err = http_error(request, exc)
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
