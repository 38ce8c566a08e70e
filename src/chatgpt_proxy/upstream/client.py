"""The one HTTP client to upstreams: timeouts, retries on other keys, errors mapped at one boundary.

``UpstreamClient.send`` returns a ``Reply`` whose status the proxy may pass to its client: a
success, or the client's own mistake (400/404/422...). Everything tied to a key (429, 401,
``insufficient_quota``) and every upstream failure (5xx, HTML, redirects, connection errors,
timeouts) is handled here, by trying another key, and becomes a ``ProxyError`` only when no
key is left, the attempts or the deadline run out (DESIGN §4). aiohttp's exceptions never
leave this module.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from chatgpt_proxy.errors import (
    ProxyError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from chatgpt_proxy.headers import upstream_request_headers
from chatgpt_proxy.settings import RetrySettings, TimeoutSettings
from chatgpt_proxy.upstream.idle import IdleWatch, Watched
from chatgpt_proxy.upstream.pool import UpstreamKey
from chatgpt_proxy.upstream.retry import RetryBudget, backoff_delay
from chatgpt_proxy.upstream.router import Upstream

_MAX_ERROR_BODY = 64 * 1024
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

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


@dataclass(slots=True)
class Reply:
    """An upstream answer the proxy relays. ``close()`` returns the key to the pool."""

    response: aiohttp.ClientResponse
    upstream: Upstream
    key: UpstreamKey
    attempts: int
    watched: Watched | None = None  # a stream's silence watch
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
        """What has arrived of the answer (waiting for something); ``b""`` at its end."""
        chunk = await self.response.content.readany()
        if self.watched is not None:
            self.watched.touch()
        return chunk

    async def read(self, limit: int = 16 * 1024 * 1024) -> bytes:
        """The whole answer (up to ``limit`` bytes); a broken one is an ``UpstreamError``."""
        try:
            return await read_limited(self.response, limit)
        except TimeoutError as exc:  # aiohttp's read timeout: silent for `first_byte`
            self.report_failure()
            raise UpstreamTimeout("The upstream answer stopped before it finished.") from exc
        except (aiohttp.ClientError, OSError) as exc:
            self.report_failure()
            raise UpstreamError("The upstream answer broke off before it finished.") from exc


class UpstreamClient:
    """Sends one request upstream, on as many keys as it takes.

    >>> client = UpstreamClient(session, settings.timeouts, settings.retries)
    >>> outbound = Outbound("POST", "/chat/completions", "", request.headers, body)
    >>> reply = await client.send(router.route("gpt-4o"), outbound)
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeouts: TimeoutSettings,
        retries: RetrySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        idle: IdleWatch | None = None,
    ) -> None:
        self._session = session
        self._idle = idle
        self._timeouts = timeouts
        self._retries = retries
        self._clock = clock
        self._rng = rng or random.Random()
        self._budget = RetryBudget(retries.budget_ratio, retries.budget_min_per_second, clock=clock)
        # aiohttp's read timeout bounds the wait for the headers, cheaper than a timeout
        # context around every request; a stream is then watched for silence instead.
        self._answer_timeout = aiohttp.ClientTimeout(
            sock_connect=timeouts.connect, sock_read=timeouts.first_byte
        )

    async def send(self, upstream: Upstream, outbound: Outbound) -> Reply:
        deadline = self._clock() + self._timeouts.request
        replayable = outbound.body is None or isinstance(outbound.body, bytes | ReplayableBody)
        url = upstream.settings.base_url + outbound.path
        if outbound.query:
            url += "?" + outbound.query
        limits = self._answer_timeout
        self._budget.record_request()
        tried: set[str] = set()
        failures = 0
        last: ProxyError | None = None
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise last or UpstreamTimeout("The upstream did not answer before the deadline.")
            key = self._acquire(upstream, tried, last, outbound.holder_key)
            tried.add(key.alias)
            outcome = await self._attempt(upstream, key, outbound, url, limits, remaining)
            if isinstance(outcome, aiohttp.ClientResponse):
                reply = Reply(outcome, upstream, key, attempts=len(tried))
                if outbound.stream:
                    reply.watched = self._watch_silence(outcome)
                return reply
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

    def _watch_silence(self, response: aiohttp.ClientResponse) -> Watched | None:
        """From the headers on, a stream may stay silent ``stream_idle``, not ``first_byte``."""
        connection = response.connection
        protocol = connection.protocol if connection is not None else None
        if self._idle is None:
            if protocol is not None:
                protocol.read_timeout = self._timeouts.stream_idle
            return None
        if protocol is not None:
            # No timer re-armed on every chunk: the watch's one sweep ends silent streams.
            protocol.read_timeout = None
            protocol.start_timeout()
        return self._idle.watch(response)

    def _acquire(
        self, upstream: Upstream, tried: set[str], last: ProxyError | None, holder: str | None
    ) -> UpstreamKey:
        if holder is not None:
            # Only the holder's account has the object: its failure is the answer, and a
            # second look at the key says whether that is "retired" (409) or "retry" (last).
            key = upstream.pool.acquire_exact(holder)
            if last is None:
                return key
            upstream.pool.release(key)
            raise last
        try:
            return upstream.pool.acquire(exclude=tried)
        except ProxyError:
            if last is None:
                raise
        # Every key not yet tried is unusable: the pool's verdict over all keys says why
        # (all cooling, all retired), unless a key we already tried is still active.
        key = upstream.pool.acquire()
        upstream.pool.release(key)
        raise last

    async def _attempt(
        self,
        upstream: Upstream,
        key: UpstreamKey,
        outbound: Outbound,
        url: str,
        limits: aiohttp.ClientTimeout,
        remaining: float,
    ) -> aiohttp.ClientResponse | ProxyError:
        """One try on one key: the response to relay, or why it failed.

        The key goes back to the pool here unless its response is handed on, however the try
        ends (a client that leaves cancels it half-way).
        """
        headers = upstream_request_headers(
            outbound.headers,
            key.secret,
            organization=upstream.settings.organization,
            project=upstream.settings.project,
        )
        if isinstance(outbound.body, ReplayableBody):
            headers["Content-Length"] = str(outbound.body.size)
        if limits.sock_read is not None and remaining < limits.sock_read:
            limits = aiohttp.ClientTimeout(sock_connect=limits.sock_connect, sock_read=remaining)
        handed_on = False
        try:
            response = await self._session.request(
                outbound.method,
                url,
                headers=headers,
                data=outbound.body,
                allow_redirects=False,
                timeout=limits,
            )
        except TimeoutError:
            upstream.pool.release(key)
            upstream.pool.report_failure(key)
            return UpstreamTimeout(f"The upstream {upstream.name} did not answer in time.")
        except (aiohttp.ClientError, OSError) as exc:
            upstream.pool.release(key)
            upstream.pool.report_failure(key)
            return UpstreamError(
                f"The upstream {upstream.name} could not be reached ({type(exc).__name__})."
            )
        except BaseException:
            upstream.pool.release(key)
            raise
        try:
            if _answers_the_client(upstream, key, response):
                handed_on = True
                return response
            return await self._failure(upstream, key, response)
        finally:
            if not handed_on:
                upstream.pool.release(key)
                response.release()

    async def _failure(
        self, upstream: Upstream, key: UpstreamKey, response: aiohttp.ClientResponse
    ) -> ProxyError:
        """Why this key or this try failed, for an answer not the client's to see."""
        pool = upstream.pool
        status = response.status
        detail = await _error_body(response)
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
        if status < 300 or _is_html(response):
            return UpstreamError(f"The upstream {upstream.name} answered with an HTML page.")
        return UpstreamError(f"The upstream {upstream.name} failed with status {status}.")


