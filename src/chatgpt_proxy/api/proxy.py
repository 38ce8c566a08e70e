"""The OpenAI routes: an allowlist of endpoints, each forwarded through the one pipeline.

auth → model policy → route → limits → ownership → moderation → upstream (key pool,
retries) → relay → meter. Bodies go upstream byte for byte; the proxy re-encodes one only to
ask a stream for its usage, and strips that extra chunk again on the way back. A stored
response is its creator's alone: its id names it in the paths and in ``previous_response_id``,
and the record of its owner (``keystore/objects.py``) decides who may use it and which
upstream key serves that.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, unquote

import orjson
from aiohttp import web

from chatgpt_proxy.app import CLIENT_CLOSED, STATE, AppState, context
from chatgpt_proxy.errors import (
    InvalidRequest,
    ModelNotAllowed,
    ObjectNotFound,
    PreviousResponseNotFound,
    ProxyError,
    ResourceUnavailable,
    ServiceUnavailable,
    UnknownRoute,
)
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.keystore.objects import RESPONSE, StoredObject
from chatgpt_proxy.multipart import SpooledUpload, UploadLimits, form_flag, read_multipart
from chatgpt_proxy.requestbody import read_json
from chatgpt_proxy.streaming import CheckAnswer, OnCreated, Outcome, StreamStyle, relay
from chatgpt_proxy.token_usage import Usage, estimate_tokens
from chatgpt_proxy.upstream.client import Body, Outbound
from chatgpt_proxy.upstream.router import Upstream

BodyKind = Literal["json", "multipart", "none"]

_ID = re.compile(r"^[A-Za-z0-9_\-]{1,256}$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9._:@\-/]{1,256}$")
# What a path segment may hold unquoted (RFC 3986 pchar), as the OpenAI SDK quotes them.
_PATH_SAFE = "!$&'()*+,;=:@"
# Fields with which an SDK would reach another host or account; never sent upstream.
_FOREIGN_FIELDS = ("api_base", "base_url", "api_key", "organization", "extra_headers")
_USAGE_STREAMS = frozenset({"chat.completions", "completions"})
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'
_CHECKED_ANSWERS = frozenset({"chat.completions", "completions", "responses"})
# The kind of stored object an endpoint family's ids (and previous_response_id) name.
_OWNED_KINDS = {"responses": RESPONSE}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One OpenAI endpoint: its route here, its path upstream, and what its body is."""

    name: str
    method: str
    path: str
    upstream_path: str
    body: BodyKind = "json"
    accepts_json: bool = False  # a multipart endpoint that also takes a JSON body


ENDPOINTS = (
    Endpoint("chat.completions", "POST", "/v1/chat/completions", "/chat/completions"),
    Endpoint("completions", "POST", "/v1/completions", "/completions"),
    Endpoint("embeddings", "POST", "/v1/embeddings", "/embeddings"),
    Endpoint("moderations", "POST", "/v1/moderations", "/moderations"),
    Endpoint("images.generations", "POST", "/v1/images/generations", "/images/generations"),
    Endpoint("images.edits", "POST", "/v1/images/edits", "/images/edits", "multipart", True),
    Endpoint(
        "images.variations", "POST", "/v1/images/variations", "/images/variations", "multipart"
    ),
    Endpoint("audio.speech", "POST", "/v1/audio/speech", "/audio/speech"),
    Endpoint(
        "audio.transcriptions",
        "POST",
        "/v1/audio/transcriptions",
        "/audio/transcriptions",
        "multipart",
    ),
    Endpoint(
        "audio.translations", "POST", "/v1/audio/translations", "/audio/translations", "multipart"
    ),
    Endpoint("responses", "POST", "/v1/responses", "/responses"),
    Endpoint(
        "responses.input_tokens", "POST", "/v1/responses/input_tokens", "/responses/input_tokens"
    ),
    Endpoint("responses.compact", "POST", "/v1/responses/compact", "/responses/compact"),
    Endpoint("responses.retrieve", "GET", "/v1/responses/{id}", "/responses/{id}", "none"),
    Endpoint("responses.delete", "DELETE", "/v1/responses/{id}", "/responses/{id}", "none"),
    Endpoint(
        "responses.cancel", "POST", "/v1/responses/{id}/cancel", "/responses/{id}/cancel", "none"
    ),
    Endpoint(
        "responses.input_items",
        "GET",
        "/v1/responses/{id}/input_items",
        "/responses/{id}/input_items",
        "none",
    ),
    Endpoint("models.retrieve", "GET", "/v1/models/{model:.+}", "/models/{model}", "none"),
)


