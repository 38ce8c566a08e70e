"""One request as the proxy serves it: what it learns on the way, the stages it passes, and
how an answer is started or refused.

Below every route (``api/``), the relay (``streaming``) and each stage's own module, so that
all of them can use it and it uses none of them. A proxied request is an ``Exchange`` passed
down a ``Pipeline`` of stages; each stage reads and fills in the exchange, and either hands
it on or answers (or raises the ``ProxyError`` that does)::

    class Stamp:                      # a stage, built-in or a third party's
        async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
            response = await forward(exchange)  # the stages after this one
            response.headers["x-stamped"] = "1"
            return response

    pipeline = Pipeline([Authenticate(keys), Stamp(), ...])
    response = await pipeline(exchange)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from chatgpt_proxy.errors import (
    InvalidRequest,
    MethodNotAllowed,
    ProxyError,
    RequestTooLarge,
    UnknownRoute,
)
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.token_usage import Usage
from chatgpt_proxy.upstream.client import Body, Reply
from chatgpt_proxy.upstream.router import Upstream

CLIENT_CLOSED = 499  # nginx's status for a client that went away before its answer


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
    usage: tuple[int, int, int] | None = None  # metered prompt, completion and total tokens
    cost: float | None = None  # metered, in USD

    def stamp(self, response: web.StreamResponse) -> None:
        """Put the headers every answer carries on ``response``, before it is prepared."""
        headers = response.headers
        headers["x-request-id"] = self.request_id
        headers["openai-processing-ms"] = str(int((time.monotonic() - self.started) * 1000))
        if self.headers:
            headers.update(self.headers)


CONTEXT = web.RequestKey("context", RequestContext)


def context(request: web.Request) -> RequestContext:
    return request[CONTEXT]


async def start_stream(request: web.Request, response: web.StreamResponse) -> None:
    """Send a streamed answer's headers, with those every answer carries."""
    ctx = context(request)
    ctx.stamp(response)
    ctx.stream = response
    await response.prepare(request)


@dataclass(slots=True)
class Outcome:
    """What the relay saw: the usage reported, and whether the answer arrived whole.

    ``status`` is what the client was told: the upstream's, the proxy's error, or 499 when
    the client went away first.
    """

    status: int
    usage: Usage | None = None
    complete: bool = False


# Records the id of the object an answer created; the id reaches the client only once it
# returns, and a ProxyError it raises replaces the answer (or, on a stream, ends it).
OnCreated = Callable[[str], Awaitable[None]]
# Judges a whole successful answer before any of it is sent; raising a ProxyError replaces it.
CheckAnswer = Callable[[bytes], Awaitable[None]]


@dataclass(slots=True)
class Exchange:
    """One proxied request on its way through the stages; each fills in what it finds.

    The fields without a default are set by the stage named beside them, and read only by
    stages after it.
    """

    request: web.Request
    context: RequestContext
    endpoint: str  # "chat.completions", "responses.retrieve"...
    key: ClientKey = field(init=False)  # authenticate
    path: str = field(init=False)  # read: the path upstream
    body: Body = None  # read: the bytes that go upstream
    document: Mapping[str, Any] = field(init=False)  # read: the body's fields
    model: str | None = None
    stream: bool = False
    estimate: int = 0  # read: the request's tokens, as far as they can be told before
    upstream: Upstream = field(init=False)  # route; ownership, for an object's follow-ups
    holder_key: str | None = None  # ownership: the upstream key holding the object
    background: bool = False  # a Responses API call run on whoever waits for it
    check_answer: CheckAnswer | None = None  # moderate, when answers are judged too
    on_created: OnCreated | None = None  # ownership, when the answer creates an object
    strip_usage: bool = False  # send: the proxy asked the stream for its usage chunk
    sent_at: float = 0.0  # send: when the upstream may have started on it; 0 if never
    reply: Reply = field(init=False)  # send
    outcome: Outcome | None = None  # relay: status and usage, however the relay ended
    used_tokens: int = 0  # meter, for the limits to settle
    cost: float = 0.0  # meter: in USD

    def estimated_usage(self) -> Usage:
        """What an answer whose usage is unknown is charged (DESIGN §4): never zero."""
        return Usage(self.estimate, 0, self.estimate)


# An answer on its way: the coroutine of the stages after the current one, not yet awaited.
Answering = Coroutine[Any, Any, web.StreamResponse]
# The stages after the current one, as one call.
Next = Callable[[Exchange], Answering]


class Stage(Protocol):
    """One step of the request flow: reads and fills in ``exchange``, then returns what
    ``forward(exchange)`` answers (work after it, in a ``finally``, runs however the rest
    ends), or answers itself, or raises the ``ProxyError`` the client gets.

    A stage whose work is all done before the rest, without awaiting anything, may be a
    plain method that returns ``forward(exchange)`` unawaited (a tail call): every request
    then runs one coroutine fewer, whose frame every resumption of the stages after it
    would pass through. What it raises, it raises as it is called, where the stage before
    it awaits it.
    """

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse: ...


class Pipeline:
    """Stages in order, linked once (at start-up) so that a request only runs them."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)
        forward: Next = _unanswered
        for stage in reversed(self.stages):
            forward = _link(stage, forward)
        self._first = forward

    def __call__(self, exchange: Exchange) -> Answering:
        return self._first(exchange)


def _link(stage: Stage, forward: Next) -> Next:
    """``stage`` with the stages after it, as one call.

    A closure over the stage's bound ``__call__`` rather than an object with a ``__call__``
    of its own: the interpreter calls a plain function and a bound method directly, where
    calling an object goes through its type's slot, and a request crosses every link.
    """
    call = stage.__call__

    def link(exchange: Exchange) -> Answering:
        return call(exchange, forward)

    return link


async def _unanswered(exchange: Exchange) -> web.StreamResponse:
    raise ProxyError(f"No stage answered the request for {exchange.endpoint}.")


async def no_route(request: web.Request) -> web.StreamResponse:
    """The catch-all route: 405 for a path some route serves with another method, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        raise MethodNotAllowed(f"Invalid method for URL ({request.method} {request.path}).")
    raise unknown_route(request)


def error_response(err: ProxyError) -> web.Response:
    return web.Response(
        body=err.body(),
        status=err.status,
        content_type="application/json",
        headers=err.headers,
    )


def http_error(
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
    return unknown_route(request)


def unknown_route(request: web.BaseRequest) -> UnknownRoute:
    return UnknownRoute(f"Invalid URL ({request.method} {request.path})")