def _answers_the_client(
    upstream: Upstream, key: UpstreamKey, response: aiohttp.ClientResponse
) -> bool:
    """Whether the answer is the client's to see: a success, or the client's own mistake.

    Decided from the status line and headers alone, without waiting for the body.
    """
    status = response.status
    theirs = status < 300 or (400 <= status < 500 and status != 401 and status != 429)
    if theirs and not _is_html(response):
        upstream.pool.report_success(key)  # a 4xx here is no fault of the key's
        return True
    return False


def _is_html(response: aiohttp.ClientResponse) -> bool:
    return response.content_type in ("text/html", "application/xhtml+xml")


def _is_quota_error(detail: object) -> bool:
    if not isinstance(detail, dict):
        return False
    error = detail.get("error")
    if not isinstance(error, dict):
        return False
    return "insufficient_quota" in (error.get("code"), error.get("type"))


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to ``limit`` bytes (``StreamReader.read(n)`` may stop at any chunk)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def _error_body(response: aiohttp.ClientResponse) -> object:
    """The parsed JSON of an error answer, read only so far; None when it is not JSON."""
    try:
        raw = await asyncio.wait_for(read_limited(response, _MAX_ERROR_BODY), timeout=5.0)
        return orjson.loads(raw)
    except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError):
        return None


def reset_seconds(headers: CIMultiDictProxy[str]) -> float | None:
    """When a rate-limited key may be used again: ``retry-after`` or ``x-ratelimit-reset-*``."""
    if (value := headers.get("retry-after-ms")) is not None:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is not None:
        try:
            return float(value)
        except ValueError:
            pass  # an HTTP date: rare upstream, and the reset headers below are more precise
    resets = [
        parse_duration(value)
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if (value := headers.get(name)) is not None
    ]
    known = [seconds for seconds in resets if seconds is not None]
    return max(known) if known else None


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
