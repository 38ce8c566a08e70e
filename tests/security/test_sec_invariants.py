"""The security invariants of DESIGN §3, each checked explicitly.

The session-wide ``recorder`` fixture also scans everything clients received and every log
line for upstream keys at the end of the session; these tests aim at each channel directly.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sec_helpers import check_error

from fake_openai import FAKE_KEYS, ORGANIZATION, PROJECT, FakeOpenAI, mask_key
from harness import ADMIN_KEY, CANARY_KEY, Proxy

CHAT = "/v1/chat/completions"
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
UPSTREAM_SECRETS = [*FAKE_KEYS, CANARY_KEY]
KEY_SHAPE = re.compile(r"^pk-[A-Za-z0-9_-]{22,}$")


def _auth(proxy: Proxy) -> dict[str, str]:
    return {"Authorization": f"Bearer {proxy.key}"}


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def _forbidden_texts() -> list[str]:
    """Upstream keys, how the upstream echoes them, and the upstream account's ids."""
    texts = [*UPSTREAM_SECRETS, ORGANIZATION, PROJECT]
    texts += [mask_key(key) for key in UPSTREAM_SECRETS]
    texts += [key[-12:] for key in UPSTREAM_SECRETS]  # a tail alone is a leak too
    return texts


def _assert_clean(blob: str | bytes, where: str) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    for secret in _forbidden_texts():
        assert secret not in text, f"{secret[:12]}... found in {where}: {text[:400]}"


def _assert_clean_response(response: Any, where: str) -> None:
    for name, value in response.headers.items():
        _assert_clean(f"{name}: {value}", f"{where} headers")
    _assert_clean(response.content, f"{where} body")


# ---------------------------------------------------------------- §3.1 keys never leave


