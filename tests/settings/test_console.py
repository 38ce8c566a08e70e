"""The console settings: on by default, sessions that end, a password only as an scrypt hash."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chatgpt_proxy.console.passwords import hash_password
from chatgpt_proxy.settings import ConsoleSettings


def test_the_console_is_on_without_a_password_by_default() -> None:
    console = ConsoleSettings()
    assert console.enabled is True
    assert console.admin_password_hash is None
    assert console.session_idle_minutes == 30.0 and console.session_max_hours == 12.0
    assert console.secure_cookie is None  # follows the request's scheme
    assert console.failed_login_limit == 5 and console.failed_login_block_seconds == 300.0


def test_a_hash_from_hash_password_is_accepted_and_kept_secret() -> None:
    stored = hash_password("a long console password")
    console = ConsoleSettings.model_validate({"admin_password_hash": stored})
    assert console.admin_password_hash is not None
    assert console.admin_password_hash.get_secret_value() == stored
    assert stored not in repr(console) and stored not in console.model_dump_json()


@pytest.mark.parametrize(
    "value",
    ["a long console password", "scrypt$16384$8$1$salt", "bcrypt$16384$8$1$salt$hash", ""],
    ids=["a-password", "too-few-parts", "not-scrypt", "empty"],
)
def test_anything_but_such_a_hash_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="hash-password"):
        ConsoleSettings.model_validate({"admin_password_hash": value})


@pytest.mark.parametrize(
    "values",
    [
        {"session_idle_minutes": 0},
        {"session_max_hours": -1},
        {"failed_login_limit": 0},
        {"failed_login_block_seconds": 0},
        {"secure_cookie": "sometimes"},
    ],
    ids=["idle", "max-hours", "login-limit", "block-seconds", "secure-cookie"],
)
def test_bad_console_values_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ConsoleSettings.model_validate(values)
