"""Reading a key request (create or change) from a JSON object, as the CLI and admin API do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from chatgpt_proxy.errors import InvalidRequest
from chatgpt_proxy.keystore import ClientKey, KeyPolicy
from chatgpt_proxy.keystore.requests import KeyRequest, parse_create, parse_expiry, parse_update


def test_a_create_takes_the_name_the_policy_and_the_expiry() -> None:
    request = parse_create({"name": " team ", "rpm": 10, "expires_at": "2027-01-31"})
    assert request.name == "team"
    assert request.policy == KeyPolicy(rpm=10)
    assert request.expires_at == datetime(2027, 1, 31, 23, 59, 59, tzinfo=UTC)


def test_a_create_starts_from_the_default_policy() -> None:
    defaults = KeyPolicy(rpm=60, tpm=1000)
    request = parse_create({"name": "a", "rpm": 5}, defaults)
    assert request.policy == KeyPolicy(rpm=5, tpm=1000)


@pytest.mark.parametrize("body", [{}, {"name": "  "}, {"name": 3}, []])
def test_a_create_needs_a_name_in_an_object(body: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_create(body)  # type: ignore[arg-type]


def _key(policy: KeyPolicy) -> ClientKey:
    now = datetime.now(UTC)
    return ClientKey(
        id="key_1",
        name="old",
        prefix="sk-cgp-abcd",
        key_hash="0" * 64,
        created_at=now,
        updated_at=now,
        expires_at=None,
        revoked_at=None,
        policy=policy,
    )


def test_an_update_changes_only_what_it_names() -> None:
    key = _key(KeyPolicy(rpm=10, tpm=100))
    assert parse_update(key, {}) == KeyRequest(None, None, ...)
    renamed = parse_update(key, {"name": "new"})
    assert renamed.name == "new" and renamed.policy is None and renamed.expires_at is ...
    cleared = parse_update(key, {"rpm": None, "expires_at": None})
    assert cleared.policy == KeyPolicy(tpm=100)  # null clears a limit, the others stay
    assert cleared.expires_at is None
    with pytest.raises(InvalidRequest):
        parse_update(key, {"name": ""})


def test_expiry_is_a_day_or_a_time_and_naive_means_utc() -> None:
    assert parse_expiry(None) is None
    assert parse_expiry("2027-01-31T10:00:00") == datetime(2027, 1, 31, 10, tzinfo=UTC)
    east = parse_expiry("2027-01-31T10:00:00+02:00")
    assert east == datetime(2027, 1, 31, 10, tzinfo=timezone(timedelta(hours=2)))
    for bad in ("tomorrow", "2027-13-01", 20270131):
        with pytest.raises(InvalidRequest) as caught:
            parse_expiry(bad)
        assert caught.value.param == "expires_at"
