"""Checklist row 19: hostile identifiers (SQL, NUL bytes, huge strings) never make a 500.

Every request is written as raw bytes on a socket, so NUL, quotes and odd encodings reach the
proxy exactly as sent, and every case runs on SQLite and on PostgreSQL (which refuses NUL in
text: that is where a 500 or 503 used to come from).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import orjson
import pytest

from fake_openai import FakeOpenAI
from harness import ADMIN_KEY, Proxy
from security.sec_helpers import assert_openai_error, raw_request
from servers import wait_for

HUGE = 5_000  # past every id column and id pattern, within the server's request-line limit
SQL = "' OR '1'='1' --"
DEADLINE_S = 10.0


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    body: object = None  # a JSON document, or bytes sent as they are
    admin: bool = False  # the admin key instead of the client key
    authorization: bytes | None = None  # instead of either key
    statuses: tuple[int, ...] = (400, 404)
    forwarded: bool = False  # whether the upstream may be asked at all


def _chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "one two"}]}


# A model in a body is the upstream's to judge: the real one answers 404 for one it does not
# serve (passed through); the fake serves every model, so 200 is its answer.
_MODEL = (200, 400, 404)

CASES: dict[str, Case] = {
    # Authorization
    "auth-sql": Case(
        "GET", "/v1/models", authorization=b"Bearer pk-" + SQL.encode(), statuses=(401,)
    ),
    "auth-drop": Case(
        "GET",
        "/v1/models",
        authorization=b"Bearer pk-'; DROP TABLE client_keys; --",
        statuses=(401,),
    ),
    "auth-nul": Case("GET", "/v1/models", authorization=b"Bearer pk-\x00abc", statuses=(400, 401)),
    "auth-huge": Case(
        "GET", "/v1/models", authorization=b"Bearer pk-" + b"A" * HUGE, statuses=(400, 401)
    ),
    # model in a body
    "model-nul": Case(
        "POST", "/v1/chat/completions", _chat("gpt-4o\x00mini"), statuses=_MODEL, forwarded=True
    ),
    "model-sql": Case("POST", "/v1/chat/completions", _chat(SQL), statuses=_MODEL, forwarded=True),
    "model-huge": Case(
        "POST", "/v1/chat/completions", _chat("m" * HUGE + "\x00"), statuses=_MODEL, forwarded=True
    ),
    # model ids in the path
    "model-id-nul": Case("GET", "/v1/models/gpt-4o%00"),
    "model-id-sql": Case("GET", "/v1/models/" + quote(SQL, safe="")),
    "model-id-huge": Case("GET", "/v1/models/" + "m" * HUGE),
    # response ids
    "response-id-nul": Case("GET", "/v1/responses/resp_%00"),
    "response-id-sql": Case("GET", "/v1/responses/" + quote(SQL, safe="")),
    "response-id-huge": Case("GET", "/v1/responses/resp_" + "r" * HUGE),
    "response-delete-nul": Case("DELETE", "/v1/responses/%00"),
    "response-items-sql": Case("GET", "/v1/responses/" + quote(SQL, safe="") + "/input_items"),
    # admin key ids
    "admin-id-nul": Case("GET", "/admin/keys/key_%00", admin=True, statuses=(404,)),
    "admin-id-only-nul": Case("GET", "/admin/keys/%00", admin=True, statuses=(404,)),
    "admin-id-sql": Case("GET", "/admin/keys/" + quote(SQL, safe=""), admin=True, statuses=(404,)),
    "admin-id-huge": Case("GET", "/admin/keys/key_" + "a" * HUGE, admin=True, statuses=(404,)),
    "admin-id-surrogate": Case("GET", "/admin/keys/key_%ED%A0%80", admin=True, statuses=(404,)),
    "admin-revoke-nul": Case("DELETE", "/admin/keys/key_%00", admin=True, statuses=(404,)),
    "admin-update-nul": Case(
        "PATCH", "/admin/keys/key_%00", {"rpm": 5}, admin=True, statuses=(404,)
    ),
    "admin-usage-nul": Case("GET", "/admin/keys/key_%00/usage", admin=True, statuses=(404,)),
    # admin names
    "admin-name-nul": Case("POST", "/admin/keys", {"name": "a\x00b"}, admin=True, statuses=(400,)),
    "admin-name-surrogate": Case(
        "POST", "/admin/keys", b'{"name": "a\\ud800b"}', admin=True, statuses=(400,)
    ),
    "admin-name-huge": Case(
        "POST", "/admin/keys", {"name": "n" * HUGE}, admin=True, statuses=(400,)
    ),
    "admin-name-sql-long": Case(
        "POST", "/admin/keys", {"name": SQL * 20}, admin=True, statuses=(400,)
    ),
}


def _request(proxy: Proxy, case: Case) -> bytes:
    if case.authorization is not None:
        authorization = case.authorization
    else:
        authorization = f"Bearer {ADMIN_KEY if case.admin else proxy.key}".encode()
    body = case.body if isinstance(case.body, bytes) else b""
    if case.body is not None and not isinstance(case.body, bytes):
        body = orjson.dumps(case.body)
    head = (
        f"{case.method} {case.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    return head + b"Authorization: " + authorization + b"\r\n\r\n" + body


def _wait_for_usage(proxy: Proxy) -> int:
    def used() -> int:
        tokens, _ = proxy.loop.run(proxy.state.store.usage.totals(proxy.key_id))
        return tokens

    return wait_for(used, DEADLINE_S, "the usage was never written")


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_identifiers_are_400_401_or_404_never_500(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, database_url: str, name: str
) -> None:
    """Row 19: SQL, NUL bytes or huge strings in Authorization, model or ids: 400, 401 or 404.

    Never a 500 or a 503, the store is untouched, and the proxy still serves and meters.
    """
    case = CASES[name]
    proxy = make_proxy(database_url=database_url)
    keys_before = proxy.loop.run(proxy.state.store.count())
    response = raw_request(proxy.url, _request(proxy, case), proxy.recorder)
    assert response.status in case.statuses, (response.status, response.body[:300])
    if response.status >= 400:
        assert_openai_error(response.status, response.body, expected_status=case.statuses)
    if not case.forwarded:
        assert fake.requests == [], [(r.method, r.path[:80]) for r in fake.requests]
    assert proxy.loop.run(proxy.state.store.count()) == keys_before
    # Still serving, and the usage writer still writes (the hostile request's usage included).
    client = proxy.client()
    client.chat.completions.create(**_chat("gpt-4o-mini"))  # type: ignore[call-overload]
    assert _wait_for_usage(proxy) > 0
    assert not proxy.state.meter.failing and proxy.state.meter.set_aside == 0
