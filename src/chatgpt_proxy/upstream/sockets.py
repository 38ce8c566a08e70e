"""WebSockets to upstreams (the Realtime API): opened on a pool key, retried on another.

``SocketOpener.open`` is the WebSocket's ``UpstreamClient.send``: it takes a key from the
upstream's pool, opens the socket through the transport with that key in its headers, and
judges a refused upgrade as a request's answer is judged (401: the key is retired; 429: it
rests; 5xx, connection errors, timeouts: another key is tried, up to ``max_attempts``). The
socket comes back as a ``SocketLease``, which holds the key until it is closed::

    opener = SocketOpener(transport, settings.timeouts, settings.retries)
    lease = await opener.open(upstream, "/realtime", "model=gpt-realtime", headers, "gpt-realtime")
    try:
        frame = await lease.socket.receive()
    finally:
        await lease.close()
"""

from __future__ import annotations

from dataclasses import dataclass, field

from multidict import CIMultiDictProxy

from chatgpt_proxy.errors import (
    ProxyError,
    SocketRefused,
    TransportError,
    TransportTimeout,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from chatgpt_proxy.headers import upstream_request_headers
from chatgpt_proxy.settings import RetrySettings, TimeoutSettings
from chatgpt_proxy.upstream.pool import UpstreamKey, model_refused
from chatgpt_proxy.upstream.router import Upstream
from chatgpt_proxy.upstream.transport import (
    SocketRequest,
    Timeouts,
    Transport,
    UpstreamSocket,
)

_SCHEMES = {"http://": "ws://", "https://": "wss://"}


@dataclass(slots=True)
class SocketLease:
    """An open upstream socket and the pool key it was opened with, until ``close``."""

    socket: UpstreamSocket
    upstream: Upstream
    key: UpstreamKey
    _closed: bool = field(default=False, repr=False)

    @property
    def alias(self) -> str:
        return self.key.alias

    async def close(self, code: int = 1000) -> None:
        """Close the socket (if still open) and give the key back; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.socket.close(code)
        finally:
            self.upstream.pool.release(self.key)


class SocketOpener:
    """Opens upstream WebSockets on the keys of an upstream's pool."""

    def __init__(
        self, transport: Transport, timeouts: TimeoutSettings, retries: RetrySettings
    ) -> None:
        self._transport = transport
        # The upgrade is answered at once by a working upstream: the stream's first-byte
        # limit bounds it (connecting included).
        wait = min(timeouts.stream_first_byte, timeouts.first_byte)
        self._limits = Timeouts(timeouts.connect, wait)
        self._attempts = retries.max_attempts

    async def open(
        self,
        upstream: Upstream,
        path: str,
        query: str,
        client_headers: CIMultiDictProxy[str],
        model: str | None,
        protocols: tuple[str, ...] = (),
    ) -> SocketLease:
        """A socket to ``path`` on ``upstream``, or the ``ProxyError`` of the last try."""
        url = upstream.url(path, query, model)
        for http, ws in _SCHEMES.items():
            if url.startswith(http):
                url = ws + url.removeprefix(http)
                break
        pool = upstream.pool
        tried: set[str] = set()
        last: ProxyError | None = None
        for _ in range(self._attempts):
            try:
                key = pool.acquire(exclude=tried, model=model)
            except ProxyError:
                if last is None:
                    raise
                break
            tried.add(key.alias)
            settings = upstream.settings
            headers = upstream_request_headers(
                client_headers,
                key.secret,
                organization=settings.organization,
                project=settings.project,
                auth=settings.auth,
            )
            request = SocketRequest(url, headers, protocols, self._limits)
            try:
                socket = await self._transport.connect_socket(request)
            except TransportError as exc:
                pool.release(key)
                last = _judged(upstream, key, exc, model)
                continue
            except BaseException:
                pool.release(key)
                raise
            pool.report_success(key)
            return SocketLease(socket, upstream, key)
        assert last is not None  # max_attempts is at least 1
        raise last


def _judged(
    upstream: Upstream, key: UpstreamKey, exc: TransportError, model: str | None
) -> ProxyError:
    """Why the upgrade failed on ``key``, with the key's state changed to suit."""
    pool, name = upstream.pool, upstream.name
    if isinstance(exc, TransportTimeout):
        pool.report_failure(key)
        return UpstreamTimeout(f"The upstream {name} did not answer in time.")
    if not isinstance(exc, SocketRefused):
        pool.report_failure(key)
        return UpstreamError(f"The upstream {name} could not be reached ({exc}).")
    status = exc.status
    if status == 401:
        pool.report_retired(key, "invalid")
        return UpstreamRateLimited("The upstream key was refused; retry.", retry_after=1)
    if status == 429:
        pool.report_rate_limited(key, None)
        return UpstreamRateLimited(
            f"The upstream {name} is rate limited; retry later.", retry_after=1.0
        )
    if status in (403, 404) and model is not None:
        pool.report_refused_model(key, model, status)
        return model_refused(model, {status})
    pool.report_failure(key)
    return UpstreamError(f"The upstream {name} refused the WebSocket with status {status}.")
