"""Checklist rows 25, 29 and 30: URLs the proxy must never fetch, a canary upstream key that
must never come back out, and the headers every answer carries. Over real sockets, against
the fake upstream.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest

from fake_openai import ORGANIZATION, PROJECT, FakeOpenAI, mask_key
from harness import ADMIN_KEY, CANARY_KEY, Proxy
from security.sec_helpers import check_error
from servers import free_port

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


def _chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------- row 25: no client-given URL


class _Tripwire(ThreadingHTTPServer):
    """An HTTP server on every local address, IPv4 and IPv6, that counts what reaches it."""

    address_family = socket.AF_INET6
    daemon_threads = True

    def __init__(self) -> None:
        self.hits: list[str] = []
        super().__init__(("::", 0), _TripwireHandler)

    def server_bind(self) -> None:
        # Dual stack: 0.0.0.0, 127.0.0.1 and [::ffff:127.0.0.1] all land here.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port


class _TripwireHandler(BaseHTTPRequestHandler):
    server: _Tripwire

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        if self.path.startswith("/redirect"):
            # A redirect chain ending at the cloud metadata service, as an attacker would set.
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.port}/hop2")
        elif self.path.startswith("/hop2"):
            self.send_response(302)
            self.send_header("Location", METADATA_URL)
        else:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def tripwire() -> Iterator[_Tripwire]:
    server = _Tripwire()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _local_urls(port: int) -> list[str]:
    return [
        METADATA_URL,
        f"http://0.0.0.0:{port}/zero.png",
        f"http://[::ffff:127.0.0.1]:{port}/mapped.png",
        f"http://127.0.0.1:{port}/redirect.png",
    ]


def _image_requests(url: str) -> list[tuple[str, dict[str, Any]]]:
    """The places an image URL sits in a request: chat parts and Responses input images."""
    return [
        (
            CHAT,
            _chat(
                [
                    {"type": "text", "text": "what is in this picture?"},
                    {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
                ]
            ),
        ),
        (CHAT, _chat([{"type": "image_url", "image_url": {"url": url}}], stream=True)),
        (
            RESPONSES,
            {
                "model": "gpt-4o",
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "describe"},
                            {"type": "input_image", "image_url": url},
                        ],
                    }
                ],
            },
        ),
        (
            "/v1/moderations",
            {
                "model": "omni-moderation-latest",
                "input": [{"type": "image_url", "image_url": {"url": url}}],
            },
        ),
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {"moderation": {"enabled": True, "check_output": True, "check_moderations": True}},
        {"moderation": {"enabled": False}},
    ],
    ids=["moderated", "unmoderated"],
)
def test_client_image_urls_are_never_fetched(
    make_proxy: Callable[..., Proxy],
    fake: FakeOpenAI,
    tripwire: _Tripwire,
    settings: dict[str, Any],
) -> None:
    """Row 25: ``image_url`` pointing at 169.254.169.254, 0.0.0.0, [::ffff:127.0.0.1] or a
    redirect chain to the metadata service is passed on as text and never fetched by the
    proxy, with moderation on or off."""
    proxy = make_proxy(**settings)
    http = proxy.http()
    sent = 0
    for url in _local_urls(tripwire.port):
        for path, body in _image_requests(url):
            response = http.post(path, json=body, headers=_auth(proxy.key))
            assert response.status_code == 200, (path, url, response.text[:300])
            sent += 1
    # Each went upstream with its URL as the client wrote it: text, for OpenAI to fetch.
    forwarded = [r for r in fake.requests if r.path in (CHAT, RESPONSES, "/v1/moderations")]
    for url in _local_urls(tripwire.port):
        assert sum(url.encode() in r.body for r in forwarded) >= 4, url
    assert sent == len(_local_urls(tripwire.port)) * 4
    assert tripwire.hits == [], f"the proxy fetched client-given URLs: {tripwire.hits}"
    # The tripwire does see a client that does fetch those URLs: the check above can fail.
    with httpx2.Client(timeout=5) as client:
        for url in _local_urls(tripwire.port)[1:3]:
            client.get(url)
    assert len(tripwire.hits) == 2


# ---------------------------------------------------------------- row 29: the canary key

CANARY_TEXTS = [CANARY_KEY, mask_key(CANARY_KEY), CANARY_KEY[-12:], CANARY_KEY[3:20]]

FAULTS: dict[str, tuple[dict[str, Any], str | None, dict[str, Any]]] = {
    # name: (request body, key script on the canary, settings overrides)
    "401-echoing-the-key": (_chat("[[fault:echo_key]]"), None, {}),
    "401-masked-key": (_chat("hi"), "invalid", {}),
    "429": (_chat("[[fault:429]]"), None, {}),
    "429-no-quota": (_chat("hi"), "no_quota", {}),
    "500": (_chat("[[fault:500]]"), None, {}),
    "html-page-with-the-key": (_chat("[[fault:html]]"), None, {}),
    "redirect": (_chat("[[fault:redirect]]"), None, {}),
    "cut-stream": (_chat("[[fault:cut:2]]", stream=True), None, {}),
    "cut-body": (_chat("[[fault:cut:10]]"), None, {}),
    "cut-responses-stream": (
        {"model": "gpt-4o", "input": "[[fault:cut:3]]", "stream": True},
        None,
        {},
    ),
    "first-byte-timeout": (_chat("[[fault:hang]]"), None, {"timeouts": {"first_byte": 0.3}}),
    "stream-idle-timeout": (
        _chat("[[fault:slow:2]]", stream=True),
        None,
        {"timeouts": {"stream_idle": 0.3}},
    ),
    "unreachable-upstream": (_chat("hi"), None, {"unreachable": True}),
}


def _canary_upstreams(fake: FakeOpenAI, unreachable: bool) -> list[dict[str, Any]]:
    base = f"http://127.0.0.1:{free_port()}/v1" if unreachable else fake.base_url
    return [{"name": "openai", "base_url": base, "keys": [CANARY_KEY]}]


def _read_all(http: httpx2.Client, path: str, body: dict[str, Any], key: str) -> httpx2.Response:
    # Only reading may fail (a cut stream): what arrived before the cut was recorded.
    with http.stream("POST", path, json=body, headers=_auth(key)) as response:  # noqa: SIM117
        with contextlib.suppress(httpx2.HTTPError):
            response.read()
    return response


@pytest.mark.parametrize("fault", list(FAULTS))
def test_canary_upstream_key_never_leaves_the_proxy(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, fault: str
) -> None:
    """Row 29: a canary upstream key, under a spread of upstream faults, appears in no body,
    header, SSE event, log line, metric or admin API answer, whole, masked or in part."""
    body, script, overrides = FAULTS[fault]
    overrides = dict(overrides)
    unreachable = bool(overrides.pop("unreachable", False))
    proxy = make_proxy(upstreams=_canary_upstreams(fake, unreachable), **overrides)
    if script is not None:
        fake.script_key(CANARY_KEY, script)  # type: ignore[arg-type]
    http = proxy.http()
    path = RESPONSES if "input" in body else CHAT
    start = len(proxy.recorder.received), len(proxy.recorder.log_lines)
    for _ in range(2):  # the second meets the key retired or cooling, another code path
        _read_all(http, path, body, proxy.key)
    admin = _auth(ADMIN_KEY)
    for where in ("/metrics", "/readyz", "/healthz"):
        http.get(where)
    for where in ("/admin/upstreams", "/admin/keys", "/admin/moderation"):
        http.get(where, headers=admin)
    proxy.flush_logs()
    assert fake.requests or unreachable, "the fault never reached the fake upstream"
    if not unreachable:
        assert CANARY_KEY in fake.keys_used()
    received = b"\n".join(proxy.recorder.received[start[0] :]).decode("utf-8", "replace")
    logs = "\n".join(proxy.recorder.log_lines[start[1] :])
    for text in CANARY_TEXTS:
        assert text not in received, f"{text[:10]}... sent to a client after {fault}"
        assert text not in logs, f"{text[:10]}... in a log line after {fault}"


# ---------------------------------------------------------------- row 30: response headers

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _assert_stamped(response: httpx2.Response, where: str) -> None:
    headers = response.headers
    assert headers.get("x-request-id", "").startswith("req_"), (where, dict(headers))
    assert headers.get("openai-processing-ms", "").isdigit(), (where, dict(headers))
    names = {name.lower() for name in headers}
    assert not names & {"openai-organization", "openai-project"}, (where, names)
    text = str(dict(headers))
    assert ORGANIZATION not in text and PROJECT not in text, (where, text)


def test_response_headers(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 30: every answer carries a proxy-made ``x-request-id`` and
    ``openai-processing-ms``; a rate-limited key sees its own ``x-ratelimit-*``, never the
    upstream's; upstream ``openai-organization``/``openai-project`` are stripped; SSE answers
    carry ``text/event-stream``, ``Cache-Control: no-cache`` and ``X-Accel-Buffering: no``."""
    from chatgpt_proxy.keystore import KeyPolicy

    http = proxy.http()
    limited = proxy.create_key("limited", KeyPolicy(rpm=7, tpm=50_000))

    answer = http.post(CHAT, json=_chat("hi"), headers=_auth(proxy.key))
    assert answer.status_code == 200
    _assert_stamped(answer, "a plain answer")
    request_ids = {answer.headers["x-request-id"]}

    answer = http.post(CHAT, json=_chat("hi"), headers=_auth(limited))
    assert answer.status_code == 200
    _assert_stamped(answer, "a rate-limited key's answer")
    assert answer.headers["x-ratelimit-limit-requests"] == "7"
    assert answer.headers["x-ratelimit-limit-tokens"] == "50000"
    assert int(answer.headers["x-ratelimit-remaining-requests"]) <= 6
    assert "x-ratelimit-reset-requests" in answer.headers

    for path, body in (
        (CHAT, _chat("hi", stream=True)),
        (RESPONSES, {"model": "gpt-4o", "input": "hi", "stream": True}),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "stream": True}),
    ):
        for key in (proxy.key, limited):
            with http.stream("POST", path, json=body, headers=_auth(key)) as stream:
                stream.read()
            assert stream.status_code == 200, stream.text[:300]
            _assert_stamped(stream, f"a stream from {path}")
            request_ids.add(stream.headers["x-request-id"])
            assert stream.headers["content-type"].startswith("text/event-stream")
            for name, value in SSE_HEADERS.items():
                assert stream.headers.get(name, "").lower() == value, (path, name)
            if key == limited:
                assert stream.headers["x-ratelimit-limit-requests"] == "7"

    errors = [
        http.post(CHAT, json=_chat("hi"), headers=_auth("pk-not-a-key")),
        http.get("/v1/nowhere", headers=_auth(proxy.key)),
        http.post(CHAT, json=_chat("[[fault:400]]"), headers=_auth(proxy.key)),
    ]
    for response in errors:
        check_error(response, (400, 401, 404))
        _assert_stamped(response, f"an error {response.status_code}")

        request_ids.add(response.headers["x-request-id"])
    assert len(request_ids) == 1 + 6 + len(errors), "request ids repeat"