@dataclass(slots=True)
class _Parsed:
    body: Body
    document: Mapping[str, Any]
    model: str | None
    stream: bool
    upload: SpooledUpload | None = None

    def estimate(self) -> int:
        # An upload's files are not tokens of the prompt: only its text fields are counted.
        if self.upload is not None:
            size = self.upload.fields_size
        else:
            size = len(self.body) if isinstance(self.body, bytes) else 0
        return estimate_tokens(self.document, size)


class Forward:
    """The handler of one endpoint."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def handle(self, request: web.Request) -> web.StreamResponse:
        with ExitStack() as held:  # a spooled upload is let go however the request ends
            return await self._forward(request, held)

    async def _forward(self, request: web.Request, held: ExitStack) -> web.StreamResponse:
        state = request.app[STATE]
        ctx = context(request)
        ctx.endpoint = self.endpoint.name
        key = state.keys.authenticate(request.headers.get("Authorization"), request.remote)
        ctx.key_id = key.id
        path = self._upstream_path(request)
        parsed = await self._parse(request, state, held)
        _strip_foreign_fields(parsed)
        model = parsed.model
        if model is not None:
            ctx.model = model
            if not key.policy.allows_model(model):
                raise ModelNotAllowed(f"This key may not use the model `{model}`.", param="model")
        upstream = state.router.route(model)
        call = self._call(request, state, key, parsed, path, upstream)
        if not self._background(parsed):
            return await call
        # A background response goes on upstream whoever waits for it: one whose client left
        # is still read to its end, so that its id and usage are recorded.
        return await asyncio.shield(state.drain.keep(call))

    async def _call(
        self,
        request: web.Request,
        state: AppState,
        key: ClientKey,
        parsed: _Parsed,
        path: str,
        upstream: Upstream,
    ) -> web.StreamResponse:
        """Admit, moderate, send upstream, relay and meter; the admission is settled however
        it ends."""
        ctx = context(request)
        model = parsed.model
        estimate = parsed.estimate()
        admission = await state.limiter.admit(key, estimate, model)
        ctx.headers = admission.headers
        # What an answer whose usage is unknown is charged (DESIGN §4): never zero.
        estimated = Usage(estimate, 0, estimate)
        used: list[tuple[int, float]] = []  # tokens and cost, once metered
        sent, started = False, 0.0
        name = self.endpoint.name
        try:
            # Once admitted: a key probing for ids is held to its rate like any other request.
            holder = await self._holder(state, request, parsed, key)
            if holder is not None:
                upstream = _holding(state, holder)
            await state.moderator.check(self.endpoint.name, parsed.document, key)
            if state.drain.draining:
                raise ServiceUnavailable("The server is shutting down; retry the request.")
            body, strip_usage = self._usage_stream(parsed)
            outbound = Outbound(
                request.method,
                path,
                request.query_string,
                request.headers,
                body,
                parsed.stream,
                holder_key=holder.upstream_alias if holder is not None else None,
                model=model,
            )
            sent, started = True, time.monotonic()  # the upstream may be working on it now
            try:
                reply = await state.client.send(upstream, outbound)
            except ProxyError:
                sent = False  # every try failed: nothing was done upstream
                raise
            ctx.upstream = reply.alias

            def done(outcome: Outcome) -> None:
                usage = outcome.usage
                if usage is None and reply.response.status < 400:
                    usage = estimated  # cut, abandoned or too large to read
                cost = _meter(state, key, name, model, reply.alias, outcome.status, usage, started)
                used.append((usage.total_tokens if usage else 0, cost))

            style = StreamStyle(
                strip_usage=strip_usage,
                typed_events=name.startswith("responses"),
                keep_reading=self._background(parsed),
            )
            return await relay(
                request,
                reply,
                state.redactor,
                style=style,
                on_done=done,
                check_answer=self._answer_check(state, key),
                on_created=self._recorder(state, key, parsed, upstream, reply.alias),
                drain=state.drain,
            )
        except asyncio.CancelledError:
            if sent and not used:  # the client left before the answer came
                cost = _meter(
                    state, key, name, model, ctx.upstream, CLIENT_CLOSED, estimated, started
                )
                used.append((estimate, cost))
            raise
        finally:
            await admission.settle(*(used[0] if used else (0, 0.0)))
            await admission.release()

    def _background(self, parsed: _Parsed) -> bool:
        """A Responses API call run in the background: not cancelled when its client leaves."""
        return self.endpoint.name == "responses" and parsed.document.get("background") is True

    async def _holder(
        self, state: AppState, request: web.Request, parsed: _Parsed, key: ClientKey
    ) -> StoredObject | None:
        """The record of the stored object this request is about, which must be ``key``'s.

        Another key's object is told exactly as an unknown one is, and neither is forwarded:
        the upstream would serve any object of its account to any of its keys. The id is
        echoed as the upstream does, scrubbed as the upstream's own errors are.
        """
        scrub = state.redactor.scrub
        kind = _OWNED_KINDS.get(self.endpoint.name.partition(".")[0])
        if kind is None:
            return None
        object_id = request.match_info.get("id")
        if object_id is not None:
            found = await state.objects.find(kind, object_id)
            if found is None or found.owner_key_id != key.id:
                raise ObjectNotFound(scrub(f"Response with id '{object_id}' not found."))
            return found
        previous = parsed.document.get("previous_response_id")
        if not isinstance(previous, str):
            return None  # absent, or the upstream's to refuse
        # Only a value shaped like an id is looked up (a NUL is a database error) or echoed.
        well_formed = _ID.fullmatch(previous) is not None
        found = await state.objects.find(kind, previous) if well_formed else None
        if found is None or found.owner_key_id != key.id:
            shown = f" with id '{previous}'" if well_formed else ""
            raise PreviousResponseNotFound(
                scrub(f"Previous response{shown} not found."), param="previous_response_id"
            )
        return found

    def _recorder(
        self, state: AppState, key: ClientKey, parsed: _Parsed, upstream: Upstream, alias: str
    ) -> OnCreated | None:
        """Records the owner of the response this request creates, before the client has its id."""
        if self.endpoint.name != "responses" or parsed.document.get("store") is False:
            return None  # a response not stored cannot be fetched again: nothing to own

        async def record(object_id: str) -> None:
            now = datetime.now(UTC)
            await state.objects.record(
                StoredObject(RESPONSE, object_id, key.id, upstream.name, alias, now)
            )

        return record

    def _answer_check(self, state: AppState, key: ClientKey) -> CheckAnswer | None:
        if self.endpoint.name not in _CHECKED_ANSWERS or not state.settings.moderation.check_output:
            return None
        moderator, name = state.moderator, self.endpoint.name

        async def check(body: bytes) -> None:
            await moderator.check_output(name, body, key)

        return check

    def _upstream_path(self, request: web.Request) -> str:
        params = request.match_info
        if not params:
            return self.endpoint.upstream_path
        if "id" in params and not _ID.match(params["id"]):
            raise UnknownRoute(f"Invalid URL ({request.method} {request.path})")
        if "model" in params:
            # From the path as sent: a `%2F` inside a model id stays inside its one segment
            # upstream, as the SDK quoted it (aiohttp's match_info has it decoded into `/`).
            raw = request.rel_url.raw_path.removeprefix("/v1/models/")
            segments = [unquote(segment) for segment in raw.split("/")]
            model = "/".join(segments)
            if not _MODEL_ID.match(model) or any(s in ("", ".", "..") for s in model.split("/")):
                raise UnknownRoute(f"Invalid URL ({request.method} {request.path})")
            quoted = "/".join(quote(segment, safe=_PATH_SAFE) for segment in segments)
            return self.endpoint.upstream_path.format(model=quoted)
        return self.endpoint.upstream_path.format(**params)

    async def _parse(self, request: web.Request, state: AppState, held: ExitStack) -> _Parsed:
        server = state.settings.server
        limit = server.max_body_bytes
        kind = self.endpoint.body
        if kind == "multipart" and not (
            self.endpoint.accepts_json and request.content_type == "application/json"
        ):
            limits = UploadLimits(
                server.max_upload_bytes, limit, server.upload_memory_bytes, server.upload_spool_dir
            )
            upload = held.enter_context(await read_multipart(request, limits))
            fields = upload.fields
            model = fields.get("model")
            if model is not None and not isinstance(model, str):
                raise InvalidRequest("`model` must be a string.", param="model")
            return _Parsed(upload.body, fields, model, form_flag(fields.get("stream")), upload)
        if kind == "none":
            model = request.match_info.get("model")
            return _Parsed(None, {}, model, request.query.get("stream") == "true")
        raw, document = await read_json(request, limit)
        model = document.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidRequest("`model` must be a string.", param="model")
        return _Parsed(raw, document, model, document.get("stream") is True)

    def _usage_stream(self, parsed: _Parsed) -> tuple[Body, bool]:
        """Ask a chat or completion stream for its usage when the client did not.

        The proxy's ``include_usage`` is merged into whatever ``stream_options`` the client
        sent (absent, ``null``, ``{}``, ``false``), and the usage chunk is hidden again.
        """
        if not parsed.stream or self.endpoint.name not in _USAGE_STREAMS:
            return parsed.body, False
        options = parsed.document.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return parsed.body, False
        if options is not None and not isinstance(options, dict):
            return parsed.body, False  # malformed: the upstream tells the client so
        if "stream_options" not in parsed.document and isinstance(parsed.body, bytes):
            # Prepend the one member instead of re-encoding the whole history: cheaper, and
            # every byte the client sent still goes up as it was.
            start = parsed.body.index(b"{") + 1
            return parsed.body[:start] + _INCLUDE_USAGE + parsed.body[start:], True
        document = dict(parsed.document)
        document["stream_options"] = {**(options or {}), "include_usage": True}
        return orjson.dumps(document), True


def _holding(state: AppState, holder: StoredObject) -> Upstream:
    """The upstream holding ``holder``'s object: no other has it."""
    upstream = state.router.get(holder.upstream)
    if upstream is None:
        raise ResourceUnavailable(
            f"The upstream {holder.upstream} holding this object is no longer configured."
        )
    return upstream


