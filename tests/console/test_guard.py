"""Who may use the console: the session cookie, expiry, CSRF tokens and the Origin check
(DESIGN §3.9); client keys and session ids are no credential for each other's doors."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from console_helpers import login, sign_in

from harness import ADMIN_KEY, Proxy

MakeProxy = Callable[..., Proxy]


def test_the_cookie_is_secure_when_configured(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(console={"secure_cookie": True})
    assert "Secure" in login(proxy).headers["set-cookie"]


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
