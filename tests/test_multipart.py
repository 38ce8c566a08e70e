"""``read_multipart`` on its own: a tiny app that reads an upload and says what it got.

The app answers with the fields it parsed, the body's size, and the body as it would go
upstream, read twice (as on a retry on another key); errors come back in OpenAI's envelope.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from aiohttp import web

from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.multipart import SpooledUpload, UploadLimits, form_flag, read_multipart
from servers import BackgroundLoop

FILE = bytes(range(256)) * 16  # 4 KiB


async def _collect(upload: SpooledUpload) -> bytes:
    if isinstance(upload.body, bytes):
        return upload.body
    assert upload.body is not None
    return b"".join([chunk async for chunk in upload.body])


class Reader:
    """A tiny app around ``read_multipart``; the last upload it read is kept to be inspected."""

    def __init__(self, loop: BackgroundLoop, limits: UploadLimits) -> None:
        self.limits = limits
        self.last: SpooledUpload | None = None
        app = web.Application()
        app.router.add_post("/", self._handle)
        self.loop = loop
        self.url = loop.start_app(app)

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            with await read_multipart(request, self.limits) as upload:
                self.last = upload
                first, second = await _collect(upload), await _collect(upload)
                answer = {
                    "fields": upload.fields,
                    "size": upload.size,
                    "in_memory": isinstance(upload.body, bytes),
                    "sha": hashlib.sha256(first).hexdigest(),
                    "replayed": first == second,
                }
                return web.json_response(answer)
        except ProxyError as exc:
            return web.Response(status=exc.status, body=exc.body(), content_type="application/json")

    def post(self, content: bytes, content_type: str) -> httpx2.Response:
        with httpx2.Client(timeout=10) as client:
            return client.post(self.url, content=content, headers={"Content-Type": content_type})

    def post_parts(self, parts: list[tuple[str, Any]]) -> tuple[httpx2.Response, bytes]:
        request = httpx2.Request("POST", self.url, files=parts)
        body = request.read()
        return self.post(body, request.headers["content-type"]), body


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def make_reader(background_loop: BackgroundLoop, spool_dir: Path) -> Iterator[Any]:
    readers: list[Reader] = []

    def make(body: int = 1 << 20, fields: int = 1 << 16, memory: int = 1 << 20) -> Reader:
        reader = Reader(background_loop, UploadLimits(body, fields, memory, str(spool_dir)))
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        background_loop.stop_app(reader.url)


def _open_in(directory: Path) -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            targets.append(target)
    return targets


def _code(response: httpx2.Response) -> tuple[int, str]:
    return response.status_code, orjson.loads(response.content)["error"]["code"]


@pytest.mark.parametrize("memory", [1 << 20, 0, 1000])
def test_every_field_is_read_and_the_body_kept_whole(
    make_reader: Any, spool_dir: Path, memory: int
) -> None:
    reader = make_reader(memory=memory)
    parts = [
        ("model", (None, "dall-e-2")),
        ("image[]", ("a.png", FILE, "image/png")),
        ("image[]", ("b.png", FILE, "image/png")),
        ("prompt", (None, "añadir un sombrero")),
        ("include[]", (None, "logprobs")),
        ("include[]", (None, "words")),
    ]
    response, body = reader.post_parts(parts)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["fields"] == {
        "model": "dall-e-2",
        "prompt": "añadir un sombrero",
        "include[]": ["logprobs", "words"],
    }
    assert answer["size"] == len(body)
    assert answer["sha"] == hashlib.sha256(body).hexdigest()
    assert answer["replayed"]
    assert answer["in_memory"] == (len(body) <= memory)
    assert _open_in(spool_dir) == []  # closed once the handler is done


def test_a_closed_upload_holds_no_file(make_reader: Any, spool_dir: Path) -> None:
    reader = make_reader(memory=0)
    response, _ = reader.post_parts([("file", ("a.mp3", FILE, "audio/mpeg"))])
    assert response.status_code == 200
    assert reader.last is not None and not response.json()["in_memory"]
    assert _open_in(spool_dir) == []
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("limits", "parts", "expected"),
    [
        ({"body": 2048}, [("file", ("a", FILE, "x/y"))], (413, "request_too_large")),
        ({"fields": 10}, [("prompt", (None, "x" * 11))], (413, "request_too_large")),
        ({}, [("model", (None, "a")), ("model", (None, "b"))], (400, "invalid_multipart")),
        ({}, [("model", (None, b"\xff"))], (400, "invalid_multipart")),
        ({}, [("n[]", (None, "1"))] * 1001, (400, "invalid_multipart")),
    ],
    ids=["body-limit", "fields-limit", "twice", "not-utf8", "too-many-parts"],
)
def test_refused_forms(
    make_reader: Any,
    spool_dir: Path,
    limits: dict[str, int],
    parts: list[tuple[str, Any]],
    expected: tuple[int, str],
) -> None:
    reader = make_reader(**limits, memory=0)
    response, _ = reader.post_parts(parts)
    assert _code(response) == expected
    assert _open_in(spool_dir) == []


def test_a_file_part_is_not_a_field(make_reader: Any) -> None:
    reader = make_reader()
    response, _ = reader.post_parts([("notes", ("m.txt", b"some text", "text/plain"))])
    assert response.json()["fields"] == {}


@pytest.mark.parametrize("name", ["model", "prompt", "stream", "Model"])
def test_a_policed_field_sent_as_a_file_is_refused(make_reader: Any, name: str) -> None:
    reader = make_reader()
    response, _ = reader.post_parts([(name, ("m.txt", b"gpt-4o", "text/plain"))])
    assert _code(response) == (400, "invalid_multipart")


def test_an_extended_name_parameter_is_ignored_as_rfc_7578_says(make_reader: Any) -> None:
    body = (
        b"--b\r\n"
        b"Content-Disposition: form-data; name=\"model\"; name*=utf-8''prompt\r\n\r\n"
        b"dall-e-2\r\n--b--\r\n"
    )
    response = make_reader().post(body, "multipart/form-data; boundary=b")
    assert response.json()["fields"] == {"model": "dall-e-2"}


def test_a_quoted_boundary_and_an_epilogue(make_reader: Any) -> None:
    body = b'--a b\r\nContent-Disposition: form-data; name="n"\r\n\r\n2\r\n--a b--\r\nbye\r\n'
    response = make_reader().post(body, 'multipart/form-data; boundary="a b"')
    assert response.json()["fields"] == {"n": "2"}
    assert response.json()["size"] == len(body)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("True", True),
        ("1", True),
        (" yes ", True),
        ("false", False),
        ("0", False),
        ("", False),
        (None, False),
        (["true"], False),
    ],
)
def test_form_flag(value: Any, expected: bool) -> None:
    assert form_flag(value) is expected
