"""Signing in and out of the console: the form, the session it opens, throttling, audit."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from console_helpers import login, sign_in

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


def test_without_an_admin_key_the_console_says_how_to_set_one(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(auth={"admin_key": None})
    page = proxy.http().get("/admin/")
    assert page.status_code == 403 and "CHATGPT_PROXY_ADMIN_KEY" in page.text
    assert login(proxy, "").status_code == 403
    assert proxy.http().get("/admin/console/keys").status_code == 303
