"""The OpenAI routes: the allowlist of endpoints (``endpoints``), each served by the one
pipeline of stages.

Every request passes these stages in this order (``forward_stages`` builds the list once per
endpoint at start-up); each is a ``Stage`` (``exchange``) in the module that owns its noun::

    Authenticate      auth.py               the client key, or 401
    ReadBody          here                  the path upstream; the body, parsed once
    ModelPolicy       auth.py               the key's model allowlist, or 403
    Route             here                  the upstream serving the model, or 404
    KeepInBackground  here                  a background response runs on if its client leaves
    Admit             limits/               rpm, tpm, concurrency, budget; settled at the end
    Ownership         keystore/objects.py   a stored object is its creator's alone
    Moderate          moderation/           the input (and answer) against the content policy
    Metering          metering.py           usage recorded once the answer ends
    Send              here                  upstream: key pool, retries, timeouts
    Relay             here                  the answer back, as it arrives (streaming.py)

Stages that only some endpoints need (background) are in only their lists, and moderation
only when it is enabled. A list of stored objects (files, batches, vector stores) is served
from their records by ``ListOwned`` (``listing.py``) in place of Moderate, Send and Relay.
Bodies go upstream byte for byte; the proxy re-encodes one only to ask a stream for its
usage, and strips that extra chunk again on the way back.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, unquote

import orjson
from aiohttp import web

from chatgpt_proxy.api.endpoints import ENDPOINTS, Endpoint
from chatgpt_proxy.api.listing import ListOwned
from chatgpt_proxy.auth import Authenticate, ModelPolicy
from chatgpt_proxy.drain import Drain
from chatgpt_proxy.errors import InvalidRequest, ProxyError, ServiceUnavailable, UnknownRoute
from chatgpt_proxy.exchange import Answering, Exchange, Next, Outcome, Pipeline, Stage, context
from chatgpt_proxy.keystore.objects import OBJECT_ID, Ownership
from chatgpt_proxy.limits import Admit
from chatgpt_proxy.metering import Metering
from chatgpt_proxy.moderation.batch_input import ModerateBatchInput, RefuseBatchUploads
from chatgpt_proxy.moderation.moderator import Moderate
from chatgpt_proxy.multipart import UploadLimits, form_flag, read_multipart
from chatgpt_proxy.redaction import Redactor
from chatgpt_proxy.requestbody import read_json
from chatgpt_proxy.settings import ServerSettings
from chatgpt_proxy.state import AppState
from chatgpt_proxy.streaming import StreamStyle, relay
from chatgpt_proxy.token_usage import estimate_tokens
from chatgpt_proxy.upstream.client import Body, Outbound, UpstreamClient
from chatgpt_proxy.upstream.router import Router

_MODEL_ID = re.compile(r"^[A-Za-z0-9._:@\-/]{1,256}$")
# Forwarded calls answered at once, sent over the short calls' upstream connections (the
# moderation checks' too) rather than over those of streams and generations.
_SHORT_CALLS = ("/embeddings", "/moderations", "/models")
# What a path segment may hold unquoted (RFC 3986 pchar), as the OpenAI SDK quotes them.
_PATH_SAFE = "!$&'()*+,;=:@"
# Fields with which an SDK would reach another host or account; never sent upstream.
_FOREIGN_FIELDS = ("api_base", "base_url", "api_key", "organization", "extra_headers")
_FOREIGN_FIELD_SET = frozenset(_FOREIGN_FIELDS)  # to test a document against all at once
_USAGE_STREAMS = frozenset({"chat.completions", "completions"})
_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'
_CHECKED_ANSWERS = frozenset({"chat.completions", "completions", "responses"})


def forward_stages(endpoint: Endpoint, state: AppState) -> list[Stage]:
    """The stages of ``endpoint``'s requests, in the order they run."""
    name, family = endpoint.name, endpoint.name.partition(".")[0]
    check_answers = name in _CHECKED_ANSWERS and state.settings.moderation.check_output
    stages: list[Stage] = [
        Authenticate(state.keys),
        ReadBody(endpoint, state.settings.server),
        ModelPolicy(),
        Route(state.router),
    ]
    if name == "responses":
        stages.append(KeepInBackground(state.drain))
    stages.append(Admit(state.limiter))  # a key probing for ids is held to its rate too
    if endpoint.lists is not None:
        lister = ListOwned(state.objects, state.router, state.client, kind=endpoint.lists)
        return [*stages, Metering(state.meter), lister]
    stages.append(
        Ownership(
            state.objects,
            state.router,
            state.redactor,
            owns=endpoint.owns,
            creates=endpoint.creates,
            watches=endpoint.watches,
            deletes=endpoint.deletes,
        )
    )
    if state.settings.moderation.enabled:  # off, the stage would do nothing for any request
        stages.append(Moderate(state.moderator, answers=check_answers))
        if name == "files.create":
            max_line = state.settings.server.max_body_bytes  # a line is one request's body
            stages.append(ModerateBatchInput(state.moderator, max_line=max_line))
        elif name == "uploads.create":
            stages.append(RefuseBatchUploads(state.moderator))
    stages += [
        Metering(state.meter),
        Send(state.client, state.drain, usage_stream=name in _USAGE_STREAMS),
        Relay(state.redactor, state.drain, typed_events=family == "responses"),
    ]
    return stages


