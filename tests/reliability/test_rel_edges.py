"""The server's edges: malformed HTTP, paths, credentials, slow clients and overload.

Rows 14, 17, 18, 20, 21, 22, 23 and 28 of the checklist, and defects 8 and 9 of issue 9.
Malformed input is sent over raw sockets, so no client library tidies it first.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Callable

import httpx2
import orjson
import pytest
from redis.asyncio import Redis

from chatgpt_proxy.auth import FailedAuthThrottle
from chatgpt_proxy.edge import InFlightGate
from chatgpt_proxy.errors import RateLimited
from fake_openai import FakeOpenAI
from harness import Proxy
from security.sec_helpers import (
    RawResponse,
    assert_openai_error,
    check_error,
    parse_answer,
    raw_request,
    read_until_closed,
)
from services import redis_url

CHAT = "/v1/chat/completions"
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _post(proxy: Proxy, head: bytes, body: bytes = b"", *, path: str = CHAT) -> RawResponse:
    """POST ``body`` with the client key and the extra header lines in ``head``."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {proxy.key}\r\n".encode()
        + head
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    return raw_request(proxy.url, request, proxy.recorder)


def _envelope(response: RawResponse, status: int | tuple[int, ...]) -> dict[str, object]:
    assert response.headers.get("content-type", "").startswith("application/json"), response
    return assert_openai_error(response.status, response.body, expected_status=status)


# ---------------------------------------------------------------- defect 8: malformed input


@pytest.mark.parametrize(
    "encoding", [b"gzip", b"deflate", b"br", b"zstd", b"foo", b"gzip, foo", b"identity, gzip"]
)
def test_junk_content_encoding_is_a_4xx_envelope(
    proxy: Proxy, fake: FakeOpenAI, encoding: bytes
) -> None:
    """Defect 8: a body that is not what its Content-Encoding says is the client's error."""
    head = b"Content-Type: application/json\r\nContent-Encoding: " + encoding + b"\r\n"
    response = _post(proxy, head, orjson.dumps(HELLO))
    _envelope(response, (400, 415))
    assert fake.count(CHAT) == 0


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/json;a*",
        b"application/json; charset=junk",
        b"application/json; charset=",
        b'application/json; a="unterminated',
        b"application/json;;;=",
        b"application/json; charset=utf-8; charset=latin-1",
    ],
)
def test_odd_content_type_parameter_is_never_a_500(
    proxy: Proxy, fake: FakeOpenAI, content_type: bytes
) -> None:
    """Defect 8: a JSON body under an odd parameter is read as JSON or refused with a 400."""
    response = _post(proxy, b"Content-Type: " + content_type + b"\r\n", orjson.dumps(HELLO))
    if response.status != 200:
        _envelope(response, (400, 415))


@pytest.mark.parametrize(
    "expect", [b"100-continu\xe9", b"\xff\xfe", b"100-foo", b"nonsense", b"100-continue\x80"]
)
def test_odd_expect_header_is_a_4xx_envelope(proxy: Proxy, fake: FakeOpenAI, expect: bytes) -> None:
    """Defect 8: an Expect header aiohttp cannot honour is answered as OpenAI's error."""
    head = b"Content-Type: application/json\r\nExpect: " + expect + b"\r\n"
    response = _post(proxy, head, orjson.dumps(HELLO))
    _envelope(response, (400, 417))
    assert fake.count(CHAT) == 0


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        b"TRACE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://evil.example/v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"get /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"G@T /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"A" * 300 + b" /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40 + b"\r\n\r\n",  # TLS hello
        b"G\x00T /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models\r\n\r\n",
        b"GET /v1/models HTTP/0.9\r\n\r\n",
        b"GET /v1/models HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 40_000 + b"\r\n\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(200)) + b"\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=lambda value: value[:24].decode("latin-1"),
)
def test_http_layer_errors_are_envelopes(
    proxy: Proxy, fake: FakeOpenAI, request_bytes: bytes
) -> None:
    """Defect 8: what aiohttp answers before any route runs is OpenAI's envelope too."""
    if not request_bytes.endswith(b"Connection: close\r\n\r\n"):
        request_bytes = request_bytes[:-2] + b"Connection: close\r\n\r\n"
    response = raw_request(proxy.url, request_bytes, proxy.recorder)
    assert not 300 <= response.status < 400
    _envelope(response, (400, 401, 404, 405, 413, 417, 431, 501, 505))
    assert "x-request-id" in response.headers
    assert fake.requests == []


