"""Client key authentication, answered from memory: no database read on the hot path.

Every client key (as its hash) is mirrored in memory and refreshed from the key store every
``cache_refresh_seconds``; changes made through this process (revocation by the admin API)
apply at once, and with Redis those made by another replica too (``reload``, called by
``shared_state``), so the poll is only the fallback. An unknown key is therefore rejected
without touching the database, so a brute-forcer costs one hash and one dict lookup per guess.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from chatgpt_proxy.errors import AuthenticationFailed
from chatgpt_proxy.keystore import ClientKey, KeyStore, hash_secret, looks_like_key
from chatgpt_proxy.periodic import Periodic, TaskErrors

logger = logging.getLogger("chatgpt_proxy.auth")

# Rows written by another process just before a poll can carry a slightly older timestamp
# (clock skew between replicas, transaction commit order); re-reading this much is cheap.
_POLL_OVERLAP = timedelta(seconds=5)
_MAX_HEADER = 512


def _now() -> datetime:
    return datetime.now(UTC)


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
        now: Callable[[], datetime] = _now,
        errors: TaskErrors | None = None,
    ) -> None:
        self._store = store
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

    def authenticate(self, authorization: str | None) -> ClientKey:
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
