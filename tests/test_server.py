"""The server around the app: what aiohttp would answer in plain text is OpenAI's envelope,
slow clients are timed, and one address may hold only so many connections."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from harness import Proxy
from security.sec_helpers import assert_openai_error, parse_answer, raw_request, read_until_closed
from servers import wait_for


def _connect(proxy: Proxy) -> socket.socket:
    parts = urlsplit(proxy.url)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def test_a_request_aiohttp_cannot_parse_is_answered_in_the_envelope(proxy: Proxy) -> None:
    answer = raw_request(
        proxy.url,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x00Header: 1\r\nConnection: close\r\n\r\n",
    )
    assert answer.headers["content-type"].startswith("application/json")
    assert_openai_error(answer.status, answer.body, expected_status=400)


def test_a_long_junk_key_is_an_authentication_error_not_a_header_error(proxy: Proxy) -> None:
    junk = "sk-" + "x" * 10_000  # over aiohttp's default 8 KiB field limit
    response = proxy.http().get("/v1/models", headers={"Authorization": f"Bearer {junk}"})
    assert_openai_error(
        response.status_code, response.content, expected_status=401, code="invalid_api_key"
    )


def test_headers_that_never_finish_get_a_408_and_the_connection_closes(
    make_proxy: Callable[..., Proxy],
) -> None:
    proxy = make_proxy(server={"header_timeout": 0.2})
    with _connect(proxy) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        answer = parse_answer(read_until_closed(sock))
    assert_openai_error(answer.status, answer.body, expected_status=408)


def test_headers_that_arrived_while_the_loop_was_busy_are_not_the_clients_delay(
    make_proxy: Callable[..., Proxy],
) -> None:
    """An event loop starved past the header timeout (a burst of work, an overloaded machine)
    must not answer 408 or drop a client whose request waited, whole, in the socket."""
    proxy = make_proxy(server={"header_timeout": 0.2})
    server = proxy.loop.runner(proxy.url).server
    assert server is not None
    with _connect(proxy) as sock:
        wait_for(lambda: server.connections, message="the proxy never took the connection")
        starved = threading.Event()

        def starve() -> None:  # the proxy's loop does nothing else for 5 header timeouts
            starved.set()
            time.sleep(1.0)

        proxy.loop.loop.call_soon_threadsafe(starve)
        assert starved.wait(10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = parse_answer(read_until_closed(sock))
    assert answer.status == 200


def test_an_address_over_its_connection_cap_is_refused(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(server={"max_connections_per_address": 1})
    with _connect(proxy) as held:
        held.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert held.recv(65536).startswith(b"HTTP/1.1 200")  # open, and kept alive
        answer = raw_request(
            proxy.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert_openai_error(answer.status, answer.body, expected_status=429)
    assert answer.headers["retry-after"] == "1"