# ---------------------------------------------------------------- rows 22 and 23: paths


def test_encoded_slash_in_a_model_id_stays_encoded_upstream(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Defect 9: `%2F` stays inside its one path segment on the way up."""
    proxy.http().get("/v1/models/org%2Fmodel-1", headers={"Authorization": f"Bearer {proxy.key}"})
    received = fake.requests[-1]
    assert received.raw_path == "/v1/models/org%2Fmodel-1"
    # The SDK quotes a model id the same way; the proxy passes it on as the SDK sent it.
    fake.reset()
    proxy.http().get(
        "/v1/models/ft:gpt-4o:org::id", headers={"Authorization": f"Bearer {proxy.key}"}
    )
    assert fake.requests[-1].raw_path == "/v1/models/ft:gpt-4o:org::id"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/..%2F..%2Fadmin",
        "/v1/models/%2e%2e",
        "/v1/models/%2E%2E%2Fadmin",
        "/v1/models/%252e%252e%252fadmin",
        "/v1/models/%252F",
        "/v1/models/a%2F..%2F..%2Fkeys",
        "/v1/models/a%2F%2Fb",
        "/v1/files/../keys",
        "/v1/responses/%2e%2e/cancel",
        "/v1/responses/resp_1%2F..%2Fx",
        "/v1/models/..;/admin",
    ],
)
def test_dot_segments_and_double_encoding_never_route(
    proxy: Proxy, fake: FakeOpenAI, path: str
) -> None:
    """Row 22: dot segments, encoded or double-encoded, are a 400/404 and reach nothing."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {proxy.key}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    response = raw_request(proxy.url, request, proxy.recorder)
    assert not 300 <= response.status < 400
    _envelope(response, (400, 404))
    assert fake.requests == [], [(r.method, r.raw_path) for r in fake.requests]


def test_model_ids_with_colons_and_slashes_keep_working(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 22: real model ids are forwarded, through the SDK, byte for byte."""
    client = proxy.client()
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    for model in ("ft:gpt-4o:org::id", "meta/llama-3"):
        fake.reset()
        with pytest.raises(Exception):  # noqa: B017 - the fake knows neither: its 404 comes back
            client.models.retrieve(model)
        assert len(fake.requests) == 1
        assert fake.requests[0].raw_path == "/v1/models/" + model.replace("/", "%2F")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions/"),
        ("GET", "/v1/models/"),
        ("GET", "/v1//models"),
        ("GET", "//v1/models"),
        ("GET", "/v1/models?"),
        ("POST", "/v1/chat//completions"),
        ("GET", "/admin/keys/"),
        ("GET", "/nowhere"),
        ("GET", "/v1/files/../keys"),
    ],
)
def test_unknown_route_or_trailing_slash_is_404_never_3xx(
    proxy: Proxy, fake: FakeOpenAI, method: str, path: str
) -> None:
    """Row 23: the SDK follows redirects, and a 301/302 turns a POST into a GET."""
    body = orjson.dumps(HELLO) if method == "POST" else b""
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {proxy.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    response = raw_request(proxy.url, request, proxy.recorder)
    assert not 300 <= response.status < 400, response
    assert "location" not in response.headers
    if path == "/v1/models?":
        assert response.status == 200  # an empty query is still /v1/models
        return
    _envelope(response, 404)
    assert fake.requests == []


# ---------------------------------------------------------------- rows 20 and 21: what goes up


FOREIGN_FIELDS = ("api_base", "base_url", "api_key", "organization", "extra_headers")


@pytest.mark.parametrize("endpoint", [CHAT, "/v1/embeddings", "/v1/responses"])
def test_fields_naming_other_hosts_or_credentials_are_stripped(
    proxy: Proxy, fake: FakeOpenAI, endpoint: str
) -> None:
    """Row 21: the upstream never sees a host or credential a client wrote in the body."""
    body = {
        **HELLO,
        "input": "hi",
        "api_base": "http://169.254.169.254/v1",
        "base_url": "http://evil.example/v1",
        "api_key": "sk-client-supplied",
        "organization": "org-CLIENT",
        "extra_headers": {"Authorization": "Bearer sk-client-supplied"},
        "metadata": {"api_key": "kept: not top level"},
    }
    response = proxy.http().post(
        endpoint, json=body, headers={"Authorization": f"Bearer {proxy.key}"}
    )
    assert response.status_code == 200, response.text
    sent = fake.last(endpoint)
    document = sent.json()
    for name in FOREIGN_FIELDS:
        assert name not in document
    assert b"sk-client-supplied" not in sent.body
    assert document["metadata"] == {"api_key": "kept: not top level"}
    assert document["model"] == "gpt-4o-mini"


def test_escaped_foreign_field_names_are_stripped_too(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 21: a JSON escape in the name does not slip a field past the check."""
    raw = orjson.dumps(HELLO)[:-1] + b',"api\\u005fbase":"http://evil.example/v1"}'
    response = proxy.post_json(CHAT, raw)
    assert response.status_code == 200, response.text
    assert "api_base" not in fake.last(CHAT).json()


def test_usual_body_goes_up_byte_for_byte(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 21: a body without such fields is not re-encoded."""
    raw = b'{ "model" : "gpt-4o-mini", "messages":[{"role":"user","content":"hi"}], "x": 1.50 }'
    assert proxy.post_json(CHAT, raw).status_code == 200
    assert fake.last(CHAT).body == raw


@pytest.mark.parametrize(
    "header",
    [
        b"X-Injected: a\r\n\rEvil: yes",
        b"X-Test: a\nEvil: yes",
        b"X-Test: a\rEvil: yes",
    ],
)
def test_crlf_in_a_header_is_refused(proxy: Proxy, fake: FakeOpenAI, header: bytes) -> None:
    """Row 20: a header that smuggles another line is a 400 envelope, nothing goes up."""
    response = _post(proxy, b"Content-Type: application/json\r\n" + header + b"\r\n", b"{}")
    _envelope(response, 400)
    assert fake.requests == []


def test_client_routing_and_credential_headers_never_go_up(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 20: upstream headers come from an allowlist (see tests/security for the full list)."""
    head = (
        b"Content-Type: application/json\r\n"
        b"OpenAI-Organization: org-CLIENT\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: evil.example\r\n"
        b"X_Forwarded_For: 10.0.0.2\r\nOpenAI_Organization: org-UNDERSCORE\r\n"
        b"Authorization_: Bearer sk-underscore\r\nContent_Type: text/plain\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n"
    )
    response = _post(proxy, head, orjson.dumps(HELLO))
    assert response.status == 200, response
    received = fake.last(CHAT).headers
    assert fake.url is not None
    assert received["host"] == fake.url.removeprefix("http://")
    assert received["authorization"].startswith("Bearer sk-") and "underscore" not in str(received)
    assert received["content-type"] == "application/json"
    for name in (
        "openai-organization",
        "x-forwarded-for",
        "x-forwarded-host",
        "x_forwarded_for",
        "openai_organization",
        "authorization_",
        "content_type",
        "keep-alive",
        "te",
        "proxy-connection",
    ):
        assert name not in received, name


# ---------------------------------------------------------------- row 17: unknown keys


def test_missing_or_unknown_key_is_401_without_echo(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 17: the same answer for every unknown key, never echoing it, no upstream call."""
    guesses = ["pk-" + "a" * 43, "pk-" + "b" * 43, "pk-zzzz", "sk-notours"]
    messages = set()
    for guess in guesses:
        response = proxy.http().post(CHAT, json=HELLO, headers={"Authorization": f"Bearer {guess}"})
        error = check_error(response, 401, "invalid_api_key")
        assert guess not in response.text and guess[3:13] not in response.text
        messages.add(error["message"])
    assert len(messages) == 1
    missing = proxy.http().post(CHAT, json=HELLO)
    check_error(missing, 401, "invalid_api_key")
    assert fake.requests == []


# ---------------------------------------------------------------- row 18: guessing keys


def test_failed_auth_is_throttled_per_address(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 18: after N failures in a window, 429 with retry-after, then a short block."""
    proxy = make_proxy(
        auth={"failed_auth_limit": 3, "failed_auth_window": 60, "failed_auth_block_seconds": 0.5}
    )
    client = proxy.http()
    good = {"Authorization": f"Bearer {proxy.key}"}
    bad = {"Authorization": "Bearer pk-" + "x" * 43}
    for _ in range(2):
        check_error(client.post(CHAT, json=HELLO, headers=bad), 401, "invalid_api_key")
        # Successful authentications are neither counted nor hindered below the limit.
        assert client.post(CHAT, json=HELLO, headers=good).status_code == 200
    check_error(client.post(CHAT, json=HELLO, headers=bad), 401, "invalid_api_key")
    blocked = client.post(CHAT, json=HELLO, headers=bad)
    check_error(blocked, 429, "rate_limit_exceeded")
    assert int(blocked.headers["retry-after"]) >= 1
    # The block is the address's: a right guess now cannot be told from a wrong one.
    check_error(client.post(CHAT, json=HELLO, headers=good), 429, "rate_limit_exceeded")
    assert client.get("/healthz").status_code == 200
    deadline = time.monotonic() + 10
    while client.post(CHAT, json=HELLO, headers=good).status_code == 429:
        assert time.monotonic() < deadline, "the block never ended"
    check_error(client.post(CHAT, json=HELLO, headers=bad), 401, "invalid_api_key")


def test_failed_auth_memory_is_bounded() -> None:
    """Row 18: a guesser with many addresses costs bounded memory."""
    now = [0.0]
    throttle = FailedAuthThrottle(2, 60.0, 60.0, clock=lambda: now[0], max_addresses=100)
    for n in range(10_000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle) <= 200
    with pytest.raises(RateLimited):
        throttle.check("10.0.39.15")  # the latest blocked address is still blocked
    now[0] = 61.0
    throttle.check("10.0.39.15")


# ---------------------------------------------------------------- moderation cache prefix


def test_moderation_cache_uses_the_configured_redis_prefix(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Verdicts live under `limits.redis_prefix`, so proxies sharing a Redis stay apart."""
    url = redis_url()
    prefix = f"t{secrets.token_hex(4)}:"
    proxy = make_proxy(redis_url=url, limits={"redis_prefix": prefix}, moderation={"enabled": True})
    text = f"a prompt worth caching {secrets.token_hex(4)}"
    response = proxy.post_json(
        CHAT, orjson.dumps({**HELLO, "messages": [{"role": "user", "content": text}]})
    )
    assert response.status_code == 200, response.text

    async def keys() -> list[bytes]:
        redis = Redis.from_url(url)
        try:
            found: list[bytes] = await redis.keys(prefix + "mod:*")
            if found:
                await redis.delete(*found)
            return found
        finally:
            await redis.aclose()

    assert proxy.loop.run(keys())


# ---------------------------------------------------------------- row 14: slow clients


def _connect(proxy: Proxy) -> socket.socket:
    host, port = proxy.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)  # the deadline of each read
    return sock


SLOW = {"header_timeout": 0.3, "body_idle_timeout": 0.3}


def _metric(proxy: Proxy, name: str) -> float:
    """A number of /metrics: what the edge refuses reaches no access line, only these."""
    for line in proxy.http().get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_slow_headers_get_a_408_and_the_connection_closed(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 14: a request line and headers that never finish arriving are timed out."""
    proxy = make_proxy(server=SLOW)
    with _connect(proxy) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        response = parse_answer(read_until_closed(sock))
    _envelope(response, 408)
    with _connect(proxy) as sock:  # connected, sent nothing: closed without a word
        assert read_until_closed(sock) == b""
    assert fake.requests == []
    assert _metric(proxy, "chatgpt_proxy_client_timeouts_total") == 2


def test_idle_body_gets_a_408(make_proxy: Callable[..., Proxy], fake: FakeOpenAI) -> None:
    """Row 14: a body that stops arriving half-way is a 408, and nothing goes upstream."""
    proxy = make_proxy(server=SLOW)
    body = orjson.dumps(HELLO)
    with _connect(proxy) as sock:
        sock.sendall(
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {proxy.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        response = parse_answer(read_until_closed(sock))
    assert response.status == 408, response
    assert_openai_error(response.status, response.body, expected_status=408, code="request_timeout")
    assert fake.requests == []
    # A slow upstream is not the client's silence: a whole body then a long wait is served.
    slow = {**HELLO, "messages": [{"role": "user", "content": "[[fault:slow:1]] hi"}]}
    assert proxy.post_json(CHAT, orjson.dumps(slow)).status_code == 200
    # Keep-alive connections idle between requests are not timed out as slow headers.
    with proxy.http() as client:
        headers = {"Authorization": f"Bearer {proxy.key}"}
        assert client.post(CHAT, json=HELLO, headers=headers).status_code == 200
        assert client.post(CHAT, json=slow, headers=headers).status_code == 200


def test_connections_per_address_are_capped(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 14: past the cap, a new connection from the same address is refused at once."""
    proxy = make_proxy(server={"max_connections_per_address": 2})
    held = [_connect(proxy), _connect(proxy)]
    try:
        with _connect(proxy) as extra:
            response = parse_answer(read_until_closed(extra))
        _envelope(response, 429)
        assert response.headers["retry-after"] == "1"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the held connections' slots come back once the server sees them closed
        try:
            status = proxy.http().get("/healthz").status_code
        except httpx2.TransportError as exc:  # refused before the request was even sent
            status = type(exc).__name__
        if status == 200:
            break
        assert time.monotonic() < deadline, status
    assert _metric(proxy, "chatgpt_proxy_connections_refused_total") >= 1


def test_reader_that_stops_reading_a_stream_is_dropped(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 14: a stream nobody reads is dropped after the send timeout, its upstream call too."""
    proxy = make_proxy(server={"send_timeout": 0.3})
    words = 200_000  # several MB of events: more than every buffer between the two sockets
    body = orjson.dumps(
        {
            **HELLO,
            "stream": True,
            "messages": [{"role": "user", "content": f"[[fault:long:{words}]]"}],
        }
    )
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((host, int(port)))
        sock.sendall(
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {proxy.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        # Nothing is read from here on.
        assert fake.wait_for_disconnect(timeout=30, path=CHAT) is not None


# ---------------------------------------------------------------- row 28: overload


def _hold(proxy: Proxy) -> socket.socket:
    """A request the fake never answers, its connection kept open: it holds one slot."""
    body = orjson.dumps({**HELLO, "messages": [{"role": "user", "content": "[[fault:hang]]"}]})
    sock = _connect(proxy)
    sock.sendall(
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {proxy.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


@pytest.mark.parametrize("pending", [0, 1])
def test_full_proxy_answers_503_with_retry_after(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, pending: int
) -> None:
    """Row 28: a proxy at its cap of requests in flight (and of waiting ones) answers 503."""
    proxy = make_proxy(
        server={
            "max_requests_in_flight": 2,
            "max_pending_requests": pending,
            "pending_timeout": 0.2,
        }
    )
    held = [_hold(proxy), _hold(proxy)]
    try:
        fake.wait_for_requests(2, path=CHAT)
        client = proxy.http()
        response = client.post(CHAT, json=HELLO, headers={"Authorization": f"Bearer {proxy.key}"})
        check_error(response, 503, "server_overloaded")
        assert response.headers["retry-after"] == "1"
        assert fake.count(CHAT) == 2
        assert client.get("/readyz").status_code == 200  # probes are never queued
        assert _metric(proxy, "chatgpt_proxy_overloaded_total") == 1
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    headers = {"Authorization": f"Bearer {proxy.key}"}
    while proxy.http().post(CHAT, json=HELLO, headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "slots never came back"


def test_idle_multipart_body_gets_a_408(make_proxy: Callable[..., Proxy], fake: FakeOpenAI) -> None:
    """Row 14: an upload that stops arriving half-way is a 408 too."""
    proxy = make_proxy(server=SLOW)
    boundary = "edgeboundary"
    head = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + b"RIFF"
        + b"\0" * 100
    )
    with _connect(proxy) as sock:
        sock.sendall(
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {proxy.key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(head) + 10_000}\r\n\r\n".encode()
            + head
        )
        response = parse_answer(read_until_closed(sock))
    assert_openai_error(response.status, response.body, expected_status=408, code="request_timeout")


def test_in_flight_gate_queue_is_bounded_and_never_leaks_a_slot() -> None:
    """Row 28: the wait for a slot is bounded in length and in time; a waiter that gives up
    (its client left) takes no slot with it."""

    async def scenario() -> None:
        gate = InFlightGate(limit=1, pending=1, wait=30.0)
        assert await gate.enter()
        waiting = asyncio.ensure_future(gate.enter())
        await asyncio.sleep(0)  # let it join the queue
        assert not await gate.enter()  # the queue is full: refused at once
        gate.leave()
        assert await waiting  # the slot went to the one waiting
        leaving = asyncio.ensure_future(gate.enter())
        await asyncio.sleep(0)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        gate.leave()
        assert await gate.enter()  # the slot is free again: the cancelled waiter took none
        quick = InFlightGate(limit=1, pending=5, wait=0.01)
        assert await quick.enter()
        assert not await quick.enter()  # waited its bounded time, then refused

    asyncio.run(scenario())
