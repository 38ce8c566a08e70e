"""Client key authentication, answered from memory: no database read on the hot path.

Every client key (as its hash) is mirrored in memory and refreshed from the key store every
``cache_refresh_seconds``; changes made through this process (revocation by the admin API)
apply at once, and with Redis those made by another replica too (``reload``, called by
``shared_state``), so the poll is only the fallback. An unknown key is therefore rejected
without touching the database, so a brute-forcer costs one hash and one dict lookup per guess;
past ``auth.failed_auth_limit`` failures from one client address, ``FailedAuthThrottle`` answers
that address 429 for a while, whatever key it sends.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from chatgpt_proxy.errors import AuthenticationFailed, ModelNotAllowed, RateLimited
from chatgpt_proxy.exchange import Answering, Exchange, Next
from chatgpt_proxy.keystore import ClientKey, KeyStore, hash_secret, looks_like_key
from chatgpt_proxy.memo import Memo
from chatgpt_proxy.periodic import Periodic, TaskErrors

logger = logging.getLogger("chatgpt_proxy.auth")

# Rows written by another process just before a poll can carry a slightly older timestamp
# (clock skew between replicas, transaction commit order); re-reading this much is cheap.
_POLL_OVERLAP = timedelta(seconds=5)
_MAX_HEADER = 512
# Addresses whose failures are remembered, at most: a guesser with many addresses costs
# memory up to this bound, then the records least recently touched go first.
_MAX_TRACKED_ADDRESSES = 100_000


def _now() -> datetime:
    return datetime.now(UTC)


class FailedAuthThrottle:
    """Failed authentications per client address: past ``limit`` of them within ``window``
    seconds, the address is answered 429 (with ``retry-after``) for ``block`` seconds,
    whatever key it sends. Successful authentications are not counted.

    >>> throttle = FailedAuthThrottle(limit=20, window=60.0, block=60.0)
    >>> throttle.check("203.0.113.7")    # RateLimited while the address is blocked
    >>> throttle.failed("203.0.113.7")
    """

    def __init__(
        self,
        limit: int,
        window: float,
        block: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = _MAX_TRACKED_ADDRESSES,
    ) -> None:
        self._limit = limit
        self._window = window
        self._block = block
        self._clock = clock
        # address -> (window start, count), and address -> blocked until
        self._failures: Memo[str, tuple[float, int]] = Memo(max_addresses)
        self._blocked: Memo[str, float] = Memo(max_addresses)

    def __len__(self) -> int:
        """Addresses remembered (failing or blocked): never more than twice the bound."""
        return len(self._failures) + len(self._blocked)

    def check(self, address: str) -> None:
        if not self._blocked:
            return
        until = self._blocked.get(address)
        if until is None:
            return
        left = until - self._clock()
        if left <= 0:
            self._blocked.forget(address)
            return
        raise RateLimited(
            "Too many failed authentication attempts from your address. Retry later.",
            retry_after=left,
        )

    def failed(self, address: str) -> None:
        now = self._clock()
        started, count = self._failures.get(address, (now, 0))
        if now - started >= self._window:
            started, count = now, 0
        count += 1
        if count >= self._limit:
            self._failures.forget(address)  # counting starts again once the block ends
            self._blocked.remember(address, now + self._block)
            return
        self._failures.remember(address, (started, count))


class KeyCache:
    """The in-memory mirror of client keys.

    >>> cache = KeyCache(store, refresh_seconds=1.0)
    >>> await cache.start()
    >>> cache.authenticate("Bearer pk-...")   # a ClientKey, or AuthenticationFailed
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        refresh_seconds: float = 1.0,
        throttle: FailedAuthThrottle | None = None,
        now: Callable[[], datetime] = _now,
        errors: TaskErrors | None = None,
    ) -> None:
        self._store = store
        self._throttle = throttle
        self._now = now
        self._by_hash: dict[str, ClientKey] = {}
        self._hash_of: dict[str, str] = {}
        self._since: datetime | None = None
        self._poll = Periodic(
            "refreshing client keys", refresh_seconds, self.refresh, errors=errors
        )

    async def start(self) -> None:
        await self.refresh()
        self._poll.start()

    async def stop(self) -> None:
        await self._poll.stop()

    async def refresh(self) -> None:
        started = self._now()
        since = None if self._since is None else self._since - _POLL_OVERLAP
        for key in await self._store.changed_since(since):
            self.apply(key)
        self._since = started

    async def reload(self, key_id: str) -> None:
        """Re-read one key now: another replica created, changed or revoked it."""
        key = await self._store.get(key_id)
        if key is not None:
            self.apply(key)

    def apply(self, key: ClientKey) -> None:
        """Take a key's latest state, e.g. right after this process revoked it."""
        old_hash = self._hash_of.get(key.id)
        if old_hash is not None and old_hash != key.key_hash:
            self._by_hash.pop(old_hash, None)
        self._by_hash[key.key_hash] = key
        self._hash_of[key.id] = key.key_hash

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, authorization: str | None, address: str | None = None) -> ClientKey:
        """The client key of ``authorization``; failures from ``address`` are throttled."""
        throttle = self._throttle
        if throttle is None or address is None:
            return self._authenticate(authorization)
        throttle.check(address)
        try:
            return self._authenticate(authorization)
        except AuthenticationFailed:
            throttle.failed(address)
            raise

    def _authenticate(self, authorization: str | None) -> ClientKey:
        secret = _bearer(authorization)
        digest = hash_secret(secret)
        key = self._by_hash.get(digest)
        # The dict lookup finds the candidate; the comparison that decides is constant-time.
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            raise AuthenticationFailed("Incorrect API key provided.")
        if key.revoked_at is not None:
            raise AuthenticationFailed("This API key has been revoked.")
        if key.expires_at is not None and key.expires_at <= self._now():
            raise AuthenticationFailed("This API key has expired.")
        return key


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. Provide it in the Authorization header as "
            "'Bearer pk-...'."
        )
    if len(authorization) > _MAX_HEADER:
        raise AuthenticationFailed("Incorrect API key provided.")
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not looks_like_key(secret):
        raise AuthenticationFailed("Incorrect API key provided.")
    return secret


class Authenticate:
    """The pipeline's auth stage: the client key of the request, or 401 (429 for an address
    that keeps failing). Before the body is read: a stranger cannot make the proxy read it."""

    def __init__(self, keys: KeyCache) -> None:
        self._keys = keys

    def __call__(self, exchange: Exchange, forward: Next) -> Answering:  # a tail call
        request = exchange.request
        key = self._keys.authenticate(request.headers.get("Authorization"), request.remote)
        exchange.key = key
        exchange.context.key_id = key.id
        return forward(exchange)


class ModelPolicy:
    """The pipeline's policy stage: 403 for a model the client key may not use."""

    def __call__(self, exchange: Exchange, forward: Next) -> Answering:  # a tail call
        model = exchange.model
        if model is not None:
            exchange.context.model = model
            if not exchange.key.policy.allows_model(model):
                raise ModelNotAllowed(f"This key may not use the model `{model}`.", param="model")
        return forward(exchange)
