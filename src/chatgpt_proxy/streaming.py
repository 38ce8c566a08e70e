"""Relaying an upstream answer to the client as it arrives, and noting the usage it reports.

SSE is relayed event by event (framed as the standard says, see ``sse``), byte for byte.
When the proxy itself asked for the usage chunk (``strip_usage``), that extra chunk and the
``"usage":null`` it adds to every other chunk are removed, so the client sees exactly what
it would have seen. A stream that breaks upstream ends with an SSE error event and never a
fake ``[DONE]``; a client that goes away cancels the handler, and the upstream connection is
dropped at once (aiohttp's ``handler_cancellation``). An answer is relayed whole or ends in
an error: one too large to hold is streamed, or refused when it must be held (an error
answer to scrub, an answer to moderate), never cut to fit.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from chatgpt_proxy.drain import Drain
from chatgpt_proxy.errors import (
    ProxyError,
    ServiceUnavailable,
    TransportError,
    TransportTimeout,
    UpstreamError,
    UpstreamTimeout,
)
from chatgpt_proxy.exchange import CLIENT_CLOSED, CheckAnswer, OnCreated, Outcome, start_stream
from chatgpt_proxy.headers import SSE_HEADERS, client_response_headers
from chatgpt_proxy.redaction import Redactor
from chatgpt_proxy.sse import (
    EventFramer,
    error_event,
    event_start,
    event_stop,
    next_sequence_number,
)
from chatgpt_proxy.token_usage import Usage, event_data, usage_in_document, usage_in_json
from chatgpt_proxy.upstream.client import Reply

logger = logging.getLogger("chatgpt_proxy.streaming")

# Answers up to this size are read whole and sent in one write: fewer syscalls, and their
# usage is read from the complete document.
_WHOLE_ANSWER_LIMIT = 1024 * 1024
# How much of a larger JSON answer is kept to find its usage (beyond it usage is unknown,
# and the estimate is charged), and the largest answer held whole to be moderated.
_USAGE_SCAN_LIMIT = 8 * 1024 * 1024
# The longest SSE event held to be read; a longer one is relayed unread as it arrives.
_EVENT_LIMIT = 8 * 1024 * 1024
_USAGE_NULL = b',"usage":null'
_USAGE_MARK = b'"usage"'
_USAGE_NULL_MARK = b'"usage":null'
_NULL_VALUE = re.compile(rb"\s*:\s*null\b")  # what follows a "usage" key with no usage
_CREATED = b'"response.created"'
_LINE_END = re.compile(rb"\r\n|\r|\n")
_HOLD_LIMIT = 64 * 1024  # how much of a stream may wait for its response.created event


@dataclass(frozen=True, slots=True)
class StreamStyle:
    """How a stream is relayed.

    ``strip_usage``: the proxy asked for the usage chunk, so it is hidden again.
    ``typed_events``: the Responses API's ``event:``-typed stream, whose errors are typed too.
    ``keep_reading``: a background response, which goes on upstream whoever reads it: one
    whose client left is read to its end (for its usage), not cancelled.
    """

    strip_usage: bool = False
    typed_events: bool = False
    keep_reading: bool = False


class _Detachable:
    """The client end of a stream read to its end anyway: once it has left, writes are dropped."""

    __slots__ = ("gone", "response")

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.gone = False

    async def write(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            await self.response.write(data)
        except ConnectionResetError:
            self.gone = True


async def relay(
    request: web.Request,
    reply: Reply,
    redactor: Redactor,
    outcome: Outcome,
    *,
    style: StreamStyle = StreamStyle(),
    check_answer: CheckAnswer | None = None,
    on_created: OnCreated | None = None,
    drain: Drain | None = None,
) -> web.StreamResponse:
    """Answer ``request`` with ``reply``; ``outcome`` tells, however the relay ends, what the
    client was told and the usage seen.

    ``on_created`` is given the object a successful JSON answer carries, or the response a
    Responses API stream creates, before the client has it.
    ``drain`` (the server's) tracks a stream so that a shutdown can end it with an error event.
    """
    upstream = reply.response
    try:
        if upstream.content_type == "text/event-stream":
            if drain is None:
                return await _relay_events(request, reply, outcome, style, on_created, drain)
            # Tracked for the shutdown by hand: a generator context manager per stream would
            # cost more than the set operations themselves.
            drain.streams.add(upstream)
            try:
                return await _relay_events(request, reply, outcome, style, on_created, drain)
            finally:
                drain.streams.discard(upstream)
        return await _relay_body(request, reply, redactor, outcome, check_answer, on_created)
    except ProxyError as err:
        outcome.status = err.status  # refused before its headers: the client gets this error
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        outcome.status = CLIENT_CLOSED  # the client went away first
        raise
    finally:
        reply.close(broken=not outcome.complete)


async def _relay_events(
    request: web.Request,
    reply: Reply,
    outcome: Outcome,
    style: StreamStyle,
    on_created: OnCreated | None,
    drain: Drain | None,
) -> web.StreamResponse:
    headers = client_response_headers(reply.response.headers)
    headers.update(SSE_HEADERS)
    response = web.StreamResponse(status=reply.response.status, headers=headers)
    await start_stream(request, response)
    client = _Detachable(response) if style.keep_reading else None
    write = response.write if client is None else client.write
    framer = EventFramer(_EVENT_LIMIT)
    sent = b""  # the last whole events sent: an error event follows their sequence number
    last = b""  # what goes out with the end of the answer
    failure: ProxyError | None = None
    held = _Held(on_created) if on_created is not None else None
    while True:
        try:
            chunk = await reply.read_chunk()
        except TransportError as exc:
            failure = _broken(reply, str(exc), drain, timed_out=isinstance(exc, TransportTimeout))
            chunk = held.release() if held is not None else b""  # what it had, then the error
            if chunk and (events := framer.feed(chunk)[1]):
                sent = events
                await write(_inspected(events, outcome, style))
            break
        if held is not None:
            try:
                sendable = await held.feed(chunk)
            except ProxyError as err:
                failure = err  # the id was never sent: no one can use it
                break
            if not held.released:
                continue
            held = None
            if not chunk:  # the end, before any response.created event
                passed, events = framer.feed(sendable)
                if passed or events:
                    await write(passed + _inspected(events, outcome, style))
            chunk = chunk and sendable
        if not chunk:
            if _cut_here(reply, drain):
                failure = _broken(reply, "silence", drain)  # closed here, which looks like an end
            else:
                outcome.complete = True
            break
        # An over-long event's bytes (relayed as they come, never read), then whole events.
        passed, events = framer.feed(chunk)
        if events:
            sent = events
            passed += _inspected(events, outcome, style)
        if client is None and reply.at_end() and not _cut_here(reply, drain):
            # The upstream has ended and all of it is read: its last bytes go out with the
            # end of the answer, one write instead of two (nothing is held back for it).
            outcome.complete = True
            last = passed
            break
        if passed:
            await write(passed)
    if failure is None:
        if tail := framer.flush():  # an unfinished last event: the client's to discard
            last += _inspected(tail, outcome, style)
    else:
        # An unfinished event is dropped: the error event must not land inside it.
        opening = b"\n\n" if framer.inside_event else b""
        number = next_sequence_number(sent) if style.typed_events else None
        event = error_event(failure, typed=style.typed_events, sequence_number=number)
        await write(opening + event)
    if client is not None:
        if last:
            await client.write(last)
        if client.gone:
            outcome.status = CLIENT_CLOSED
            return response
        last = b""
    await response.write_eof(last)
    return response


def _cut_here(reply: Reply, drain: Drain | None) -> bool:
    """Whether the upstream connection was closed here (silent too long, or the shutdown's
    grace period over), which looks like the end of its answer but is not."""
    return reply.went_silent or (drain is not None and drain.ending)


def _inspected(events: bytes, outcome: Outcome, style: StreamStyle) -> bytes:
    """``events`` as the client gets them, their usage noted in ``outcome``."""
    if style.strip_usage:
        return _without_usage(events, outcome)
    outcome.usage = _last_usage(events) or outcome.usage
    return events


def _last_usage(events: bytes) -> Usage | None:
    """The usage of the last event in ``events`` that reports one: only the latest counts,
    so it is looked for from the end, and no event without one is cut out or parsed."""
    mark = events.rfind(_USAGE_MARK)
    while mark >= 0:
        if _is_null_usage(events, mark):
            mark = events.rfind(_USAGE_MARK, 0, mark)
            continue
        start = event_start(events, mark)
        usage = usage_in_document(_event_document(events[start : event_stop(events, mark)]))
        if usage is not None:
            return usage
        mark = events.rfind(_USAGE_MARK, 0, start)
    return None


def _is_null_usage(events: bytes, mark: int) -> bool:
    """Whether the ``"usage"`` key at ``mark`` has no usage (``null``), OpenAI's way first."""
    after = mark + len(_USAGE_MARK)
    return events.startswith(b":null", after) or _NULL_VALUE.match(events, after) is not None


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
            created = _created_in(self._held) if self._held.find(_CREATED) >= 0 else None
            if created is not None:
                await self._on_created(created)
            elif len(self._held) <= _HOLD_LIMIT:
                return b""  # an upstream that sends much before the event is not held up
        return self.release()

    def release(self) -> bytes:
        self.released = True
        held, self._held = self._held, b""
        return held


def _broken(
    reply: Reply, cause: str, drain: Drain | None, *, timed_out: bool = False
) -> ProxyError:
    """Why a stream ended early, logged by key alias and told as an error event."""
    if drain is not None and drain.ending:
        logger.warning("stream via %s ended: the grace period of the shutdown is over", reply.alias)
        return ServiceUnavailable("The server is shutting down; retry the request.")
    logger.warning("upstream stream via %s broke off: %s", reply.alias, cause)
    reply.report_failure()
    if timed_out or reply.went_silent:
        return UpstreamTimeout("The upstream stream stayed silent for too long.")
    return UpstreamError("The upstream stream broke off before it finished.")


def _without_usage(events: bytes, outcome: Outcome) -> bytes:
    """``events`` as the client would have had them: no usage chunk, no ``"usage":null``.

    Every pass over a chunk costs (JSON is full of the quotes the searches start with), so
    there are two: one removes the ``"usage":null`` members, and one looks for the usage
    left, from the end, where the usage chunk comes. Only the events that carry a usage
    object are cut out and parsed.
    """
    # The same as replace(_USAGE_NULL, b""), which counts the members in a pass of its own
    # before a second cuts them: about 29k instructions instead of 37k for 7 kB of events.
    events = b"".join(events.split(_USAGE_NULL))
    last: Usage | None = None  # looking from the end, the first found is the latest
    mark = events.rfind(_USAGE_MARK)
    while mark >= 0:
        if _is_null_usage(events, mark):
            mark = events.rfind(_USAGE_MARK, 0, mark)
            continue
        start = event_start(events, mark)
        stop = event_stop(events, mark)
        document = _event_document(events[start:stop])
        last = last or usage_in_document(document)
        if document is not None and document.get("choices") == []:
            events = events[:start] + events[stop:]
        mark = events.rfind(_USAGE_MARK, 0, start)
    outcome.usage = last or outcome.usage
    return events


def _event_document(event: bytes) -> dict[str, Any] | None:
    return _json_document(event_data(event))


def _created_in(stream: bytes) -> dict[str, Any] | None:
    """The response that the ``response.created`` event in ``stream`` announces, once its
    data line has arrived whole (LF, CRLF or CR line ends alike), if it has an id."""
    for line in _LINE_END.split(stream)[:-1]:  # the last piece may be unfinished
        if line.find(_CREATED) >= 0 and line.startswith(b"data:"):
            document = _json_document(line[5:])
            if document is not None and isinstance(response := document.get("response"), dict):
                return response if isinstance(response.get("id"), str) else None
    return None


def _json_document(body: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


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
    # A success to moderate is held whole, whatever its type: one that cannot be read as
    # an answer is refused, never let through unjudged. One that creates a stored object is
    # held whole too, to record the ids it shows before the client has them.
    checked = check_answer is not None and upstream.status < 300
    recorded = on_created is not None and upstream.status < 300 and is_json
    checked = checked or recorded
    whole = length is not None and length <= _WHOLE_ANSWER_LIMIT
    if upstream.status >= 400 or whole or checked:
        limit = _USAGE_SCAN_LIMIT if checked else _WHOLE_ANSWER_LIMIT
        body = await reply.read(limit + 1)
        if len(body) > limit:  # held to be scrubbed or judged: too large to hold whole
            logger.warning("answer via %s refused: over %d bytes", reply.alias, limit)
            raise UpstreamError("The upstream answer is too large for the proxy to relay.")
        if upstream.status >= 400:
            body = redactor.scrub_bytes(body)  # the client's mistake, told without account ids
        elif checked:
            # One parse for all: the answer to judge, the object it carries, its usage.
            document = _json_document(body)
            outcome.usage = usage_in_document(document)
            if check_answer is not None:
                if document is None:
                    logger.warning("answer via %s refused: not JSON to moderate", reply.alias)
                    raise UpstreamError("The upstream answer could not be read to moderate it.")
                await check_answer(body)
            if on_created is not None and document is not None:
                await on_created(document)
        elif is_json:
            outcome.usage = usage_in_json(body)
        outcome.complete = True
        return web.Response(body=body, status=upstream.status, headers=headers)
    response = web.StreamResponse(status=upstream.status, headers=headers)
    await start_stream(request, response)
    kept: list[bytes] = []
    kept_size = 0
    while True:
        try:
            chunk = await reply.read_chunk()
        except TransportError as exc:
            reply.report_failure()
            logger.warning("upstream answer via %s broke off: %s", reply.alias, exc)
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
