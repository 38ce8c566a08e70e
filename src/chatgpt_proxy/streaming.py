"""Relaying an upstream answer to the client as it arrives, and noting the usage it reports.

SSE is passed through chunk by chunk, byte for byte, unless the proxy itself asked for the
usage chunk (``strip_usage``): then whole events are relayed with that extra chunk and the
``"usage":null`` it adds to every other chunk removed, so the client sees exactly what it
would have seen. A stream that breaks upstream ends with an SSE error event and never a fake
``[DONE]``; a client that goes away cancels the handler, and the upstream connection is
dropped at once (aiohttp's ``handler_cancellation``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from chatgpt_proxy.app import start_stream
from chatgpt_proxy.errors import ProxyError, UpstreamError, UpstreamTimeout
from chatgpt_proxy.headers import SSE_HEADERS, client_response_headers
from chatgpt_proxy.redaction import Redactor
from chatgpt_proxy.upstream.client import Reply
from chatgpt_proxy.usage import Usage, event_data, usage_in_document, usage_in_json

logger = logging.getLogger("chatgpt_proxy.streaming")

# Answers up to this size are read whole and sent in one write: fewer syscalls, and their
# usage is read from the complete document.
_WHOLE_ANSWER_LIMIT = 1024 * 1024
# How much of a larger JSON answer is kept to find its usage; beyond it usage is unknown.
_USAGE_SCAN_LIMIT = 8 * 1024 * 1024
_USAGE_NULL = b',"usage":null'
_USAGE_MARK = b'"usage"'
_USAGE_NULL_MARK = b'"usage":null'
_NULL_VALUE = re.compile(rb"\s*:\s*null\b")  # what follows a "usage" key with no usage
_CREATED = b'"response.created"'
_LINE_END = re.compile(rb"\r\n|\r|\n")
_HOLD_LIMIT = 64 * 1024  # how much of a stream may wait for its response.created event


@dataclass(slots=True)
class Outcome:
    """What the relay saw: the usage reported, and whether the answer arrived whole."""

    status: int
    usage: Usage | None = None
    complete: bool = False


OnDone = Callable[[Outcome], None]
# Records the id of the object an answer created; the id reaches the client only once it
# returns, and a ProxyError it raises replaces the answer (or, on a stream, ends it).
OnCreated = Callable[[str], Awaitable[None]]
# Judges a whole successful answer before any of it is sent; raising a ProxyError replaces it.
CheckAnswer = Callable[[bytes], Awaitable[None]]


class EventSplitter:
    """Cuts an SSE byte stream after its last whole event, keeping the unfinished tail."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The whole events completed by ``chunk`` (``b""`` if none), terminators included."""
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        self._pending = data[end + 2 :]
        return data[: end + 2]


async def relay(
    request: web.Request,
    reply: Reply,
    redactor: Redactor,
    *,
    strip_usage: bool = False,
    on_done: OnDone | None = None,
    check_answer: CheckAnswer | None = None,
    on_created: OnCreated | None = None,
) -> web.StreamResponse:
    """Answer ``request`` with ``reply``; ``on_done`` runs once, however the relay ends.

    ``on_created`` is given the id of the response object the answer creates (Responses API).
    """
    upstream = reply.response
    outcome = Outcome(upstream.status)
    try:
        if upstream.content_type == "text/event-stream":
            return await _relay_events(request, reply, outcome, strip_usage, on_created)
        return await _relay_body(request, reply, redactor, outcome, check_answer, on_created)
    finally:
        reply.close(broken=not outcome.complete)
        if on_done is not None:
            on_done(outcome)


async def _relay_events(
    request: web.Request,
    reply: Reply,
    outcome: Outcome,
    strip_usage: bool,
    on_created: OnCreated | None,
) -> web.StreamResponse:
    headers = client_response_headers(reply.response.headers)
    headers.update(SSE_HEADERS)
    response = web.StreamResponse(status=reply.response.status, headers=headers)
    await start_stream(request, response)
    splitter = EventSplitter()
    held = _Held(on_created) if on_created is not None else None
    while True:
        try:
            chunk = await reply.read_chunk()
        except (aiohttp.ClientError, TimeoutError) as exc:
            unsent = held.release() if held is not None else b""
            await response.write(unsent + _broken(reply, type(exc).__name__).sse_event())
            break
        if held is not None:
            try:
                sendable = await held.feed(chunk)
            except ProxyError as err:
                await response.write(err.sse_event())  # the id was never sent: no one can use it
                break
            if not held.released:
                continue
            held = None
            if not chunk:  # the end, before any response.created event
                await response.write(sendable)
            chunk = chunk and sendable
        if not chunk:
            if reply.went_silent:  # closed by the idle watch, which may look like an end
                await response.write(_broken(reply, "silence").sse_event())
            else:
                outcome.complete = True
            break
        if strip_usage:
            # Whole events only, so the usage chunk can be cut out and nothing split half-way.
            if whole := splitter.feed(chunk):
                await response.write(_without_usage(whole, outcome))
            continue
        await response.write(chunk)
        whole = splitter.feed(chunk)
        if _has_usage(whole):
            for event in whole.split(b"\n\n"):
                if _has_usage(event):
                    outcome.usage = usage_in_document(_event_document(event)) or outcome.usage
    await response.write_eof()
    return response


