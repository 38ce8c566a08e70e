"""Self-service keys in the store, on SQLite and on PostgreSQL: one active key per owner,
blocks, the caps, interactions seen once, holder sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from chatgpt_proxy.errors import InvalidRequest
from chatgpt_proxy.keystore import KeyPolicy, KeyStore, hash_secret
from chatgpt_proxy.keystore.owners import Outcome

OWNER = "discord:900000000000000001"


def run(database_url: str, scenario: Callable[[KeyStore], Awaitable[None]]) -> None:
    async def main() -> None:
        async with await KeyStore.open(database_url) as store:
            await store.migrate()
            await scenario(store)

    asyncio.run(main())


def test_one_active_key_per_owner_and_rotation(database_url: str) -> None:
    async def scenario(store: KeyStore) -> None:
        first = await store.owners.issue(OWNER, OWNER, KeyPolicy(rpm=5), None)
        assert first.outcome is Outcome.ISSUED and first.key is not None and first.secret
        assert first.key.key_hash == hash_secret(first.secret) and first.key.owner == OWNER
        again = await store.owners.issue(OWNER, OWNER, KeyPolicy(rpm=5), None)
        assert again.outcome is Outcome.EXISTS and again.secret is None
        assert again.key is not None and again.key.id == first.key.id
        rotated = await store.owners.issue(OWNER, OWNER, KeyPolicy(rpm=5), None, rotate=True)
        assert rotated.outcome is Outcome.ISSUED and rotated.key is not None
        assert [key.id for key in rotated.revoked] == [first.key.id]
        assert rotated.revoked[0].revoked_at is not None
        stored = {key.id: key for key in await store.owners.keys(OWNER)}
        assert stored[first.key.id].revoked_at is not None
        assert stored[rotated.key.id].revoked_at is None
        assert (await store.get(first.key.id)).owner == OWNER  # type: ignore[union-attr]

    run(database_url, scenario)


def test_an_expired_key_does_not_count_as_held(database_url: str) -> None:
    async def scenario(store: KeyStore) -> None:
        past = datetime.now(UTC) - timedelta(seconds=1)
        await store.owners.issue(OWNER, OWNER, KeyPolicy(), past)
        assert (await store.owners.issue(OWNER, OWNER, KeyPolicy(), None)).outcome is Outcome.ISSUED

    run(database_url, scenario)


def test_concurrent_requests_of_one_owner_issue_one_key(database_url: str) -> None:
    async def scenario(store: KeyStore) -> None:
        async with await KeyStore.open(database_url) as other:  # another replica's store
            stores = [store, other] * 3
            issues = await asyncio.gather(
                *(s.owners.issue(OWNER, OWNER, KeyPolicy(), None) for s in stores)
            )
        assert sorted(issue.outcome for issue in issues) == ["exists"] * 5 + ["issued"]
        assert len(await store.owners.keys(OWNER)) == 1

    run(database_url, scenario)


def test_blocking_revokes_and_refuses_until_unblocked(database_url: str) -> None:
    async def scenario(store: KeyStore) -> None:
        issued = await store.owners.issue(OWNER, OWNER, KeyPolicy(), None)
        revoked = await store.owners.block(OWNER)
        assert [key.id for key in revoked] == [issued.key.id]  # type: ignore[union-attr]
        assert await store.owners.block(OWNER) == ()  # twice: nothing left to revoke
        assert await store.owners.is_blocked(OWNER)
        for rotate in (False, True):
            refused = await store.owners.issue(OWNER, OWNER, KeyPolicy(), None, rotate=rotate)
            assert refused.outcome is Outcome.BLOCKED
        assert await store.owners.unblock(OWNER) and not await store.owners.unblock(OWNER)
        assert (await store.owners.issue(OWNER, OWNER, KeyPolicy(), None)).outcome == "issued"

    run(database_url, scenario)


def test_the_hourly_and_per_owner_caps(database_url: str) -> None:
    async def scenario(store: KeyStore) -> None:
        for n in range(2):
            owner = f"discord:{n}"
            issued = await store.owners.issue(owner, owner, KeyPolicy(), None, hourly_cap=2)
            assert issued.outcome is Outcome.ISSUED
        capped = await store.owners.issue("discord:3", "x", KeyPolicy(), None, hourly_cap=2)
        assert capped.outcome is Outcome.CAPPED
        await store.create("operator's", KeyPolicy())  # the operator's keys do not count
        rotated = await store.owners.issue(
            "discord:0", "x", KeyPolicy(), None, rotate=True, daily_cap=1
        )
        assert rotated.outcome is Outcome.USER_CAPPED
        assert len(await store.owners.keys("discord:0")) == 1

    run(database_url, scenario)


def test_an_interaction_is_seen_once_and_forgotten_after_the_window(database_url: str) -> None:
    async def scenario(store: KeyStore) -> None:
        window = timedelta(minutes=10)
        assert await store.owners.first_sighting("1400000000000000001", window)
        assert not await store.owners.first_sighting("1400000000000000001", window)
        assert not await store.owners.first_sighting("x" * 65, window)  # longer than any id
        # A zero window forgets everything older than now before remembering the new one.
        assert await store.owners.first_sighting("1400000000000000002", timedelta(0))
        assert await store.owners.first_sighting("1400000000000000001", window)

    run(database_url, scenario)


def test_holder_sessions_expire_and_end(database_url: str) -> None:
    async def scenario(store: KeyStore) -> None:
        key, _ = await store.create("holder", KeyPolicy())
        now = datetime.now(UTC)
        await store.owners.start_session("a" * 64, key.id, now + timedelta(hours=1))
        await store.owners.start_session("b" * 64, key.id, now - timedelta(seconds=1))
        assert (await store.owners.session_key("a" * 64)) == key
        assert await store.owners.session_key("b" * 64) is None
        await store.owners.end_session("a" * 64)
        assert await store.owners.session_key("a" * 64) is None

    run(database_url, scenario)


@pytest.mark.parametrize("owner", ["", "x" * 101, "nul\x00"])
def test_an_unstorable_owner_is_refused_before_any_sql(database_url: str, owner: str) -> None:
    async def scenario(store: KeyStore) -> None:
        with pytest.raises(InvalidRequest):
            await store.owners.issue(owner, "x", KeyPolicy(), None)
        assert await store.owners.keys(owner) == []

    run(database_url, scenario)


def test_a_replay_to_another_replica_is_refused_too(database_url: str) -> None:
    async def scenario(store: KeyStore) -> None:
        window = timedelta(minutes=10)
        async with await KeyStore.open(database_url) as other:  # another replica's store
            seen = await asyncio.gather(
                store.owners.first_sighting("1400000000000000009", window),
                other.owners.first_sighting("1400000000000000009", window),
            )
        assert sorted(seen) == [False, True]

    run(database_url, scenario)
