from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatgpt_proxy.errors import InvalidRequest
from chatgpt_proxy.keystore import ClientKey, KeyPolicy

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def make_key(**changes: Any) -> ClientKey:
    fields: dict[str, Any] = {
        "id": "key_0123456789abcdef",
        "name": "ci",
        "prefix": "pk-AbC1234",
        "key_hash": "f" * 64,
        "created_at": NOW,
        "updated_at": NOW,
        "expires_at": None,
        "revoked_at": None,
        "policy": KeyPolicy(),
    }
    fields.update(changes)
    return ClientKey(**fields)


def test_policy_round_trips_through_dict() -> None:
    policy = KeyPolicy(
        rpm=60,
        tpm=10_000,
        max_concurrency=4,
        daily_token_budget=0,
        total_token_budget=1_000_000,
        daily_cost_budget=1.5,
        total_cost_budget=20,
        models=("gpt-4o*", "text-embedding-3-small"),
        moderation="strict",
    )
    data = policy.to_dict()
    assert data["models"] == ["gpt-4o*", "text-embedding-3-small"]
    assert data["total_cost_budget"] == 20.0 and isinstance(data["total_cost_budget"], float)
    assert KeyPolicy.from_dict(data) == policy


def test_from_dict_skips_none_so_a_patch_can_clear_a_limit() -> None:
    old = KeyPolicy(rpm=60, tpm=100)
    patched = KeyPolicy.from_dict({**old.to_dict(), "rpm": None})
    assert patched == KeyPolicy(tpm=100)
    assert KeyPolicy.from_dict({}) == KeyPolicy()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rpm": "60"}, "rpm"),
        ({"rpm": True}, "rpm"),
        ({"rpm": 1.5}, "rpm"),
        ({"rpm": 0}, "rpm"),
        ({"tpm": -1}, "tpm"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"daily_token_budget": -5}, "daily_token_budget"),
        ({"total_token_budget": "lots"}, "total_token_budget"),
        ({"daily_cost_budget": -0.01}, "daily_cost_budget"),
        ({"total_cost_budget": math.inf}, "total_cost_budget"),
        ({"total_cost_budget": math.nan}, "total_cost_budget"),
        ({"total_cost_budget": "1"}, "total_cost_budget"),
        ({"models": "gpt-4o"}, "models"),
        ({"models": ["gpt-4o", 3]}, "models"),
        ({"models": [""]}, "models"),
        ({"models": ["x" * 201]}, "models"),
        ({"models": ["m"] * 101}, "models"),
        ({"moderation": "off"}, "moderation"),
        ({"model": ["gpt-4o"]}, "model"),  # a typo must not leave every model allowed
    ],
)
def test_from_dict_names_the_bad_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        KeyPolicy.from_dict(body)
    assert caught.value.param == field
    assert field in caught.value.message
    assert caught.value.status == 400


def test_from_dict_ignores_fields_the_caller_handles() -> None:
    body = {"name": "ci", "expires_at": "2027-01-01", "rpm": 5}
    assert KeyPolicy.from_dict(body, ignore={"name", "expires_at"}) == KeyPolicy(rpm=5)


def test_allows_model_globs() -> None:
    assert KeyPolicy().allows_model("anything")
    policy = KeyPolicy(models=("gpt-4o*", "o[13]-mini"))
    assert policy.allows_model("gpt-4o")
    assert policy.allows_model("gpt-4o-mini-2024-07-18")
    assert policy.allows_model("o1-mini")
    assert not policy.allows_model("o2-mini")
    assert not policy.allows_model("GPT-4O")  # case-sensitive, as model ids are
    assert not policy.allows_model("ft:gpt-4o")


def test_key_state() -> None:
    assert make_key().state(NOW) == "active"
    expiring = make_key(expires_at=NOW + timedelta(seconds=1))
    assert expiring.state(NOW) == "active"
    assert expiring.state(NOW + timedelta(seconds=1)) == "expired"
    assert expiring.state(NOW + timedelta(days=1)) == "expired"
    revoked = make_key(revoked_at=NOW, expires_at=NOW - timedelta(days=1))
    assert revoked.state(NOW) == "revoked"  # revocation wins over expiry


def test_public_dict_never_shows_the_hash() -> None:
    key = make_key(policy=KeyPolicy(rpm=5, models=("gpt-4o",)), expires_at=NOW)
    public = key.public_dict(NOW - timedelta(hours=1))
    assert key.key_hash not in repr(public)
    assert "key_hash" not in public
    assert public["prefix"] == "pk-AbC1234"
    assert public["state"] == "active"
    assert public["created_at"] == "2026-05-01T12:00:00+00:00"
    assert public["expires_at"] == "2026-05-01T12:00:00+00:00"
    assert public["revoked_at"] is None
    assert public["rpm"] == 5 and public["models"] == ["gpt-4o"]
    assert key.public_dict(NOW)["state"] == "expired"
