"""Headers across the proxy, in both directions (DESIGN §3.3): allowlists, SSE, request ids."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx2
import orjson
import pytest

from fake_openai import FAKE_KEYS, ORGANIZATION, PROJECT, FakeOpenAI
from harness import Proxy

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
# Headers the fake (like OpenAI) puts on its answers that say something about the account.
UPSTREAM_ONLY = ("openai-organization", "openai-project", "set-cookie", "cf-ray")


def _auth(proxy: Proxy) -> dict[str, str]:
    return {"Authorization": f"Bearer {proxy.key}"}


def _assert_no_upstream_headers(response: httpx2.Response) -> None:
    for name in UPSTREAM_ONLY:
        assert name not in response.headers, name
    leaked = [name for name in response.headers if name.lower().startswith("x-ratelimit-")]
    assert leaked == []
    assert "strict-transport-security" not in response.headers
    raw = b"\n".join(name + b": " + value for name, value in response.headers.raw)
    assert ORGANIZATION.encode() not in raw and PROJECT.encode() not in raw
    assert b"__cf_bm" not in raw


def _assert_stamped(response: httpx2.Response) -> None:
    assert response.headers["x-request-id"].startswith("req_")
    assert int(response.headers["openai-processing-ms"]) >= 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
def test_sse_headers(proxy: Proxy, path: str) -> None:
    body = {**CHAT, "prompt": "hi", "input": "hi", "stream": True}
    with proxy.http().stream("POST", path, json=body, headers=_auth(proxy)) as response:
        response.read()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    _assert_stamped(response)
    _assert_no_upstream_headers(response)


def test_upstream_account_headers_never_reach_the_client(proxy: Proxy) -> None:
    http = proxy.http()
    answers = [
        http.post("/v1/chat/completions", json=CHAT, headers=_auth(proxy)),
        http.post(
            "/v1/chat/completions",
            json={**CHAT, "messages": [{"role": "user", "content": "[[fault:400]]"}]},
            headers=_auth(proxy),
        ),
        http.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "voice": "alloy", "input": "x"},
            headers=_auth(proxy),
        ),
        http.get("/v1/models/gpt-4o", headers=_auth(proxy)),
        http.get("/v1/models/gpt-9", headers=_auth(proxy)),
        http.get("/v1/models", headers=_auth(proxy)),
    ]
    assert [a.status_code for a in answers] == [200, 400, 200, 200, 404, 200]
    for answer in answers:
        _assert_no_upstream_headers(answer)
        _assert_stamped(answer)
    assert answers[0].headers["openai-version"] == "2020-10-01"


def test_sdk_raw_response_headers(proxy: Proxy) -> None:
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert "openai-organization" not in raw.headers
    assert "x-ratelimit-remaining-requests" not in raw.headers


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/v1/chat/completions", {"json": CHAT}, 200),
        ("GET", "/v1/nope", {}, 404),
        ("GET", "/v2/chat/completions", {}, 404),
        ("GET", "/", {}, 404),
        ("GET", "/v1/chat/completions", {}, 405),
        ("POST", "/v1/chat/completions", {"content": b"{not json"}, 400),
        (
            "POST",
            "/v1/chat/completions",
            {"json": {"model": "gpt-4o-mini", "x": "[[fault:html]]"}},
            502,
        ),
        ("GET", "/healthz", {}, 200),
    ],
)
def test_every_answer_has_request_id_and_processing_ms(
    proxy: Proxy, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    headers = {**_auth(proxy), "Content-Type": "application/json"}
    answer = proxy.http().request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert answer.status_code == status
    _assert_stamped(answer)
    if status >= 400:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


def test_errors_before_auth_are_stamped(proxy: Proxy) -> None:
    answer = proxy.http().post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"
    _assert_stamped(answer)


def test_request_ids_are_unique_and_the_proxys_own(proxy: Proxy) -> None:
    http = proxy.http()
    ids = {
        http.post("/v1/chat/completions", json=CHAT, headers=_auth(proxy)).headers["x-request-id"]
        for _ in range(3)
    }
    assert len(ids) == 3


def _access_lines(proxy: Proxy, request_id: str) -> list[str]:
    proxy.flush_logs()
    return [line for line in proxy.recorder.log_lines if request_id in line and "access:" in line]


def test_one_access_line_per_request(proxy: Proxy) -> None:
    answer = proxy.http().post("/v1/chat/completions", json=CHAT, headers=_auth(proxy))
    (line,) = _access_lines(proxy, answer.headers["x-request-id"])
    assert " INFO chatgpt_proxy.access: " in line
    assert "POST /v1/chat/completions 200" in line
    assert f"key={proxy.key_id} model=gpt-4o-mini upstream=openai#" in line
    assert proxy.key not in line


def test_no_access_line_when_it_is_off(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(server={"access_log": False})
    answer = proxy.http().post("/v1/chat/completions", json=CHAT, headers=_auth(proxy))
    assert answer.status_code == 200
    assert _access_lines(proxy, answer.headers["x-request-id"]) == []


def test_client_credentials_and_hop_by_hop_headers_stay_here(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    proxy_host = proxy.url.removeprefix("http://")
    sent = {
        "Authorization": f"Bearer {proxy.key}",
        "OpenAI-Organization": "org-CLIENTORG999",
        "OpenAI-Project": "proj_CLIENTPROJ",
        "Cookie": "session=client-cookie",
        "Connection": "keep-alive, X-Hop-Custom",
        "X-Hop-Custom": "hop",
        "Keep-Alive": "timeout=5, max=100",
        "TE": "trailers",
        "Upgrade": "h2c-bogus",
        "Proxy-Authorization": "Basic cHJveHk6cHJveHk=",
        "X-Forwarded-For": "10.0.0.1",
        "X-Api-Key": "client-side",
        "OpenAI-Beta": "assistants=v2",
        "Idempotency-Key": "idem-123",
    }
    answer = proxy.http().post("/v1/chat/completions", json=CHAT, headers=sent)
    assert answer.status_code == 200
    received = fake.last("/v1/chat/completions")
    headers = received.headers
    assert headers["authorization"] in {f"Bearer {key}" for key in FAKE_KEYS[:2]}
    assert received.key in FAKE_KEYS[:2]
    assert proxy.key not in str(headers)
    assert headers["host"] != proxy_host
    assert headers["host"] == fake.url.removeprefix("http://")
    for name in (
        "openai-organization",
        "openai-project",
        "cookie",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "x-hop-custom",
        "x-forwarded-for",
        "x-api-key",
    ):
        assert name not in headers, name
    assert headers.get("connection", "keep-alive").lower() in {"keep-alive", "close"}
    assert "org-CLIENTORG999" not in str(headers) and "client-cookie" not in str(headers)
    # What the API itself needs still goes up.
    assert headers["openai-beta"] == "assistants=v2"
    assert headers["idempotency-key"] == "idem-123"
    assert headers["content-type"] == "application/json"


def test_sdk_organization_option_is_not_forwarded(proxy: Proxy, fake: FakeOpenAI) -> None:
    client = proxy.client(organization="org-SDKCLIENT1", project="proj_SDKCLIENT1")
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    headers = fake.last("/v1/chat/completions").headers
    assert "openai-organization" not in headers and "openai-project" not in headers
    assert headers["authorization"] in {f"Bearer {key}" for key in FAKE_KEYS[:2]}


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x00Header: y\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ],
)
def test_malformed_requests_are_stamped_too(proxy: Proxy, request_bytes: bytes) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    assert headers[b"x-request-id"].startswith(b"req_")
    assert headers[b"openai-processing-ms"].isdigit()
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
