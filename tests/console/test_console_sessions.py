"""Signing in and out of the console, and what its sessions refuse (DESIGN §3.9)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from console_helpers import login, sign_in

from chatgpt_proxy.cli import main
from chatgpt_proxy.console.passwords import hash_password, verify_password
from chatgpt_proxy.keystore.tokens import hash_secret
from harness import ADMIN_KEY, Proxy

MakeProxy = Callable[..., Proxy]


def _audit_actions(proxy: Proxy) -> list[str]:
    entries = proxy.loop.run(proxy.state.store.audit.page(limit=100))
    return [entry.action for entry in entries]


def test_the_sign_in_form_works_without_javascript_and_carries_the_security_headers(
    proxy: Proxy,
) -> None:
    page = proxy.http().get("/admin/")
    assert page.status_code == 200
    assert '<form method="post" action="/admin/login">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"


def test_a_right_admin_key_opens_a_session_in_a_strict_httponly_cookie(
    proxy: Proxy, tmp_path: Path
) -> None:
    answer = login(proxy)
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # served over plain HTTP here
    secret = answer.cookies["chatgpt_proxy_console"]
    assert secret.startswith("cs-") and ADMIN_KEY not in cookie
    # Only the id's hash is stored.
    with sqlite3.connect(tmp_path / "proxy.db") as conn:
        rows = conn.execute("SELECT id_hash FROM console_sessions").fetchall()
    assert rows == [(hash_secret(secret),)]
    assert "login" in _audit_actions(proxy)


def test_the_cookie_is_secure_when_configured(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(console={"secure_cookie": True})
    assert "Secure" in login(proxy).headers["set-cookie"]


def test_a_wrong_key_is_refused_audited_and_throttled(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(console={"failed_login_limit": 3})
    for _ in range(3):
        answer = login(proxy, "not-the-admin-key")
        assert answer.status_code == 401 and "not the admin key" in answer.text
        assert "set-cookie" not in answer.headers
    blocked = login(proxy)  # even the right key waits now
    assert blocked.status_code == 429 and "retry-after" in blocked.headers
    assert "set-cookie" not in blocked.headers
    assert _audit_actions(proxy).count("login.failed") == 3


def test_a_client_key_opens_nothing(proxy: Proxy) -> None:
    assert login(proxy, proxy.key).status_code == 401
    http = proxy.http()
    http.cookies.set("chatgpt_proxy_console", proxy.key, path="/admin")
    assert http.get("/admin/console/keys").status_code == 303  # back to sign-in
    bearer = proxy.http().get(
        "/admin/console/keys", headers={"Authorization": f"Bearer {proxy.key}"}
    )
    assert bearer.status_code == 303
    # The console takes no Bearer key either, not even the admin key: only its session.
    admin_bearer = proxy.http().get("/admin/", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert 'action="/admin/login"' in admin_bearer.text


def test_a_session_id_is_no_key_for_the_json_api(proxy: Proxy) -> None:
    operator = sign_in(proxy)
    secret = operator.http.cookies["chatgpt_proxy_console"]
    for header in (f"Bearer {secret}", f"Bearer {proxy.key}"):
        answer = proxy.http().get("/admin/keys", headers={"Authorization": header})
        assert answer.status_code == 401
    # The JSON API keeps its Bearer authentication, and a session cookie does not replace it.
    assert operator.http.get("/admin/keys").status_code == 401
    ok = proxy.http().get("/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert ok.status_code == 200


def test_logout_ends_the_session_on_the_server(proxy: Proxy) -> None:
    operator = sign_in(proxy)
    secret = operator.http.cookies["chatgpt_proxy_console"]
    answer = operator.post("/admin/logout")
    assert answer.status_code == 303
    assert "chatgpt_proxy_console=" in answer.headers["set-cookie"]  # cleared in the browser
    # The old id, replayed, opens nothing: the row is gone.
    replay = proxy.http()
    replay.cookies.set("chatgpt_proxy_console", secret, path="/admin")
    assert replay.get("/admin/console/keys").status_code == 303
    assert "logout" in _audit_actions(proxy)


@pytest.mark.parametrize("setting", ["session_idle_minutes", "session_max_hours"])
def test_an_expired_session_opens_nothing(
    make_proxy: MakeProxy, tmp_path: Path, setting: str
) -> None:
    # A lifetime of a few microseconds: over before the next request can arrive.
    proxy = make_proxy(console={setting: 1e-9})
    http = proxy.http()
    answer = http.post("/admin/login", data={"password": ADMIN_KEY}, headers={"Origin": proxy.url})
    assert answer.status_code == 303
    assert http.get("/admin/console/keys").status_code == 303
    page = http.get("/admin/")
    assert 'action="/admin/login"' in page.text
    # Each expired row was deleted when it was found expired.
    with sqlite3.connect(tmp_path / "proxy.db") as conn:
        assert conn.execute("SELECT count(*) FROM console_sessions").fetchone() == (0,)


def test_changes_need_the_csrf_token_and_this_origin(proxy: Proxy) -> None:
    operator = sign_in(proxy)
    before = proxy.loop.run(proxy.state.store.count())
    form = {"name": "csrf-test"}
    refused = [
        operator.http.post("/admin/console/keys", data=form, headers={"Origin": proxy.url}),
        operator.post("/admin/console/keys", {**form, "csrf": "0" * 64}),
        operator.post("/admin/console/keys", form, headers={"Origin": "https://evil.example"}),
        operator.http.post("/admin/console/keys", data={**form, "csrf": operator.csrf}),
        operator.post("/admin/console/keys", form, headers={"Origin": "null"}),
        operator.post("/admin/logout", {"csrf": ""}),
    ]
    for answer in refused:
        assert answer.status_code == 403, answer.text
    assert proxy.loop.run(proxy.state.store.count()) == before
    # A sign-in posted by another site's page is refused too.
    foreign = proxy.http().post(
        "/admin/login", data={"password": ADMIN_KEY}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    # The header form of the token (htmx sends it) is accepted like the field.
    ok = operator.http.post(
        "/admin/console/keys",
        data=form,
        headers={"Origin": proxy.url, "X-CSRF-Token": operator.csrf},
    )
    assert ok.status_code == 201


def test_without_an_admin_key_the_console_says_how_to_set_one(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(auth={"admin_key": None})
    page = proxy.http().get("/admin/")
    assert page.status_code == 403 and "CHATGPT_PROXY_ADMIN_KEY" in page.text
    assert login(proxy, "").status_code == 403
    assert proxy.http().get("/admin/console/keys").status_code == 303


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
