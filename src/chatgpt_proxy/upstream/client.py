"""The one HTTP client to upstreams: timeouts, retries on other keys, errors mapped at one boundary.

``UpstreamClient.send`` returns a ``Reply`` whose status the proxy may pass to its client: a
success, or the client's own mistake (400/404/422...). Everything tied to a key (429, 401,
``insufficient_quota``, a 403 or a ``model_not_found`` from one account) and every upstream
failure (5xx, HTML or non-JSON where JSON belongs, redirects, connection errors, timeouts) is
handled here, by trying another key, and becomes a ``ProxyError`` only when no key is left, the
attempts or the deadline run out (DESIGN §4). The network is reached through a ``Transport``
(``upstream.transport``), whose ``TransportError`` is all this module knows of its failures.

How long an attempt may wait for its answer to begin fits the request: a stream has its own,
shorter limit, and a client that says how long it will wait (the SDKs'
``x-stainless-read-timeout``) gets a 504 a margin before it would give up by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field

import orjson
from multidict import CIMultiDictProxy

from chatgpt_proxy.errors import (
    ProxyError,
    TransportError,
    TransportTimeout,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from chatgpt_proxy.headers import upstream_request_headers
from chatgpt_proxy.settings import RetrySettings, TimeoutSettings
from chatgpt_proxy.upstream.hints import client_timeout, reset_seconds
from chatgpt_proxy.upstream.idle import IdleWatch, Watched
from chatgpt_proxy.upstream.pool import UpstreamKey, model_refused
from chatgpt_proxy.upstream.retry import RetryBudget, backoff_delay
from chatgpt_proxy.upstream.router import Upstream
from chatgpt_proxy.upstream.transport import (
    Timeouts,
    Transport,
    TransportRequest,
    TransportResponse,
)

_MAX_ERROR_BODY = 64 * 1024
_MAX_HEAD = 64 * 1024  # read of a JSON answer to see that it is JSON
_JSON_START = re.compile(rb"[^ \t\r\n]")
# A 404's codes saying that the key's account lacks the model (Azure: its deployment).
_MODEL_REFUSALS = frozenset({"model_not_found", "DeploymentNotFound"})
_ANSWERS_ANY_TYPE = "/audio/"  # speech, transcripts as text, srt or vtt; the rest is JSON or SSE
_CONTENT = "/content"  # a file's bytes, as uploaded

Body = bytes | AsyncIterable[bytes] | None


class ReplayableBody(AsyncIterable[bytes]):
    """A body kept out of memory (a spooled upload) that can be sent again on another key:
    each iteration starts over from its first byte. Other iterables are sent once, chunked;
    this one with its ``size`` as Content-Length."""

    size: int


@dataclass(slots=True)
class Outbound:
    """A request to forward; ``path`` is below the upstream's ``base_url``."""

    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    body: Body = None
    stream: bool = False
    # The alias of the key holding the stored object this request is about: that key or none.
    holder_key: str | None = None
    model: str | None = None  # the model the body names: a key whose account refuses it is barred
    tokens: int = 0  # the request's estimated tokens, weighed by the least_headroom strategy
    # The answer may take minutes (a stream, a generation): sent over the lasting lane's
    # connections, apart from short calls (``TransportRequest.lasting``).
    lasting: bool = False
    # The key to try first, if it is in service (the one holding the client's other objects).
    preferred_key: str | None = None


