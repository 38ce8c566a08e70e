"""The console's optional password: scrypt hashes, and signing in with one."""

from __future__ import annotations

from collections.abc import Callable

from click.testing import CliRunner
from console_helpers import login

from chatgpt_proxy.cli import main
from chatgpt_proxy.console.passwords import hash_password, verify_password
from harness import Proxy

MakeProxy = Callable[..., Proxy]


def test_a_configured_password_opens_the_console_without_the_admin_key(
    make_proxy: MakeProxy,
) -> None:
    result = CliRunner().invoke(
        main, ["console", "hash-password"], input="a long console password\n" * 2
    )
    assert result.exit_code == 0, result.output
    stored = result.output.strip().splitlines()[-1]
    assert stored.startswith("scrypt$") and "a long console password" not in result.output
    proxy = make_proxy(auth={"admin_key": None}, console={"admin_password_hash": stored})
    assert login(proxy, "a long console password").status_code == 303
    assert login(proxy, "a long console passwore").status_code == 401
    assert login(proxy, stored).status_code == 401  # the hash is not the password
    # The JSON API still needs its admin key, which is not set.
    assert proxy.http().get("/admin/keys").status_code == 403


def test_passwords_are_stretched_and_salted() -> None:
    first, second = hash_password("same password"), hash_password("same password")
    assert first != second
    assert verify_password("same password", first) and verify_password("same password", second)
    assert not verify_password("other", first)
    assert not verify_password("same password", "scrypt$1$1$1$!!$!!")
    assert not verify_password("same password", "md5$x")
    short = CliRunner().invoke(main, ["console", "hash-password"], input="short\nshort\n")
    assert short.exit_code != 0 and "12 characters" in short.output
