"""The Realtime API: ``GET /v1/realtime?model=…``, a WebSocket relayed frame by frame.

Before the upgrade, as for any request: the client key (``Authorization: Bearer pk-…``, or
the browser's subprotocol ``openai-insecure-api-key.pk-…``), the key's model allowlist, the
upstream serving the model, and the key's limits, where the session counts as one request
(refusals are plain HTTP answers in OpenAI's envelope). Then an upstream socket is opened on
a pool key (``upstream.sockets``), and the client's upgrade answered: only the ``realtime``
subprotocol is ever echoed, so neither key travels back.

While the session lasts, frames pass as they come, both ways: text, binary, ping and pong
(the two ends answer each other's pings), and the close code of whichever side ends first is
passed to the other. On the way up, the text of ``conversation.item.create``,
``session.update`` and ``response.create`` events is moderated: a blocked event is answered
with an ``error`` event and never sent (audio passes as it is). On the way down, each
``response.done`` event's usage is metered and charged to the key's budgets and to its tpm
window; once the budgets are spent, the session ends with an ``error`` event
(``insufficient_quota``) and close code 1008. While the tpm window is full, the client's
``response.create`` is answered with an ``error`` event (``rate_limit_exceeded``) and not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import unquote_plus

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.errors import (
    InvalidRequest,
    ModelNotAllowed,
    ProxyError,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    TransportError,
)
from chatgpt_proxy.exchange import context, start_stream
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.limits.policy import limits_of
from chatgpt_proxy.state import AppState
from chatgpt_proxy.token_usage import usage_in_document
from chatgpt_proxy.upstream.sockets import SocketLease
from chatgpt_proxy.upstream.transport import MAX_SOCKET_MESSAGE, SocketFrame, sendable_close_code

logger = logging.getLogger("chatgpt_proxy.realtime")

PROTOCOL = "realtime"
KEY_PROTOCOL = "openai-insecure-api-key."  # the browser's way to send a key
BETA_PROTOCOL = "openai-beta.realtime-v1"  # the beta SDKs' subprotocol: the OpenAI-Beta header
_MAX_MODEL = 256
_QUERY_CREDENTIALS = frozenset({"api-key", "authorization", "api_key", "key"})
# Client events whose text reaches the model; their type names, to look for before parsing.
_MODERATED = ("conversation.item.create", "session.update", "response.create")
_RESPONSE_DONE = '"response.done"'
_POLICY_CLOSE = 1008  # RFC 6455: the endpoint ends a session that broke its policy
_BROKEN_CLOSE = 1011  # RFC 6455: the server met a condition it could not go on with
_GOING_AWAY = 1001  # RFC 6455: the server is going down


def realtime_routes(state: AppState) -> list[web.RouteDef]:
    return [web.get("/v1/realtime", RealtimeEndpoint(state).handle)]


class RealtimeEndpoint:
    """Opens Realtime sessions: a client's WebSocket joined to an upstream's."""

    def __init__(self, state: AppState) -> None:
        self._state = state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        state, ctx = self._state, context(request)
        ctx.endpoint = "realtime"
        offered = _offered_protocols(request)
        client_socket = web.WebSocketResponse(
            protocols=(PROTOCOL,), autoping=False, max_msg_size=MAX_SOCKET_MESSAGE
        )
        key = state.keys.authenticate(_authorization(request, offered), request.remote)
        ctx.key_id = key.id
        if not client_socket.can_prepare(request).ok:
            raise InvalidRequest("The Realtime API is served over a WebSocket: send an upgrade.")
        model = request.query.get("model")
        if not model or len(model) > _MAX_MODEL:
            raise InvalidRequest("Name the Realtime model: ?model=...", param="model")
        ctx.model = model
        if not key.policy.allows_model(model):
            raise ModelNotAllowed(f"This key may not use the model `{model}`.", param="model")
        upstream = state.router.route(model)
        if state.drain.draining:
            raise ServiceUnavailable("The server is shutting down; retry the request.")
        admission = await state.limiter.admit(key, 0, model)  # the session is one request
        ctx.headers = admission.headers
        try:
            lease = await state.sockets.open(
                upstream,
                "/realtime",
                _upstream_query(request.query_string),
                _upstream_headers(request, offered),
                model,
                (PROTOCOL,) if PROTOCOL in offered else (),
            )
            ctx.upstream = lease.alias
            try:
                await start_stream(request, client_socket)
                session = _Session(state, key, model, client_socket, lease)
                await session.run()
            finally:
                await lease.close()
        finally:
            await admission.release()
        return client_socket


def _offered_protocols(request: web.Request) -> tuple[str, ...]:
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return tuple(part.strip() for part in header.split(",") if part.strip())


def _authorization(request: web.Request, offered: tuple[str, ...]) -> str | None:
    """The client key, as a bearer header would carry it: the header, else the subprotocol."""
    authorization = request.headers.get("Authorization")
    if authorization:
        return authorization
    for protocol in offered:
        if protocol.startswith(KEY_PROTOCOL):
            return "Bearer " + protocol.removeprefix(KEY_PROTOCOL)
    return None


def _upstream_query(query: str) -> str:
    """The client's query string less any credential in it (the Azure SDK puts its key in
    ``api-key``): the client's key never goes upstream."""
    return "&".join(
        pair
        for pair in query.split("&")
        if pair and unquote_plus(pair.partition("=")[0]).lower() not in _QUERY_CREDENTIALS
    )