@dataclass(slots=True)
class Reply:
    """An upstream answer the proxy relays. ``close()`` returns the key to the pool.

    ``response`` is the transport's: its status, headers and content type; the body is read
    through ``read_chunk()`` / ``read()`` here, which hand on first what was read to judge it.
    """

    response: TransportResponse
    upstream: Upstream
    key: UpstreamKey
    attempts: int
    watched: Watched | None = None  # a stream's silence watch
    _head: bytes = field(default=b"", repr=False)  # read to judge the answer, not yet handed on
    _closed: bool = field(default=False, repr=False)

    @property
    def alias(self) -> str:
        return self.key.alias

    def close(self, *, broken: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self.watched is not None:
            self.watched.done()
        self.upstream.pool.release(self.key)
        if broken:
            self.response.close()  # drops the connection: the upstream sees the cancel
        else:
            self.response.release()

    def report_failure(self) -> None:
        self.upstream.pool.report_failure(self.key)

    @property
    def went_silent(self) -> bool:
        """Whether the stream was ended for staying silent longer than ``stream_idle``."""
        return self.watched is not None and self.watched.went_silent

    async def read_chunk(self) -> bytes:
        """What has arrived of the answer (waiting for something); ``b""`` at its end.

        A body that stops short raises the transport's ``TransportError``.
        """
        if self._head:
            head, self._head = self._head, b""
            return head
        watched = self.watched
        if watched is None:
            return await self.response.read_chunk()
        watched.wait()  # only time spent waiting here is the upstream's silence
        chunk = await self.response.read_chunk()
        watched.touch()
        return chunk

    def at_end(self) -> bool:
        """Whether the answer has been read to its end: the next read would be ``b""``."""
        return not self._head and self.response.at_end()

    async def read(self, limit: int = 16 * 1024 * 1024) -> bytes:
        """The whole answer (up to ``limit`` bytes); a broken one is an ``UpstreamError``."""
        head, self._head = self._head, b""
        try:
            rest = await self.response.read(limit - len(head))
            return head + rest if head and rest else head or rest
        except TransportTimeout as exc:  # silent for `first_byte`
            self.report_failure()
            raise UpstreamTimeout("The upstream answer stopped before it finished.") from exc
        except TransportError as exc:
            self.report_failure()
            raise UpstreamError("The upstream answer broke off before it finished.") from exc


class UpstreamClient:
    """Sends one request upstream, on as many keys as it takes.

    >>> client = UpstreamClient(AiohttpTransport(), settings.timeouts, settings.retries)
    >>> outbound = Outbound("POST", "/chat/completions", "", request.headers, body)
    >>> reply = await client.send(router.route("gpt-4o"), outbound)
    """

    def __init__(
        self,
        transport: Transport,
        timeouts: TimeoutSettings,
        retries: RetrySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        idle: IdleWatch | None = None,
    ) -> None:
        self._transport = transport
        self._idle = idle
        self._timeouts = timeouts
        self._retries = retries
        self._clock = clock
        self._rng = rng or random.Random()
        self._budget = RetryBudget(
            retries.budget_ratio, retries.budget_min, window=retries.budget_window, clock=clock
        )
        # An answer that comes whole may pause as long as it took to begin. A stream has
        # its own wait for the headers, then its silence is limited to `stream_idle`: by the
        # watch's one sweep when there is one (no timer re-armed per chunk), otherwise by
        # the transport, whose limit then bounds the headers too.
        self._answer_limits = Timeouts(timeouts.connect, timeouts.first_byte, timeouts.first_byte)
        stream_first_byte = min(timeouts.first_byte, timeouts.stream_first_byte)
        self._stream_limits = (
            Timeouts(timeouts.connect, stream_first_byte)
            if idle is not None
            else Timeouts(
                timeouts.connect,
                min(stream_first_byte, timeouts.stream_idle),
                timeouts.stream_idle,
            )
        )

    async def send(self, upstream: Upstream, outbound: Outbound) -> Reply:
        try:
            return await self._send(upstream, outbound)
        except (UpstreamError, UpstreamTimeout) as err:
            err.advise_retry(self._retries.client_retry_after)
            raise

    async def _send(self, upstream: Upstream, outbound: Outbound) -> Reply:
        limits = self._stream_limits if outbound.stream else self._answer_limits
        request_time = self._timeouts.request
        client_wait = client_timeout(outbound.headers)
        margin = self._timeouts.client_margin
        if client_wait is not None and client_wait > margin:
            # Give up a margin before the client would, so it hears why (504) instead of
            # timing out blind. A client in more of a hurry than the margin is let go.
            patience = client_wait - margin
            request_time = min(request_time, patience)
            limits = limits.within(patience)
        deadline = self._clock() + request_time
        # The first try begins as the deadline is set, with (all but a few microseconds of)
        # the whole time: its limits are worked out once here, and are the same for every
        # request with the same settings (so the transport reuses what it builds from them).
        # A later try may wait no longer than what is left.
        first_limits = limits.within(request_time)
        replayable = outbound.body is None or isinstance(outbound.body, bytes | ReplayableBody)
        url = upstream.url(outbound.path, outbound.query, outbound.model)
        self._budget.record_request()
        tried: set[str] = set()
        failures = 0
        last: ProxyError | None = None
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise last or UpstreamTimeout("The upstream did not answer before the deadline.")
            key = self._acquire(upstream, tried, last, outbound)
            tried.add(key.alias)
            try_limits = first_limits if last is None else limits.within(remaining)
            outcome = await self._attempt(upstream, key, outbound, url, try_limits)
            if isinstance(outcome, Reply):
                outcome.attempts = len(tried)
                if outbound.stream and self._idle is not None:
                    outcome.watched = self._idle.watch(outcome.response)
                return outcome
            last = outcome
            if not isinstance(outcome, UpstreamError | UpstreamTimeout):
                # Tied to that key, not to the request: another key is tried at once.
                if not replayable:
                    raise outcome
                continue
            failures += 1
            if (
                not replayable
                or failures >= self._retries.max_attempts
                or not self._budget.try_spend()
            ):
                raise last
            delay = backoff_delay(
                failures, self._retries.backoff_base, self._retries.backoff_max, self._rng
            )
            if delay >= deadline - self._clock():
                raise last
            await asyncio.sleep(delay)

    def _acquire(
        self, upstream: Upstream, tried: set[str], last: ProxyError | None, outbound: Outbound
    ) -> UpstreamKey:
        pool, model = upstream.pool, outbound.model
        if outbound.holder_key is not None:
            # Only the holder's account has the object: its failure is the answer, and a
            # second look at the key says whether that is "retired" (409) or "retry" (last).
            key = pool.acquire_exact(outbound.holder_key, outbound.tokens)
            if last is None:
                return key
            pool.answered(key, None, outbound.tokens)
            pool.release(key)
            raise last
        if outbound.preferred_key is not None and last is None:
            with contextlib.suppress(ProxyError):  # away: any key will do for a new object
                return pool.acquire_exact(outbound.preferred_key)
        try:
            return pool.acquire(exclude=tried, model=model, tokens=outbound.tokens)
        except ProxyError:
            if last is None:
                raise
        # Every key not yet tried is unusable: the pool's verdict over all keys says why
        # (all cooling, all retired, all refusing the model), unless a key we already tried
        # is still in play.
        key = pool.acquire(model=model)
        pool.answered(key)
        pool.release(key)
        raise last

    async def _attempt(
        self,
        upstream: Upstream,
        key: UpstreamKey,
        outbound: Outbound,
        url: str,
        limits: Timeouts,
    ) -> Reply | ProxyError:
        """One try on one key, within ``limits``: the answer to relay, or why it failed.

        The key goes back to the pool here unless its response is handed on, however the try
        ends (a client that leaves cancels it half-way).
        """
        headers = upstream_request_headers(
            outbound.headers,
            key.secret,
            organization=upstream.settings.organization,
            project=upstream.settings.project,
            auth=upstream.settings.auth,
        )
        if isinstance(outbound.body, ReplayableBody):
            headers["Content-Length"] = str(outbound.body.size)
        request = TransportRequest(
            outbound.method, url, headers, outbound.body, limits, outbound.lasting
        )
        handed_on = False
        answer_headers: CIMultiDictProxy[str] | None = None
        try:
            response = await self._transport.send(request)
            answer_headers = response.headers
        except TransportTimeout:
            upstream.pool.release(key)
            upstream.pool.report_failure(key)
            return UpstreamTimeout(f"The upstream {upstream.name} did not answer in time.")
        except TransportError as exc:
            upstream.pool.release(key)
            upstream.pool.report_failure(key)
            return UpstreamError(f"The upstream {upstream.name} could not be reached ({exc}).")
        except BaseException:
            upstream.pool.release(key)
            raise
        finally:
            # Answered or never to be: the key's limits as its headers tell (least_headroom).
            upstream.pool.answered(key, answer_headers, outbound.tokens)
        try:
            verdict = await self._judge(upstream, key, outbound, response)
            if isinstance(verdict, bytes):
                handed_on = True
                return Reply(response, upstream, key, attempts=0, _head=verdict)
            return verdict
        except TransportTimeout:
            upstream.pool.report_failure(key)
            return UpstreamTimeout(f"The upstream {upstream.name} did not answer in time.")
        except TransportError as exc:
            upstream.pool.report_failure(key)
            return UpstreamError(f"The upstream {upstream.name} broke off its answer ({exc}).")
        finally:
            if not handed_on:
                upstream.pool.release(key)
                response.release()

    async def _judge(
        self,
        upstream: Upstream,
        key: UpstreamKey,
        outbound: Outbound,
        response: TransportResponse,
    ) -> bytes | ProxyError:
        """Whether the answer is the client's to see: a success or the client's own mistake
        (then what was read of it to judge, to hand on first), or why this try failed.

        A 2xx must be what the endpoint answers (JSON, SSE; anything but HTML for audio): a
        2xx page or text where JSON belongs is a broken upstream, not an answer.
        """
        pool = upstream.pool
        status = response.status
        if status < 300:
            content_type = response.content_type
            if content_type == "application/json":
                head = await _json_head(response)
                if head is not None:
                    pool.report_success(key)
                    return head
            elif (
                content_type == "text/event-stream"
                or status == 204
                or (_answers_any_type(outbound.path) and not _is_html(response))
            ):
                pool.report_success(key)
                return b""
            pool.report_failure(key)
            return UpstreamError(
                f"The upstream {upstream.name} answered {status} with a body that is not JSON."
            )
        refusal = status == 403 or (
            status == 404 and outbound.model is not None and outbound.body is not None
        )
        if refusal and not _is_html(response):
            raw = await _error_head(response)
            if status == 403 or _error_code(_parsed(raw)) in _MODEL_REFUSALS:
                # The key's account may not use this model; another account may.
                if outbound.model is not None:
                    pool.report_refused_model(key, outbound.model, status)
                return model_refused(outbound.model, {status})
            pool.report_success(key)
            return raw
        if 400 <= status < 500 and status != 401 and status != 429 and not _is_html(response):
            pool.report_success(key)  # the client's own mistake is no fault of the key's
            return b""
        return await self._failure(upstream, key, response)

    async def _failure(
        self, upstream: Upstream, key: UpstreamKey, response: TransportResponse
    ) -> ProxyError:
        """Why this key or this try failed, for an answer not the client's to see."""
        pool = upstream.pool
        status = response.status
        detail = _parsed(await _error_head(response))
        if status == 401:
            pool.report_retired(key, "invalid")
            return UpstreamRateLimited("The upstream key was refused; retry.", retry_after=1)
        if status == 429:
            if _is_quota_error(detail):
                pool.report_retired(key, "no_quota")
                return UpstreamRateLimited(
                    "The upstream key is out of quota; retry.", retry_after=1
                )
            retry_after = reset_seconds(response.headers)
            pool.report_rate_limited(key, retry_after)
            return UpstreamRateLimited(
                f"The upstream {upstream.name} is rate limited; retry later.",
                retry_after=retry_after or 1.0,
            )
        pool.report_failure(key)
        if 300 <= status < 400:
            return UpstreamError(f"The upstream {upstream.name} answered with a redirect.")
        if _is_html(response):
            return UpstreamError(f"The upstream {upstream.name} answered with an HTML page.")
        return UpstreamError(f"The upstream {upstream.name} failed with status {status}.")


def _answers_any_type(path: str) -> bool:
    return path.startswith(_ANSWERS_ANY_TYPE) or path.endswith(_CONTENT)


def _is_html(response: TransportResponse) -> bool:
    return response.content_type in ("text/html", "application/xhtml+xml")


def _is_quota_error(detail: object) -> bool:
    error = _error_of(detail)
    return error is not None and "insufficient_quota" in (error.get("code"), error.get("type"))


def _error_code(detail: object) -> object:
    error = _error_of(detail)
    return error.get("code") if error is not None else None


def _error_of(detail: object) -> Mapping[str, object] | None:
    error = detail.get("error") if isinstance(detail, dict) else None
    return error if isinstance(error, dict) else None


async def _json_head(response: TransportResponse) -> bytes | None:
    """The first bytes of an answer said to be JSON, if they begin like JSON; None if not."""
    head = b""
    while len(head) < _MAX_HEAD:
        chunk = await response.read_chunk()
        if not chunk:
            return None
        head += chunk
        start = _JSON_START.search(head)
        if start is not None:
            return head if head[start.start() : start.start() + 1] in (b"{", b"[") else None
    return None


async def _error_head(response: TransportResponse) -> bytes:
    """An error answer, read only so far (and never for long)."""
    try:
        return await asyncio.wait_for(response.read(_MAX_ERROR_BODY), timeout=5.0)
    except (TimeoutError, TransportError):
        return b""


def _parsed(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
