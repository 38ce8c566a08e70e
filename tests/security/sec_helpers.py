"""Helpers shared by the security tests: raw HTTP over a socket, and OpenAI error checks."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import orjson

from harness import Recorder

ANY = object()  # any error code


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def raw_request(url: str, data: bytes, recorder: Recorder | None = None) -> RawResponse:
    """Send ``data`` as is to the server at ``url`` and read its answer until it closes.

    Bytes sent are never normalised by a client library: dot segments, encoded slashes, NUL
    and CRLF reach the server exactly as written. Use ``Connection: close`` in ``data``.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(data)
        raw = read_until_closed(sock)
    if recorder is not None:
        recorder.add_bytes(raw)
    return parse_answer(raw)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a read past the socket's timeout fails."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_answer(raw: bytes) -> RawResponse:
    """A whole HTTP/1 answer read off a socket (a chunked body is joined)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines and lines[0].startswith("HTTP/"), f"not an HTTP answer: {raw[:200]!r}"
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
    return RawResponse(status, headers, body)


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def assert_openai_error(
    status: int,
    body: bytes | Any,
    *,
    expected_status: int | tuple[int, ...],
    code: object = ANY,
) -> dict[str, Any]:
    """The answer is OpenAI's error envelope with the expected status (and code); its error."""
    wanted = expected_status if isinstance(expected_status, tuple) else (expected_status,)
    assert status in wanted, f"status {status}, wanted {wanted}: {body!r}"
    document = orjson.loads(body) if isinstance(body, bytes | str) else body
    assert isinstance(document, dict) and set(document) == {"error"}, document
    error = document["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if code is not ANY:
        codes = code if isinstance(code, tuple) else (code,)
        assert error["code"] in codes, f"code {error['code']!r}, wanted {codes}"
    return error


def check_error(
    response: httpx2.Response,
    expected_status: int | tuple[int, ...],
    code: object = ANY,
) -> dict[str, Any]:
    """``assert_openai_error`` for an httpx2 response, checking its content type too."""
    assert response.headers.get("content-type", "").startswith("application/json"), (
        response.status_code,
        response.headers,
        response.text[:300],
    )
    return assert_openai_error(
        response.status_code, response.content, expected_status=expected_status, code=code
    )
