"""Rows of client_keys: a new key's row reads back as the key, and what no column can hold is
refused before any SQL runs."""

from __future__ import annotations

import pytest

from chatgpt_proxy.errors import InvalidRequest
from chatgpt_proxy.keystore import KeyPolicy, hash_secret
from chatgpt_proxy.keystore.key_rows import checked_name, client_key, new_key, possible_id


def test_a_new_keys_row_reads_back_as_the_key() -> None:
    policy = KeyPolicy(rpm=60, models=("gpt-4o*", "o3"))
    key, secret, row = new_key("  ci  ", policy, None, "discord:1")
    assert key.name == "ci" and key.owner == "discord:1" and key.policy == policy
    assert row["key_hash"] == hash_secret(secret) and secret not in row.values()
    assert client_key(row) == key


def test_a_policy_without_models_reads_back_without_models() -> None:
    _, _, row = new_key("open", KeyPolicy(), None, None)
    assert row["models"] is None
    assert client_key(row).policy.models == ()


@pytest.mark.parametrize("name", ["", "   ", "a\x00b", "\ud800", "n" * 201])
def test_a_name_no_column_can_hold_is_invalid(name: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        checked_name(name)
    assert raised.value.param == "name"


def test_ids_no_row_can_hold_are_not_looked_up() -> None:
    assert possible_id("key_0123456789abcdef")
    assert not possible_id("key_\x00") and not possible_id("k" * 33)
