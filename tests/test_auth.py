"""The in-memory mirror of client keys follows the store at once, and answers junk cheaply."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import pytest

from chatgpt_proxy.auth import KeyCache
from chatgpt_proxy.errors import AuthenticationFailed
from chatgpt_proxy.keystore import KeyPolicy, KeyStore, hash_secret

Check = Callable[[KeyStore, KeyCache], Awaitable[None]]


def _with_cache(sqlite_database_url: str, check: Check) -> None:
    async def run() -> None:
        async with await KeyStore.open(sqlite_database_url) as store:
            await store.migrate()
            cache = KeyCache(store, refresh_seconds=60)
            await cache.start()
            try:
                await check(store, cache)
            finally:
                await cache.stop()

    asyncio.run(run())


def test_a_key_in_use_is_refused_once_revoked(sqlite_database_url: str) -> None:
    async def check(store: KeyStore, cache: KeyCache) -> None:
        key, secret = await store.create("app", KeyPolicy())
        await cache.refresh()
        for _ in range(3):
            assert cache.authenticate(f"Bearer {secret}").id == key.id
        revoked = await store.revoke(key.id)
        assert revoked is not None
        cache.apply(revoked)
        with pytest.raises(AuthenticationFailed, match="revoked"):
            cache.authenticate(f"Bearer {secret}")

    _with_cache(sqlite_database_url, check)


def test_a_secret_in_use_no_longer_opens_a_key_whose_hash_changed(
    sqlite_database_url: str,
) -> None:
    async def check(store: KeyStore, cache: KeyCache) -> None:
        key, secret = await store.create("app", KeyPolicy())
        await cache.refresh()
        assert cache.authenticate(f"Bearer {secret}").id == key.id
        cache.apply(dataclasses.replace(key, key_hash=hash_secret("pk-" + "r" * 43)))
        with pytest.raises(AuthenticationFailed, match="Incorrect API key"):
            cache.authenticate(f"Bearer {secret}")
        assert cache.authenticate("Bearer pk-" + "r" * 43).id == key.id

    _with_cache(sqlite_database_url, check)


def test_the_secret_is_checked_for_shape_before_it_is_hashed(sqlite_database_url: str) -> None:
    async def check(store: KeyStore, cache: KeyCache) -> None:
        _, secret = await store.create("app", KeyPolicy())
        await cache.refresh()
        for junk in ("Bearer sk-" + secret[3:], "Basic " + secret, "Bearer " + secret + "\x00"):
            with pytest.raises(AuthenticationFailed, match="Incorrect API key"):
                cache.authenticate(junk)
        assert cache.authenticate(f"bearer  {secret} ")  # the scheme's case and blanks

    _with_cache(sqlite_database_url, check)
