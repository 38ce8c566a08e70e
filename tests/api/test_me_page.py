"""The key holders' page: a narrow session (hashed random id, HttpOnly + SameSite=Strict cookie,
Origin check and CSRF token), own data only, and the key never in a cookie or URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatgpt_proxy.keystore import KeyPolicy
from harness import Proxy


def origin(proxy: Proxy) -> dict[str, str]:
    return {"Origin": proxy.url}


def sign_in(proxy: Proxy, secret: str, headers: dict[str, str] | None = None) -> Any:
    return proxy.http().post(
        "/me/page/login",
        data={"key": secret},
        headers=origin(proxy) if headers is None else headers,
    )


def cookie(session_id: str, **headers: str) -> dict[str, str]:
    """The session cookie as a browser sends it back (a header: no client-side cookie jar)."""
    return {"Cookie": f"holder_session={session_id}", **headers}


def database(proxy: Proxy) -> bytes:
    return Path(proxy.state.settings.database_url.removeprefix("sqlite:///")).read_bytes()


def test_the_sign_in_form_has_no_script_and_is_never_cached(proxy: Proxy) -> None:
    answer = proxy.http().get("/me/page")
    assert answer.status_code == 200 and 'name="key"' in answer.text
    assert "<script" not in answer.text
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["cache-control"] == "no-store"


def test_sign_in_sets_a_strict_http_only_cookie_and_shows_own_standing(proxy: Proxy) -> None:
    secret = proxy.create_key("member", KeyPolicy(daily_token_budget=5000))
    answer = sign_in(proxy, secret)
    assert answer.status_code == 200
    set_cookie = answer.headers["set-cookie"]
    assert all(part in set_cookie for part in ("HttpOnly", "SameSite=Strict", "Path=/me"))
    session_id = answer.cookies["holder_session"]
    assert secret not in set_cookie and len(session_id) >= 40
    assert secret[:10] in answer.text and secret not in answer.text
    assert "Left today: 5000 of 5000 tokens" in answer.text
    assert proxy.key[:10] not in answer.text  # the other key's prefix is nowhere
    stored = database(proxy)
    assert session_id.encode() not in stored and secret.encode() not in stored
    again = proxy.http().get("/me/page", headers=cookie(session_id))
    assert secret[:10] in again.text and 'name="csrf"' in again.text


def test_sign_in_from_another_origin_or_none_is_refused(proxy: Proxy) -> None:
    for headers in ({}, {"Origin": "https://evil.example"}):
        answer = sign_in(proxy, proxy.key, headers)
        assert answer.status_code == 403 and "set-cookie" not in answer.headers


def test_a_bad_key_signs_nobody_in(proxy: Proxy) -> None:
    answer = sign_in(proxy, "pk-" + "x" * 43)
    assert answer.status_code == 401 and "set-cookie" not in answer.headers


def test_sign_out_needs_the_csrf_token_and_the_origin(proxy: Proxy) -> None:
    answer = sign_in(proxy, proxy.key)
    session = answer.cookies["holder_session"]
    csrf = answer.text.split('name="csrf" value="')[1].split('"')[0]
    http = proxy.http()
    for data, headers in (
        ({}, cookie(session, Origin=proxy.url)),
        ({"csrf": "0" * 64}, cookie(session, Origin=proxy.url)),
        ({"csrf": csrf}, cookie(session, Origin="https://evil.example")),
        ({"csrf": csrf}, cookie(session)),
    ):
        refused = http.post("/me/page/logout", data=data, headers=headers)
        assert refused.status_code == 403
        assert proxy.key[:10] in http.get("/me/page", headers=cookie(session)).text
    done = http.post(
        "/me/page/logout", data={"csrf": csrf}, headers=cookie(session, Origin=proxy.url)
    )
    assert done.status_code == 200
    assert 'name="key"' in http.get("/me/page", headers=cookie(session)).text  # session gone


def test_revoking_the_key_ends_its_sessions(proxy: Proxy) -> None:
    secret = proxy.create_key("member")
    session = sign_in(proxy, secret).cookies["holder_session"]
    key = proxy.loop.run(proxy.state.store.list())[-1]
    proxy.loop.run(proxy.state.store.revoke(key.id))
    page = proxy.http().get("/me/page", headers=cookie(session))
    assert 'name="key"' in page.text and secret[:10] not in page.text