class Forward:
    """The handler of one endpoint: its requests, each as an exchange down its pipeline."""

    def __init__(self, endpoint: Endpoint, pipeline: Pipeline) -> None:
        self.endpoint = endpoint
        self.pipeline = pipeline

    def handle(self, request: web.Request) -> Answering:  # a tail call, as a stage's may be
        ctx = context(request)
        ctx.endpoint = self.endpoint.name
        return self.pipeline(Exchange(request, ctx, self.endpoint.name))


class ReadBody:
    """The path upstream, and the body read and parsed once: its model, whether it streams,
    its tokens as estimated; fields naming another host or credential are dropped. A
    spooled upload is let go however the request ends."""

    def __init__(self, endpoint: Endpoint, server: ServerSettings) -> None:
        self._endpoint = endpoint
        self._server = server
        self._form = endpoint.body == "multipart"
        self._limits = UploadLimits(
            getattr(server, endpoint.upload_limit),
            server.max_body_bytes,
            server.upload_memory_bytes,
            server.upload_spool_dir,
        )

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        request = exchange.request
        exchange.path = self._upstream_path(request)
        endpoint = self._endpoint
        if self._form and not (
            endpoint.accepts_json and request.content_type == "application/json"
        ):
            with await read_multipart(request, self._limits) as upload:
                fields = upload.fields
                _set_body(exchange, upload.body, fields, form_flag(fields.get("stream")))
                # An upload's files are not tokens of the prompt: only its text is counted.
                exchange.estimate = estimate_tokens(fields, upload.fields_size)
                _refuse_foreign_fields(fields)
                return await forward(exchange)
        if endpoint.body == "none":
            exchange.document = _NO_FIELDS
            exchange.model = request.match_info.get("model")
            exchange.stream = request.query.get("stream") == "true"
            exchange.estimate = estimate_tokens(_NO_FIELDS, 0)
            return await forward(exchange)
        raw, document = await read_json(request, self._server.max_body_bytes)
        _set_body(exchange, raw, document, document.get("stream") is True)
        if endpoint.model_in is not None:
            _set_model(exchange, document.get(endpoint.model_in))
        raw = _strip_foreign_fields(exchange, raw)
        exchange.estimate = estimate_tokens(exchange.document, len(raw))
        # This frame waits for the whole answer: it must not hold the body (Send lets go of
        # the exchange's copies once the answer has begun).
        del raw, document
        return await forward(exchange)

    def _upstream_path(self, request: web.Request) -> str:
        params = request.match_info
        endpoint = self._endpoint
        if not params:
            return endpoint.upstream_path
        if "model" not in params:
            if not all(OBJECT_ID.match(value) for value in params.values()):
                raise UnknownRoute(f"Invalid URL ({request.method} {request.path})")
            return endpoint.upstream_path.format(**params)
        # From the path as sent: a `%2F` inside a model id stays inside its one segment
        # upstream, as the SDK quoted it (aiohttp's match_info has it decoded into `/`).
        raw = request.rel_url.raw_path.removeprefix("/v1/models/")
        segments = [unquote(segment) for segment in raw.split("/")]
        model = "/".join(segments)
        if not _MODEL_ID.match(model) or any(s in ("", ".", "..") for s in model.split("/")):
            raise UnknownRoute(f"Invalid URL ({request.method} {request.path})")
        quoted = "/".join(quote(segment, safe=_PATH_SAFE) for segment in segments)
        return endpoint.upstream_path.format(model=quoted)


def _set_body(exchange: Exchange, body: Body, document: Mapping[str, Any], stream: bool) -> None:
    model = document.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("`model` must be a string.", param="model")
    exchange.body, exchange.document, exchange.model, exchange.stream = (
        body,
        document,
        model,
        stream,
    )


def _set_model(exchange: Exchange, holder: object) -> None:
    """The model named by an object of the body (a Realtime client secret's ``session``)."""
    model = holder.get("model") if isinstance(holder, dict) else None
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("`model` must be a string.", param="model")
    exchange.model = model


def _refuse_foreign_fields(fields: Mapping[str, Any]) -> None:
    """A form is forwarded as the bytes received, which cannot lose a field: refuse one with
    a field that names another host or credential (DESIGN §3.2)."""
    if any(name in fields for name in _FOREIGN_FIELDS):
        raise InvalidRequest(
            "Fields that name another host or credential are not accepted in a form.",
            param=next(name for name in _FOREIGN_FIELDS if name in fields),
        )