class _Held:
    """A stream's first bytes, held until the id its ``response.created`` event gives is
    recorded: a client may use that id at once, on any replica."""

    def __init__(self, on_created: OnCreated) -> None:
        self._on_created = on_created
        self._held = b""
        self.released = False

    async def feed(self, chunk: bytes) -> bytes:
        """What may be sent now: ``b""`` while holding, everything held once released."""
        if chunk:
            self._held += chunk  # small: the event comes first
            created = _created_in(self._held) if _CREATED in self._held else None
            if created is not None:
                await self._on_created(created)
            elif len(self._held) <= _HOLD_LIMIT:
                return b""  # an upstream that sends much before the event is not held up
        return self.release()

    def release(self) -> bytes:
        self.released = True
        held, self._held = self._held, b""
        return held


def _broken(reply: Reply, cause: str) -> ProxyError:
    """Why a stream ended early, logged by key alias and told as an error event."""
    logger.warning("upstream stream via %s broke off: %s", reply.alias, cause)
    reply.report_failure()
    if reply.went_silent:
        return UpstreamTimeout("The upstream stream stayed silent for too long.")
    return UpstreamError("The upstream stream broke off before it finished.")


def _has_usage(events: bytes) -> bool:
    """Whether an event carries a usage object, not just OpenAI's ``"usage":null``."""
    return events.count(_USAGE_MARK) > events.count(_USAGE_NULL_MARK)


def _without_usage(events: bytes, outcome: Outcome) -> bytes:
    """``events`` as the client would have had them: no usage chunk, no ``"usage":null``.

    Every pass over a chunk costs (JSON is full of the quotes the searches start with), so
    there are two: one removes the ``"usage":null`` members, and one looks for the usage
    left, from the end, where the usage chunk comes. Only the events that carry a usage
    object are cut out and parsed.
    """
    events = events.replace(_USAGE_NULL, b"")
    last: Usage | None = None  # looking from the end, the first found is the latest
    mark = events.rfind(_USAGE_MARK)
    while mark >= 0:
        start = events.rfind(b"\n\n", 0, mark) + 2  # 1 when the event opens the chunk
        start = 0 if start == 1 else start
        if _NULL_VALUE.match(events, mark + len(_USAGE_MARK)) is None:
            stop = events.find(b"\n\n", mark)
            stop = len(events) if stop < 0 else stop + 2
            document = _event_document(events[start:stop])
            last = last or usage_in_document(document)
            if isinstance(document, dict) and document.get("choices") == []:
                events = events[:start] + events[stop:]
        mark = events.rfind(_USAGE_MARK, 0, start)
    outcome.usage = last or outcome.usage
    return events


def _event_document(event: bytes) -> dict[str, Any] | None:
    return _json_document(event_data(event))


def _created_in(stream: bytes) -> str | None:
    """The id of the response that the ``response.created`` event in ``stream`` announces,
    once its data line has arrived whole (LF, CRLF or CR line ends alike)."""
    for line in _LINE_END.split(stream)[:-1]:  # the last piece may be unfinished
        if _CREATED in line and line.startswith(b"data:"):
            document = _json_document(line[5:])
            if document is not None and isinstance(response := document.get("response"), dict):
                return _string(response.get("id"))
    return None


def _json_document(body: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _string(value: object) -> str | None:
    return value if isinstance(value, str) else None


async def _relay_body(
    request: web.Request,
    reply: Reply,
    redactor: Redactor,
    outcome: Outcome,
    check_answer: CheckAnswer | None,
    on_created: OnCreated | None,
) -> web.StreamResponse:
    upstream = reply.response
    headers = client_response_headers(upstream.headers)
    is_json = upstream.content_type == "application/json"
    length = upstream.content_length
    # Read whole to check it, or to record the id it gives before the client has it.
    checked = (check_answer or on_created) is not None and upstream.status < 300 and is_json
    whole = length is not None and length <= _WHOLE_ANSWER_LIMIT
    if upstream.status >= 400 or whole or checked:
        body = await reply.read(_USAGE_SCAN_LIMIT if checked else _WHOLE_ANSWER_LIMIT)
        if upstream.status >= 400:
            body = redactor.scrub_bytes(body)  # the client's mistake, told without account ids
        elif is_json:
            created = None
            if on_created is not None and upstream.status < 300:
                # One parse for both: the id of the response created, and its usage.
                document = _json_document(body)
                outcome.usage = usage_in_document(document)
                created = _string(document.get("id")) if document else None
            else:
                outcome.usage = usage_in_json(body)
            if checked and check_answer is not None:
                await check_answer(body)
            if on_created is not None and created is not None:
                await on_created(created)
        outcome.complete = True
        return web.Response(body=body, status=upstream.status, headers=headers)
    response = web.StreamResponse(status=upstream.status, headers=headers)
    await start_stream(request, response)
    kept: list[bytes] = []
    kept_size = 0
    while True:
        try:
            chunk = await reply.read_chunk()
        except (aiohttp.ClientError, TimeoutError) as exc:
            reply.report_failure()
            logger.warning("upstream answer via %s broke off: %s", reply.alias, type(exc).__name__)
            # Too late for an error body: closing without the last chunk tells the client
            # the answer is incomplete, instead of handing it a truncated one as whole.
            if request.transport is not None:
                request.transport.close()
            return response
        if not chunk:
            break
        await response.write(chunk)
        if is_json and kept_size < _USAGE_SCAN_LIMIT:
            kept.append(chunk)
            kept_size += len(chunk)
    if is_json and kept_size < _USAGE_SCAN_LIMIT:
        outcome.usage = usage_in_json(b"".join(kept))
    outcome.complete = True
    await response.write_eof()
    return response