def test_upstream_401_is_not_forwarded_and_its_masked_key_never_shown(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    fake.revoke_key(FAKE_KEYS[0])  # the upstream now answers 401 echoing a masked key
    log_start = len(proxy.recorder.log_lines)
    http = proxy.http()
    for _ in range(3):
        response = http.post(CHAT, json=HELLO, headers=_auth(proxy))
        assert response.status_code == 200, response.text  # served by the other key
        _assert_clean_response(response, "a retried answer")
    assert FAKE_KEYS[0] in fake.keys_used()
    fake.revoke_key(FAKE_KEYS[1])
    response = http.post(CHAT, json=HELLO, headers=_auth(proxy))
    check_error(response, (429, 503), ("no_upstream_keys", "upstream_rate_limited"))
    _assert_clean_response(response, "the error once every key is dead")
    assert "sk-" not in response.text and "*****" not in response.text
    proxy.flush_logs()
    _assert_clean("\n".join(proxy.recorder.log_lines[log_start:]), "the logs")


def test_upstream_429_naming_the_organization_is_not_forwarded(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    body = {**HELLO, "messages": [{"role": "user", "content": "[[fault:429]]"}]}
    response = proxy.http().post(CHAT, json=body, headers=_auth(proxy))
    check_error(response, 429, "upstream_rate_limited")
    assert 1 <= int(response.headers["retry-after"]) <= 120
    _assert_clean_response(response, "an upstream 429")
    for name in response.headers:
        assert not name.lower().startswith("x-ratelimit-"), name  # the upstream key's own


def test_upstream_quota_error_is_not_forwarded(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.script_key(FAKE_KEYS[0], "no_quota")
    fake.script_key(FAKE_KEYS[1], "no_quota")
    response = proxy.http().post(CHAT, json=HELLO, headers=_auth(proxy))
    check_error(response, (429, 503))
    assert "exceeded your current quota" not in response.text
    _assert_clean_response(response, "an upstream quota error")


def test_passed_through_400_keeps_its_detail(proxy: Proxy, fake: FakeOpenAI) -> None:
    body = {**HELLO, "messages": [{"role": "user", "content": "[[fault:400]]"}]}
    response = proxy.http().post(CHAT, json=body, headers=_auth(proxy))
    error = check_error(response, 400, "invalid_value")
    assert error["param"] == "temperature"
    _assert_clean_response(response, "a passed-through 400")
    assert fake.count(CHAT) == 1  # the client's own mistake: not retried on another key


def test_passed_through_errors_have_organization_ids_scrubbed(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    http = proxy.http()
    # The fake echoes the bad value, as OpenAI does: an org id in it must not come back.
    body = {"model": "text-embedding-3-small", "input": "hi", "encoding_format": ORGANIZATION}
    response = http.post("/v1/embeddings", json=body, headers=_auth(proxy))
    error = check_error(response, 400)
    assert error["param"] == "encoding_format"
    assert "org-***" in error["message"]
    _assert_clean_response(response, "a passed-through 400")
    for path in (f"/v1/models/{ORGANIZATION}", f"/v1/responses/{PROJECT}"):
        response = http.get(path, headers=_auth(proxy))
        check_error(response, 404)
        _assert_clean_response(response, "a passed-through 404")


def test_answers_carry_no_upstream_account_headers(proxy: Proxy, fake: FakeOpenAI) -> None:
    http = proxy.http()
    responses = [
        http.post(CHAT, json=HELLO, headers=_auth(proxy)),
        http.get("/v1/models/gpt-4o-mini", headers=_auth(proxy)),
        http.post(
            "/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": "hi"},
            headers=_auth(proxy),
        ),
    ]
    for response in responses:
        assert response.status_code == 200, response.text
        names = {name.lower() for name in response.headers}
        assert not names & {"openai-organization", "openai-project", "set-cookie", "cf-ray"}
        assert not any(name.startswith("x-ratelimit-") for name in names), names
        assert response.headers["x-request-id"].startswith("req_")
        _assert_clean_response(response, "a successful answer")


def test_stream_events_carry_no_secret(proxy: Proxy, fake: FakeOpenAI) -> None:
    chunks: list[bytes] = []
    with proxy.http().stream(
        "POST", CHAT, json={**HELLO, "stream": True}, headers=_auth(proxy)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for name, value in response.headers.items():
            _assert_clean(f"{name}: {value}", "stream headers")
        chunks.extend(response.iter_bytes())
    stream = b"".join(chunks)
    assert stream.rstrip().endswith(b"data: [DONE]")
    _assert_clean(stream, "an SSE stream")


def test_stream_cut_upstream_ends_with_a_clean_error_event(proxy: Proxy, fake: FakeOpenAI) -> None:
    body = {**HELLO, "stream": True, "messages": [{"role": "user", "content": "[[fault:cut:2]]"}]}
    with proxy.http().stream("POST", CHAT, json=body, headers=_auth(proxy)) as response:
        stream = b"".join(response.iter_bytes())
    assert b"[DONE]" not in stream
    _assert_clean(stream, "a broken SSE stream")


def test_metrics_show_aliases_never_keys(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.revoke_key(FAKE_KEYS[0])
    http = proxy.http()
    http.post(CHAT, json=HELLO, headers=_auth(proxy))
    response = http.get("/metrics")
    assert response.status_code == 200
    assert "openai#1" in response.text and "openai#2" in response.text
    assert "sk-" not in response.text
    _assert_clean_response(response, "/metrics")


def test_admin_upstreams_shows_aliases_only(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.revoke_key(FAKE_KEYS[0])
    http = proxy.http()
    http.post(CHAT, json=HELLO, headers=_auth(proxy))
    response = http.get("/admin/upstreams", headers=_admin())
    assert response.status_code == 200
    data = response.json()["data"]
    assert [item["alias"] for item in data] == ["openai#1", "openai#2"]
    assert all(item["upstream"] == "openai" for item in data)
    assert "sk-" not in response.text
    _assert_clean_response(response, "/admin/upstreams")


def test_proxy_logs_name_aliases_not_keys(proxy: Proxy, fake: FakeOpenAI) -> None:
    log_start = len(proxy.recorder.log_lines)
    fake.revoke_key(FAKE_KEYS[0])
    fake.script_key(FAKE_KEYS[1], "server_error", times=1)
    http = proxy.http()
    for _ in range(3):
        http.post(CHAT, json=HELLO, headers=_auth(proxy))
    body = {**HELLO, "messages": [{"role": "user", "content": "[[fault:html]]"}]}
    http.post(CHAT, json=body, headers=_auth(proxy))
    proxy.flush_logs()
    lines = proxy.recorder.log_lines[log_start:]
    assert any("upstream=openai#" in line for line in lines)
    _assert_clean("\n".join(lines), "the logs")


# ---------------------------------------------------------------- §3.2 upstream host


def test_upstream_host_comes_from_configuration(proxy: Proxy, fake: FakeOpenAI) -> None:
    assert fake.url is not None
    headers = {**_auth(proxy), "Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    body = {**HELLO, "base_url": "http://evil.example/v1", "api_base": "http://evil.example/v1"}
    response = proxy.http().post(CHAT, json=body, headers=headers)
    assert response.status_code == 200
    assert fake.last(CHAT).headers["host"] == fake.url.removeprefix("http://")


# ---------------------------------------------------------------- §3.3 header allowlist


def test_upstream_request_headers_are_an_allowlist(proxy: Proxy, fake: FakeOpenAI) -> None:
    headers = {
        **_auth(proxy),
        "OpenAI-Organization": "org-CLIENTORG",
        "OpenAI-Project": "proj_CLIENTPROJ",
        "OpenAI-Beta": "assistants=v2",
        "Idempotency-Key": "idem-123",
        "Cookie": "session=client",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-Forwarded-For": "10.0.0.1",
        "X-Real-IP": "10.0.0.1",
        "X-Api-Key": "sk-client-side",
        "Api-Key": "sk-client-side",
        "X-Custom-Header": "custom",
        "Upgrade": "websocket",
        "TE": "trailers",
        "Keep-Alive": "timeout=5",
        "Via": "1.1 client-proxy",
        "Forwarded": "for=10.0.0.1",
    }
    response = proxy.http().post(CHAT, json=HELLO, headers=headers)
    assert response.status_code == 200, response.text
    received = fake.last(CHAT).headers
    assert received["authorization"] in {f"Bearer {key}" for key in FAKE_KEYS[:2]}
    assert proxy.key not in str(received)
    assert received["openai-beta"] == "assistants=v2"
    assert received["idempotency-key"] == "idem-123"
    for dropped in (
        "openai-organization",
        "openai-project",
        "cookie",
        "proxy-authorization",
        "x-forwarded-for",
        "x-real-ip",
        "x-api-key",
        "api-key",
        "x-custom-header",
        "upgrade",
        "te",
        "keep-alive",
        "via",
        "forwarded",
    ):
        assert dropped not in received, dropped


def test_configured_organization_and_project_are_sent_upstream(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    assert fake.url is not None
    proxy = make_proxy(
        upstreams=[
            {
                "name": "openai",
                "base_url": fake.url + "/v1",
                "keys": list(FAKE_KEYS[:2]),
                "organization": "org-CONFIGURED1",
                "project": "proj_CONFIGURED1",
            }
        ]
    )
    headers = {**_auth(proxy), "OpenAI-Organization": "org-CLIENTORG"}
    assert proxy.http().post(CHAT, json=HELLO, headers=headers).status_code == 200
    received = fake.last(CHAT).headers
    assert received["openai-organization"] == "org-CONFIGURED1"
    assert received["openai-project"] == "proj_CONFIGURED1"


# ---------------------------------------------------------------- §3.4 client keys


def _database_path(proxy: Proxy) -> Path:
    url = proxy.state.settings.database_url
    assert url.startswith("sqlite:///")
    return Path(url.removeprefix("sqlite:///"))


def _database_bytes(path: Path) -> bytes:
    """Every byte of the database as stored: the file, its WAL, and a dump of every table."""
    blobs = [p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists()]
    with sqlite3.connect(path) as conn:
        blobs.append("\n".join(conn.iterdump()).encode())
    return b"\n".join(blobs)


def _cli(
    args: list[str], database_url: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "OPENAI_API_KEYS": "sk-cli-test-upstream-key",
        "CHATGPT_PROXY_DATABASE_URL": database_url,
        **(env or {}),
    }
    environ.pop("CHATGPT_PROXY_ADMIN_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "chatgpt_proxy", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
        cwd=os.path.dirname(database_url.removeprefix("sqlite:///")),
    )


def test_client_keys_are_stored_only_hashed(proxy: Proxy, fake: FakeOpenAI) -> None:
    http = proxy.http()
    created = [
        http.post("/admin/keys", json={"name": f"api-{n}"}, headers=_admin()).json()
        for n in range(3)
    ]
    secrets_made = [item["key"] for item in created] + [proxy.key]
    result = _cli(
        ["keys", "create", "--name", "from-cli", "--json"], proxy.state.settings.database_url
    )
    assert result.returncode == 0, result.stderr
    cli_key = orjson.loads(result.stdout.strip().splitlines()[-1])["key"]
    secrets_made.append(cli_key)
    for secret in secrets_made:
        assert KEY_SHAPE.match(secret), secret
    # Every key works (the CLI's one once the cache has polled the database).
    for secret in secrets_made[:-1]:
        response = http.post(CHAT, json=HELLO, headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 200
    stored = _database_bytes(_database_path(proxy))
    for secret in secrets_made:
        assert secret.encode() not in stored, "a client key is stored in plaintext"
        assert secret[3:].encode() not in stored
        assert secret[-16:].encode() not in stored, "a part of a client key is stored"
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored
    with sqlite3.connect(_database_path(proxy)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(client_keys)")]
    assert "key" not in columns and "secret" not in columns


def test_client_keys_are_random_and_long(proxy: Proxy) -> None:
    made = {proxy.create_key(f"k{n}") for n in range(50)}
    assert len(made) == 50
    for secret in made:
        assert KEY_SHAPE.match(secret), secret
        # 22 URL-safe base64 characters carry 132 bits; the body must be at least that long.
        assert len(secret) - len("pk-") >= 22
    bodies = [secret[3:] for secret in made]
    assert len({body[:8] for body in bodies}) == 50  # no shared prefix beyond "pk-"


def test_key_listings_never_show_the_key_or_its_hash(proxy: Proxy) -> None:
    http = proxy.http()
    created = http.post("/admin/keys", json={"name": "listed"}, headers=_admin()).json()
    digest = hashlib.sha256(created["key"].encode()).hexdigest()
    for path in ("/admin/keys", f"/admin/keys/{created['id']}"):
        response = http.get(path, headers=_admin())
        assert response.status_code == 200
        assert created["key"] not in response.text
        assert digest not in response.text
        assert "key_hash" not in response.text


def test_client_key_is_refused_by_the_admin_api(proxy: Proxy) -> None:
    http = proxy.http()
    for method, path in (
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/upstreams"),
        ("GET", "/admin/moderation"),
    ):
        response = http.request(method, path, json={"name": "x"}, headers=_auth(proxy))
        check_error(response, 401, "invalid_api_key")


def test_admin_key_is_refused_by_the_openai_api(proxy: Proxy, fake: FakeOpenAI) -> None:
    http = proxy.http()
    response = http.post(CHAT, json=HELLO, headers=_admin())
    check_error(response, 401, "invalid_api_key")
    response = http.get("/v1/models", headers=_admin())
    check_error(response, 401, "invalid_api_key")
    assert fake.requests == []


def test_admin_api_is_off_without_an_admin_key(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(auth={"admin_key": None})
    http = proxy.http()
    routes = [
        ("POST", "/admin/keys"),
        ("GET", "/admin/keys"),
        ("GET", "/admin/keys/key_0000000000000000"),
        ("PATCH", "/admin/keys/key_0000000000000000"),
        ("DELETE", "/admin/keys/key_0000000000000000"),
        ("GET", "/admin/keys/key_0000000000000000/usage"),
        ("GET", "/admin/upstreams"),
        ("GET", "/admin/moderation"),
    ]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer"}, _admin(), _auth(proxy)):
            body = {"name": "x"} if method in ("POST", "PATCH") else None
            response = http.request(method, path, json=body, headers=headers)
            check_error(response, 403)


def test_wrong_admin_key_is_401(proxy: Proxy) -> None:
    http = proxy.http()
    for value in (f"Bearer {ADMIN_KEY}x", f"Bearer {ADMIN_KEY[:-1]}", ADMIN_KEY, "", "Bearer"):
        headers = {"Authorization": value} if value else {}
        check_error(http.get("/admin/keys", headers=headers), 401, "invalid_api_key")


# ---------------------------------------------------------------- brute force costs no query


def test_failed_authentication_never_queries_the_database(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    # Throttling off: it would answer most of these guesses 429 before looking at them.
    proxy = make_proxy(auth={"cache_refresh_seconds": 60, "failed_auth_limit": 0})
    statements: list[str] = []
    lock = threading.Lock()

    def count(*args: Any) -> None:
        with lock:
            statements.append(str(args[2]))

    engine = proxy.state.store._engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        http = proxy.http()
        for n in range(1000):
            if n % 4 == 0:
                value = "Bearer garbage-" + secrets.token_hex(8)
            else:
                value = "Bearer pk-" + secrets.token_urlsafe(32)
            response = http.post(CHAT, json=HELLO, headers={"Authorization": value})
            assert response.status_code == 401
        with lock:
            seen = list(statements)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert seen == [], seen[:5]
    assert fake.requests == []


@pytest.mark.parametrize(
    "value", ["pk-' OR 1=1 --", "pk-x' UNION SELECT key_hash FROM client_keys"]
)
def test_sql_in_a_key_is_not_evaluated(proxy: Proxy, value: str) -> None:
    before = proxy.loop.run(proxy.state.store.count())
    response = proxy.http().post(CHAT, json=HELLO, headers={"Authorization": f"Bearer {value}"})
    check_error(response, 401, "invalid_api_key")
    assert proxy.loop.run(proxy.state.store.count()) == before
    assert proxy.http().post(CHAT, json=HELLO, headers=_auth(proxy)).status_code == 200


def test_sql_in_admin_fields_is_stored_as_text(proxy: Proxy) -> None:
    http = proxy.http()
    name = "x'); DROP TABLE client_keys; --"
    created = http.post("/admin/keys", json={"name": name}, headers=_admin())
    assert created.status_code == 201
    assert http.get(f"/admin/keys/{created.json()['id']}", headers=_admin()).json()["name"] == name
    response = http.get("/admin/keys/key_x' OR '1'='1", headers=_admin())
    check_error(response, 404)
    assert len(http.get("/admin/keys", headers=_admin()).json()["data"]) == 2
