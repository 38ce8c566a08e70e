"""Bad input: each answered in OpenAI's error envelope, never a 500, a hang or a redirect."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx2
import orjson
import pytest
from aiohttp import web
from sec_helpers import assert_openai_error, check_error, raw_request

from fake_openai import FAKE_KEYS, REDIRECT_TARGET, FakeOpenAI, KeyFault
from harness import ADMIN_KEY, Proxy
from servers import BackgroundLoop, wait_for

CHAT = "/v1/chat/completions"
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
SMALL_LIMIT = 4096


def _auth(proxy: Proxy) -> dict[str, str]:
    return {"Authorization": f"Bearer {proxy.key}"}


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


# ---------------------------------------------------------------- bodies


def test_malformed_json_is_400_invalid_json(proxy: Proxy, fake: FakeOpenAI) -> None:
    response = proxy.http().post(
        CHAT,
        content=b'{"model": "gpt-4o-mini", "messages": [',
        headers={**_auth(proxy), "Content-Type": "application/json"},
    )
    check_error(response, 400, "invalid_json")
    assert fake.count(CHAT) == 0


@pytest.mark.parametrize("document", [b"[]", b'"text"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_400(proxy: Proxy, fake: FakeOpenAI, document: bytes) -> None:
    response = proxy.http().post(
        CHAT, content=document, headers={**_auth(proxy), "Content-Type": "application/json"}
    )
    check_error(response, 400, "invalid_json")
    assert fake.count(CHAT) == 0


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
def test_wrong_content_type_is_400(
    proxy: Proxy, fake: FakeOpenAI, content_type: str | None
) -> None:
    headers = _auth(proxy)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = proxy.http().post(CHAT, content=orjson.dumps(HELLO), headers=headers)
    check_error(response, 400)
    assert fake.count(CHAT) == 0


def test_model_that_is_not_a_string_is_400(proxy: Proxy, fake: FakeOpenAI) -> None:
    response = proxy.http().post(CHAT, json={**HELLO, "model": ["gpt-4o"]}, headers=_auth(proxy))
    error = check_error(response, 400)
    assert error["param"] == "model"
    assert fake.count(CHAT) == 0


def test_body_over_limit_with_content_length_is_413(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(server={"max_body_bytes": SMALL_LIMIT})
    big = {**HELLO, "messages": [{"role": "user", "content": "x" * (SMALL_LIMIT * 4)}]}
    response = proxy.http().post(CHAT, json=big, headers=_auth(proxy))
    check_error(response, 413, "request_too_large")
    assert fake.count(CHAT) == 0
    # A body just under the limit still passes.
    small = {**HELLO, "messages": [{"role": "user", "content": "x" * (SMALL_LIMIT // 2)}]}
    assert proxy.http().post(CHAT, json=small, headers=_auth(proxy)).status_code == 200


def test_chunked_body_over_limit_is_413_while_streaming_in(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(server={"max_body_bytes": SMALL_LIMIT})
    sent: list[int] = []

    def body() -> Iterator[bytes]:
        # Syntactically a JSON object, and far larger than the limit, with no Content-Length.
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(64):
            sent.append(1024)
            yield b"x" * 1024
        yield b'"}]}'

    response = proxy.http().post(
        CHAT, content=body(), headers={**_auth(proxy), "Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers.get("transfer-encoding") == "chunked"
    check_error(response, 413, "request_too_large")
    assert fake.count(CHAT) == 0


def _multipart(size: int, boundary: str = "testboundary") -> bytes:
    return (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="model"\r\n\r\n'
            "whisper-1\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="a.mp3"\r\n'
            "Content-Type: audio/mpeg\r\n\r\n"
        ).encode()
        + b"\0" * size
        + f"\r\n--{boundary}--\r\n".encode()
    )


@pytest.mark.parametrize(
    ("path", "content_type", "head"),
    [
        (CHAT, "application/json", b'{"model": "gpt-4o-mini", "messages": [{"content": "'),
        (
            "/v1/audio/transcriptions",
            "multipart/form-data; boundary=testboundary",
            b"--testboundary\r\n"
            b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            b"--testboundary\r\n"
            b'Content-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\n',
        ),
    ],
)
def test_endless_chunked_body_is_cut_at_the_limit(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, path: str, content_type: str, head: bytes
) -> None:
    """A body that never ends is answered 413 once the limit is passed: counted as it comes."""
    proxy = make_proxy(server={"max_body_bytes": SMALL_LIMIT, "max_upload_bytes": SMALL_LIMIT})
    url = proxy.url.removeprefix("http://")
    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {proxy.key}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        chunk = b"x" * 1024
        for _ in range(SMALL_LIMIT * 3 // len(chunk)):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        # No terminating chunk: a proxy that waits for the whole body would hang here.
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            assert data, "connection closed without an answer"
            answer += data
        head_part, _, body = answer.partition(b"\r\n\r\n")
        declared = re.search(rb"(?i)content-length: *(\d+)", head_part)
        assert declared is not None, head_part
        length = int(declared.group(1))
        while len(body) < length:
            data = sock.recv(65536)
            assert data, "connection closed in the middle of the answer"
            body += data
    proxy.recorder.add_bytes(answer + body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert_openai_error(413, body, expected_status=413, code="request_too_large")
    assert all(r.path != path or len(r.body) <= SMALL_LIMIT * 2 for r in fake.requests)


def test_multipart_over_limit_is_413(make_proxy: Callable[..., Proxy], fake: FakeOpenAI) -> None:
    proxy = make_proxy(server={"max_body_bytes": SMALL_LIMIT, "max_upload_bytes": SMALL_LIMIT})
    headers = {**_auth(proxy), "Content-Type": "multipart/form-data; boundary=testboundary"}
    data = _multipart(SMALL_LIMIT * 8)
    response = proxy.http().post("/v1/audio/transcriptions", content=data, headers=headers)
    check_error(response, 413, "request_too_large")
    assert fake.count("/v1/audio/transcriptions") == 0


def test_chunked_multipart_over_limit_is_413(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(server={"max_body_bytes": SMALL_LIMIT, "max_upload_bytes": SMALL_LIMIT})
    headers = {**_auth(proxy), "Content-Type": "multipart/form-data; boundary=testboundary"}
    data = _multipart(SMALL_LIMIT * 16)

    def body() -> Iterator[bytes]:
        for start in range(0, len(data), 1024):
            yield data[start : start + 1024]

    response = proxy.http().post("/v1/audio/transcriptions", content=body(), headers=headers)
    assert "content-length" not in response.request.headers
    check_error(response, 413, "request_too_large")
    # Whatever reached the upstream before the limit was hit, it never got a whole upload.
    assert all(r.body != data for r in fake.requests)


def test_multipart_under_limit_passes(make_proxy: Callable[..., Proxy], fake: FakeOpenAI) -> None:
    proxy = make_proxy(
        server={"max_body_bytes": SMALL_LIMIT * 4, "max_upload_bytes": SMALL_LIMIT * 4}
    )
    headers = {**_auth(proxy), "Content-Type": "multipart/form-data; boundary=testboundary"}
    data = _multipart(SMALL_LIMIT)
    response = proxy.http().post("/v1/audio/transcriptions", content=data, headers=headers)
    assert response.status_code == 200, response.text
    assert fake.count("/v1/audio/transcriptions") == 1


# ---------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions/"),
        ("GET", "/v1/"),
        ("GET", "/v1"),
        ("POST", "/v1/engines/davinci/completions"),
        ("GET", "/v1/files/"),
        ("GET", "/v1/assistants"),
        ("GET", "/admin"),
        ("GET", "/admin/keys/"),
        ("GET", "/"),
        ("GET", "/favicon.ico"),
        ("POST", "/v2/chat/completions"),
        ("GET", "/V1/models"),
    ],
)
def test_unknown_route_is_404_never_a_redirect(
    proxy: Proxy, fake: FakeOpenAI, method: str, path: str
) -> None:
    response = proxy.http(follow_redirects=False).request(
        method, path, json=HELLO if method == "POST" else None, headers=_auth(proxy)
    )
    assert not 300 <= response.status_code < 400, response.headers
    assert "location" not in response.headers
    check_error(response, 404)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/chat/completions"),
        ("DELETE", "/v1/embeddings"),
        ("POST", "/v1/models"),
        ("PUT", "/admin/keys"),
    ],
)
def test_wrong_method_is_405_json(proxy: Proxy, fake: FakeOpenAI, method: str, path: str) -> None:
    response = proxy.http(follow_redirects=False).request(method, path, headers=_auth(proxy))
    check_error(response, 405, "method_not_allowed")
    assert fake.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/..%2F..%2Fadmin",
        "/v1/models/..%2f..%2fadmin%2fkeys",
        "/v1/models/%2e%2e/admin",
        "/v1/models/%2e%2e%2f%2e%2e%2fadmin",
        "/v1/models/../admin/keys",
        "/v1/../admin/keys",
        "/v1/responses/..%2Fx",
        "/v1/responses/%2e%2e",
        "/v1/responses/..%2F..%2Fmodels/input_items",
        "/v1/models/gpt-4o%00",
        "/v1/models/gpt-4o%0d%0aX-Injected:%20yes",
        "/v1/models/http:%2F%2F169.254.169.254%2F",
    ],
)
def test_path_traversal_reaches_nothing_upstream(proxy: Proxy, fake: FakeOpenAI, path: str) -> None:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {proxy.key}\r\nConnection: close\r\n\r\n"
    ).encode()
    response = raw_request(proxy.url, request, proxy.recorder)
    assert not 300 <= response.status < 400
    assert_openai_error(response.status, response.body, expected_status=(400, 404))
    assert fake.requests == [], [(r.method, r.path) for r in fake.requests]


def test_path_traversal_does_not_reach_the_admin_api(proxy: Proxy, fake: FakeOpenAI) -> None:
    # Even with the admin key: a dot segment never turns a /v1 route into an admin one.
    request = (
        "GET /v1/../admin/keys HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {ADMIN_KEY}\r\nConnection: close\r\n\r\n"
    ).encode()
    response = raw_request(proxy.url, request, proxy.recorder)
    if response.status == 200:
        # Normalised to /admin/keys by the server: then it is the admin API, answered as such.
        assert orjson.loads(response.body)["object"] == "list"
    else:
        assert_openai_error(response.status, response.body, expected_status=(400, 401, 404))
    assert fake.requests == []


def test_fine_tuned_model_ids_still_retrieve(proxy: Proxy, fake: FakeOpenAI) -> None:
    response = proxy.http().get("/v1/models/ft:gpt-4o:org::id", headers=_auth(proxy))
    # The fake knows no such model: its 404 is passed through; what matters is it was asked.
    assert response.status_code in (200, 404)
    assert fake.last("/v1/models/ft:gpt-4o:org::id").method == "GET"
    response = proxy.http().get("/v1/models/gpt-4o-mini", headers=_auth(proxy))
    assert response.status_code == 200
    assert response.json()["id"] == "gpt-4o-mini"


# ---------------------------------------------------------------- fields naming another host


@pytest.fixture
def bystander(background_loop: BackgroundLoop) -> Iterator[tuple[str, list[str]]]:
    """A tiny server that records any hit: nothing the proxy does may ever reach it."""
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(f"{request.method} {request.path_qs}")
        return web.json_response({"error": {"message": "bystander", "type": "x"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    url = background_loop.start_app(app)
    yield url, hits
    background_loop.stop_app(url)


@pytest.mark.parametrize(
    "endpoint", ["/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/completions"]
)
def test_fields_naming_another_host_are_never_used(
    proxy: Proxy, fake: FakeOpenAI, bystander: tuple[str, list[str]], endpoint: str
) -> None:
    url, hits = bystander
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "input": "hi",
        "prompt": "hi",
        "api_base": url + "/v1",
        "base_url": url + "/v1",
        "api_key": "sk-client-supplied-key",
        "organization": "org-CLIENTSUPPLIED",
        "url": url,
        "image_url": url + "/image.png",
    }
    response = proxy.http().post(endpoint, json=body, headers=_auth(proxy))
    assert response.status_code == 200, response.text
    # No hit is an absence, with no event to wait for: a short window for a fetch the proxy
    # might have started in the background after answering.
    time.sleep(0.1)
    assert hits == []
    received = fake.last(endpoint)
    assert received.key != "sk-client-supplied-key"
    assert "openai-organization" not in received.headers
    # Stripped before forwarding (row 21); the other unknown fields pass through untouched.
    assert "api_base" not in received.json()
    assert received.json()["url"] == url


def test_host_header_does_not_choose_the_upstream(
    proxy: Proxy, fake: FakeOpenAI, bystander: tuple[str, list[str]]
) -> None:
    url, hits = bystander
    host = url.removeprefix("http://")
    headers = {
        **_auth(proxy),
        "Host": host,
        "X-Forwarded-Host": host,
        "Forwarded": f"host={host}",
        "X-Original-URL": url + "/v1/chat/completions",
    }
    response = proxy.http().post(CHAT, json=HELLO, headers=headers)
    assert response.status_code == 200
    assert hits == []
    assert fake.count(CHAT) == 1
    assert fake.url is not None
    assert fake.last(CHAT).headers["host"] == fake.url.removeprefix("http://")


# ---------------------------------------------------------------- malformed HTTP


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer a\x00b",
        b"X-Test: a\x00b",
        b"X-Test: a\rb",
        b"X-Te st: value",
        b"X-Test\x01: value",
        b"Authorization: Bearer pk-abc\rInjected: yes",
    ],
)
def test_bad_bytes_in_a_header_is_a_400_json_error(
    proxy: Proxy, fake: FakeOpenAI, header: bytes
) -> None:
    body = orjson.dumps(HELLO)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + header
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    response = raw_request(proxy.url, request, proxy.recorder)
    assert response.headers.get("content-type", "").startswith("application/json"), response
    assert_openai_error(response.status, response.body, expected_status=400)
    assert fake.requests == []


def test_malformed_request_line_is_a_400_json_error(proxy: Proxy, fake: FakeOpenAI) -> None:
    for line in (b"GARBAGE\r\n\r\n", b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n"):
        response = raw_request(proxy.url, line, proxy.recorder)
        assert 400 <= response.status < 500, response
        assert response.headers.get("content-type", "").startswith("application/json")
        assert_openai_error(response.status, response.body, expected_status=(400, 505))
    assert fake.requests == []


# ---------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer pk-" + "A" * 10_000,
        "Bearer " + "x" * 7_000,
        "Bearer pk-' OR 1=1 --",
        "Bearer pk-'; DROP TABLE client_keys; --",
        "Bearer pk-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' OR '1'='1",
        "Bearer sk-something-else",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "pk-justthekeywithoutscheme",
        "Bearer pk-" + "\u00e9" * 30,
    ],
)
def test_bad_credentials_are_401(proxy: Proxy, fake: FakeOpenAI, authorization: str) -> None:
    # Sent raw: some of these are not valid for an HTTP client library (non-ASCII).
    body = orjson.dumps(HELLO)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + authorization.encode("utf-8")
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    response = raw_request(proxy.url, request, proxy.recorder)
    assert_openai_error(response.status, response.body, expected_status=401, code="invalid_api_key")
    assert fake.requests == []
    # The store is still there, and the real key still works.
    assert proxy.http().post(CHAT, json=HELLO, headers=_auth(proxy)).status_code == 200


def test_authorization_header_longer_than_the_server_reads_is_a_json_error(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    # Beyond aiohttp's header field limit the server refuses to parse the request at all.
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer pk-"
        + b"A" * 20_000
        + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    response = raw_request(proxy.url, request, proxy.recorder)
    assert_openai_error(response.status, response.body, expected_status=(400, 401, 431))
    assert fake.requests == []


def test_missing_key_is_401(proxy: Proxy, fake: FakeOpenAI) -> None:
    response = proxy.http().post(CHAT, json=HELLO)
    check_error(response, 401, "invalid_api_key")
    response = proxy.http().get("/v1/models")
    check_error(response, 401, "invalid_api_key")
    assert fake.requests == []


def test_a_revoked_key_is_401(proxy: Proxy, fake: FakeOpenAI) -> None:
    http = proxy.http()
    created = http.post("/admin/keys", json={"name": "to-revoke"}, headers=_admin()).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert http.post(CHAT, json=HELLO, headers=headers).status_code == 200
    assert http.delete(f"/admin/keys/{created['id']}", headers=_admin()).status_code == 200

    def refused() -> httpx2.Response | None:
        response = http.post(CHAT, json=HELLO, headers=headers)
        return response if response.status_code == 401 else None

    response = wait_for(refused, message="the revoked key is still accepted")
    check_error(response, 401, "invalid_api_key")
    assert fake.count(CHAT) == 1


def test_expired_key_is_401(proxy: Proxy, fake: FakeOpenAI) -> None:
    http = proxy.http()
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    created = http.post(
        "/admin/keys", json={"name": "expired", "expires_at": past}, headers=_admin()
    ).json()
    assert created["state"] == "expired"
    response = http.post(CHAT, json=HELLO, headers={"Authorization": f"Bearer {created['key']}"})
    check_error(response, 401, "invalid_api_key")
    assert fake.requests == []


def test_key_not_allowed_a_model_is_403(proxy: Proxy, fake: FakeOpenAI) -> None:
    http = proxy.http()
    created = http.post(
        "/admin/keys", json={"name": "mini-only", "models": ["gpt-4o-mini"]}, headers=_admin()
    ).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    response = http.post(CHAT, json={**HELLO, "model": "gpt-4o"}, headers=headers)
    error = check_error(response, 403, "model_not_allowed")
    assert error["param"] == "model"
    response = http.get("/v1/models/gpt-4o", headers=headers)
    check_error(response, 403, "model_not_allowed")
    assert fake.requests == []
    assert http.post(CHAT, json=HELLO, headers=headers).status_code == 200


# ---------------------------------------------------------------- upstream answers


@pytest.mark.parametrize("marker", ["html", "redirect"])
def test_upstream_html_or_redirect_is_502_and_not_forwarded(
    proxy: Proxy, fake: FakeOpenAI, marker: str
) -> None:
    body = {**HELLO, "messages": [{"role": "user", "content": f"[[fault:{marker}]]"}]}
    response = proxy.http(follow_redirects=False).post(CHAT, json=body, headers=_auth(proxy))
    check_error(response, 502, "upstream_error")
    assert "location" not in response.headers
    text = response.text.lower()
    assert "<html" not in text and "gateway" not in text and "evil" not in text
    assert REDIRECT_TARGET not in response.text and "169.254" not in response.text
    assert fake.count(CHAT) >= 1


@pytest.mark.parametrize("fault", ["html", "redirect"])
def test_upstream_key_answering_html_or_redirect_is_skipped(
    proxy: Proxy, fake: FakeOpenAI, fault: KeyFault
) -> None:
    fake.script_key(FAKE_KEYS[0], fault)
    fake.script_key(FAKE_KEYS[1], fault)
    response = proxy.http(follow_redirects=False).post(CHAT, json=HELLO, headers=_auth(proxy))
    check_error(response, 502, "upstream_error")
    assert "location" not in response.headers
    assert "<html" not in response.text.lower()