def _strip_foreign_fields(exchange: Exchange, raw: bytes) -> bytes:
    """Drop the body fields that name another host or credential (DESIGN §3.2).

    The proxy never acts on them, and the upstream must not see them either. A body without
    them (the usual one) goes up byte for byte: looking them up costs one set operation.
    """
    document = exchange.document
    if _FOREIGN_FIELD_SET.isdisjoint(document):
        return raw
    kept = {name: value for name, value in document.items() if name not in _FOREIGN_FIELDS}
    exchange.document = kept
    exchange.body = body = orjson.dumps(kept)
    return body


class Route:
    """The upstream that serves the request's model (404 ``model_not_found`` if none)."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def __call__(self, exchange: Exchange, forward: Next) -> Answering:  # a tail call
        exchange.upstream = self._router.route(exchange.model)
        return forward(exchange)


class KeepInBackground:
    """A Responses API call run in the background goes on upstream whoever waits for it: one
    whose client left is still read to its end, so that its id and usage are recorded."""

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        if exchange.document.get("background") is not True:
            return await forward(exchange)
        exchange.background = True
        return await asyncio.shield(self._drain.keep(forward(exchange)))


class Send:
    """Upstream: the request, sent through the key pool with its retries (refused once the
    server is shutting down). A chat or completion stream is asked for its usage."""

    def __init__(self, client: UpstreamClient, drain: Drain, *, usage_stream: bool) -> None:
        self._client = client
        self._drain = drain
        self._usage_stream = usage_stream

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        if self._drain.draining:
            raise ServiceUnavailable("The server is shutting down; retry the request.")
        request = exchange.request
        body = exchange.body
        if self._usage_stream and exchange.stream:
            body = _with_usage(exchange)
        outbound = Outbound(
            request.method,
            exchange.path,
            request.query_string,
            request.headers,
            body,
            exchange.stream,
            holder_key=exchange.holder_key,
            model=exchange.model,
            tokens=exchange.estimate,
            lasting=exchange.stream or not exchange.path.startswith(_SHORT_CALLS),
            preferred_key=exchange.preferred_key,
        )
        exchange.sent_at = time.monotonic()  # the upstream may be working on it from now
        try:
            reply = await self._client.send(exchange.upstream, outbound)
        except ProxyError:
            exchange.sent_at = 0.0  # every try failed: nothing was done upstream
            raise
        exchange.reply = reply
        exchange.context.upstream = reply.alias
        # The answer has begun: no retry will send the body again, and no stage after this
        # one reads it. A stream lasts a minute; its chat history, held here as bytes (twice
        # with the usage option) and parsed, would be most of what it holds all that time.
        del body, outbound
        exchange.body, exchange.document = None, _NO_FIELDS
        return await forward(exchange)


def _with_usage(exchange: Exchange) -> Body:
    """Ask a chat or completion stream for its usage when the client did not.

    The proxy's ``include_usage`` is merged into whatever ``stream_options`` the client sent
    (absent, ``null``, ``{}``, ``false``), and the usage chunk is hidden again.
    """
    body, document = exchange.body, exchange.document
    options = document.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return body
    if options is not None and not isinstance(options, dict):
        return body  # malformed: the upstream tells the client so
    exchange.strip_usage = True
    if "stream_options" not in document and isinstance(body, bytes):
        # Prepend the one member instead of re-encoding the whole history: cheaper, and
        # every byte the client sent still goes up as it was.
        start = body.index(b"{") + 1
        return body[:start] + _INCLUDE_USAGE + body[start:]
    changed = dict(document)
    changed["stream_options"] = {**(options or {}), "include_usage": True}
    return orjson.dumps(changed)


class Relay:
    """The answer back to the client as it arrives (``streaming.relay``); what it saw is left
    on the exchange for the meter, however it ends."""

    def __init__(self, redactor: Redactor, drain: Drain, *, typed_events: bool) -> None:
        self._redactor = redactor
        self._drain = drain
        # The four styles this endpoint's answers can have, built once: a frozen dataclass
        # costs a few microseconds to build, and every answer needs one.
        self._styles = {
            (strip, background): StreamStyle(strip, typed_events, background)
            for strip in (False, True)
            for background in (False, True)
        }

    def __call__(self, exchange: Exchange, forward: Next) -> Answering:  # a tail call
        reply = exchange.reply
        exchange.outcome = outcome = Outcome(reply.response.status)
        return relay(
            exchange.request,
            reply,
            self._redactor,
            outcome,
            style=self._styles[exchange.strip_usage, exchange.background],
            check_answer=exchange.check_answer,
            on_created=exchange.on_created,
            drain=self._drain,
        )


def proxy_routes(state: AppState) -> list[web.RouteDef]:
    """One route per endpoint, each with its pipeline built now, once."""
    return [
        web.route(e.method, e.path, Forward(e, Pipeline(forward_stages(e, state))).handle)
        for e in ENDPOINTS
    ]