def _strip_foreign_fields(parsed: _Parsed) -> None:
    """Drop the body fields that name another host or credential (DESIGN §3.2).

    The proxy never acts on them, and the upstream must not see them either. A body without
    them (the usual one) goes up byte for byte: looking them up costs a few dict lookups.
    """
    document = parsed.document
    if not any(name in document for name in _FOREIGN_FIELDS):
        return
    if parsed.upload is not None or not isinstance(parsed.body, bytes):
        # A form is forwarded as the bytes received, which cannot lose a field: refuse it.
        raise InvalidRequest(
            "Fields that name another host or credential are not accepted in a form.",
            param=next(name for name in _FOREIGN_FIELDS if name in document),
        )
    kept = {name: value for name, value in document.items() if name not in _FOREIGN_FIELDS}
    parsed.document = kept
    parsed.body = orjson.dumps(kept)


def _meter(
    state: AppState,
    key: ClientKey,
    endpoint: str,
    model: str | None,
    alias: str,
    status: int,
    usage: Usage | None,
    started: float,
) -> float:
    """Record the request's usage; its cost in USD (0 when the model has no price)."""
    cost = state.meter.pricing.cost(model, usage)
    latency_ms = int((time.monotonic() - started) * 1000)
    state.meter.record(key.id, model or "-", alias, endpoint, status, usage, cost, latency_ms)
    return cost or 0.0


def proxy_routes() -> list[web.RouteDef]:
    return [web.route(e.method, e.path, Forward(e).handle) for e in ENDPOINTS]