def _upstream_headers(request: web.Request, offered: tuple[str, ...]) -> CIMultiDictProxy[str]:
    """The client's headers, with the beta subprotocol said as the header it stands for (the
    headers sent upstream are an allowlist of these: ``headers.upstream_request_headers``)."""
    if BETA_PROTOCOL not in offered or "OpenAI-Beta" in request.headers:
        return request.headers
    headers = CIMultiDict(request.headers)
    headers["OpenAI-Beta"] = "realtime=v1"
    return CIMultiDictProxy(headers)


class _Session:
    """One relayed session, from both sockets open to both closed."""

    def __init__(
        self,
        state: AppState,
        key: ClientKey,
        model: str,
        client: web.WebSocketResponse,
        lease: SocketLease,
    ) -> None:
        self._state = state
        self._key = key
        # The key with its budgets and tpm alone: each response is charged to them through
        # the limiter, without counting as one more request (the session was counted once).
        policy = replace(key.policy, rpm=None, max_concurrency=None)
        self._charged_key = replace(key, policy=policy)
        self._charged = limits_of(policy) is not None
        budgets = replace(policy, tpm=None)
        self._budget_key = replace(key, policy=budgets)
        self._budgeted = limits_of(budgets) is not None
        self._model = model
        self._client = client
        self._lease = lease
        self._upstream = lease.socket
        self._moderate = state.settings.moderation.enabled
        self._since = time.monotonic()  # the session's start, then the last response's end
        self._relays: tuple[asyncio.Future[int | None], ...] = ()
        self._ending = False  # the server's shutdown is ending the session

    def close(self) -> None:
        """End the session now (the server's grace period is over): its relays stop, and
        ``run`` tells the client why and closes both sockets."""
        self._ending = True
        for relay in self._relays:
            relay.cancel()

    async def run(self) -> None:
        """Relay until one side closes, then close the other with the code it was given."""
        up = asyncio.ensure_future(self._client_to_upstream())
        down = asyncio.ensure_future(self._upstream_to_client())
        self._relays = (up, down)
        client_code = upstream_code = 1000
        try:
            with self._state.drain.track(self):
                done, _ = await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
            finished = up if up in done else down
            if self._ending:
                client_code = upstream_code = _GOING_AWAY
                ending = ServiceUnavailable("The server is shutting down; reconnect.")
                with contextlib.suppress(ConnectionError):
                    await self._client.send_str(_error_event(ending, None))
                return
            error = finished.exception()
            if error is not None and not isinstance(error, ConnectionError | TransportError):
                logger.error("the Realtime relay failed", exc_info=error)
            code = None if error is not None else finished.result()
            if finished is up:
                upstream_code = sendable_close_code(code)
            else:  # an upstream gone without a close frame is an error to the client
                client_code = code if code is not None else _BROKEN_CLOSE
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            await self._lease.close(upstream_code)
            await self._client.close(code=sendable_close_code(client_code))

    async def _client_to_upstream(self) -> int | None:
        """Frames from the client, sent upstream; the client's close code once it closes."""
        client, upstream = self._client, self._upstream
        while True:
            message = await client.receive()
            kind = message.type
            if kind == web.WSMsgType.TEXT:
                refusal = await self._refusal(message.data)
                if refusal is not None:
                    await client.send_str(refusal)
                    continue
                await upstream.send(SocketFrame("text", message.data))
            elif kind == web.WSMsgType.BINARY:
                await upstream.send(SocketFrame("binary", message.data))
            elif kind == web.WSMsgType.PING:
                await upstream.send(SocketFrame("ping", message.data))
            elif kind == web.WSMsgType.PONG:
                await upstream.send(SocketFrame("pong", message.data))
            elif kind == web.WSMsgType.CLOSE:
                return int(message.data)
            else:  # CLOSING, CLOSED, ERROR: the client is gone
                return client.close_code

    async def _upstream_to_client(self) -> int | None:
        """Frames from the upstream, sent to the client; the code to close the client with."""
        client, upstream = self._client, self._upstream
        while True:
            try:
                frame = await upstream.receive()
            except TransportError:
                return _BROKEN_CLOSE
            data = frame.data
            if frame.kind == "text":
                assert isinstance(data, str)
                # Charged before the client sees it, so that the client's next
                # response.create is judged with these tokens counted.
                spent = await self._charge(data) if _RESPONSE_DONE in data else None
                await client.send_str(data)
                if spent is not None:
                    await client.send_str(spent)
                    return _POLICY_CLOSE
            elif frame.kind == "binary":
                await client.send_bytes(_bytes(data))
            elif frame.kind == "ping":
                await client.ping(_bytes(data))
            elif frame.kind == "pong":
                await client.pong(_bytes(data))
            else:
                return frame.code

    async def _refusal(self, text: str) -> str | None:
        """The ``error`` event answering a client event the policy refuses; None to send it."""
        if not any(kind in text for kind in _MODERATED):
            return None
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None  # the upstream tells the client what is wrong with it
        if not isinstance(event, dict) or event.get("type") not in _MODERATED:
            return None
        try:
            _check_model(self._key, event)
            if self._moderate:
                await self._state.moderator.check("realtime", event, self._key)
            if event["type"] == "response.create" and self._key.policy.tpm is not None:
                await self._admit(self._charged_key)
        except ProxyError as err:
            return _error_event(err, event.get("event_id"))
        return None

    async def _charge(self, text: str) -> str | None:
        """Meter a ``response.done`` event's usage and charge it to the key's budgets and tpm;
        once the budgets are spent, the ``error`` event that ends the session."""
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict) or event.get("type") != "response.done":
            return None
        usage = usage_in_document(event)
        if usage is None:
            return None
        state, lease = self._state, self._lease
        cost = state.meter.pricing.cost(self._model, usage)
        now = time.monotonic()
        latency_ms, self._since = int((now - self._since) * 1000), now
        state.meter.record(
            self._key.id, self._model, lease.alias, "realtime", 200, usage, cost, latency_ms
        )
        if not self._charged:
            return None
        try:
            try:
                charge = await state.limiter.admit(self._charged_key, 0, self._model)
            except QuotaExceeded:
                raise
            except RateLimited:
                # The tpm window is already full (the client's next response.create will be
                # refused): these tokens are charged to the budgets alone.
                charge = await state.limiter.admit(self._budget_key, 0, self._model)
            await charge.settle(usage.total_tokens, cost or 0.0)
            await charge.release()
            if self._budgeted:
                await self._admit(self._budget_key)
        except QuotaExceeded as err:
            return _error_event(err, None)
        return None

    async def _admit(self, key: ClientKey) -> None:
        """Raise the refusal of ``key``'s limits now; a check, nothing kept or counted."""
        check = await self._state.limiter.admit(key, 0, self._model)
        await check.release()


def _check_model(key: ClientKey, event: Mapping[str, Any]) -> None:
    """A session.update that names a model names one the key may use."""
    session = event.get("session")
    model = session.get("model") if isinstance(session, dict) else None
    if isinstance(model, str) and not key.policy.allows_model(model):
        raise ModelNotAllowed(f"This key may not use the model `{model}`.", param="model")


def _error_event(err: ProxyError, event_id: object) -> str:
    """OpenAI's Realtime ``error`` event for ``err``, naming the client event it answers."""
    error = {
        "type": err.type,
        "code": err.code,
        "message": err.message,
        "param": err.param,
        "event_id": event_id if isinstance(event_id, str) else None,
    }
    event_id = f"event_proxy_{time.monotonic_ns():x}"
    return orjson.dumps({"type": "error", "event_id": event_id, "error": error}).decode()


def _bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data
