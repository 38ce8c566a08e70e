"""Request bodies at the edge: rows 15 and 16, and multipart fields wherever they sit.

Over real sockets against the running proxy. The official Python SDK always writes a form's text
fields before its files (httpx does), so bodies with fields after the file (as curl ``-F``, a
browser form or the Node SDK send them) are built by httpx2's own multipart encoder, with the
parts in the order given; hand-written bytes are kept for the malformed cases.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest

from chatgpt_proxy.keystore import KeyPolicy
from fake_openai import FAKE_KEYS, FakeOpenAI
from harness import Proxy

EDITS = "/v1/images/edits"
CHAT = "/v1/chat/completions"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64  # 16 KiB and a little
LIMIT = 64 * 1024
HUNDRED_MB = 100 * 1024 * 1024


def _auth(proxy: Proxy) -> dict[str, str]:
    return {"Authorization": f"Bearer {proxy.key}"}


def _error(response: httpx2.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The answer is OpenAI's error envelope with this status (and code)."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    document = orjson.loads(response.content)
    assert set(document) == {"error"} and set(document["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    error: dict[str, Any] = document["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def _file_first(*fields: tuple[str, str], image: bytes = PNG) -> list[tuple[str, Any]]:
    """Multipart parts with the image first and the text fields after it."""
    return [("image", ("a.png", image, "image/png"))] + [
        (name, (None, value)) for name, value in fields
    ]


def _encode(parts: list[tuple[str, Any]]) -> tuple[bytes, str]:
    """The exact bytes and Content-Type httpx2 sends for these parts."""
    request = httpx2.Request("POST", "http://x/", files=parts)
    return request.read(), request.headers["content-type"]


def _spool_files(directory: Path) -> list[str]:
    """Files this process holds open in ``directory`` (anonymous ones included)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while listing
        if target.startswith(str(directory)):
            held.append(target)
    return held


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or the deadline passes; whether it held."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: a wait on it is a pause between two polls
    while not condition():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.01)
    return True


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


@pytest.fixture
def spooling(make_proxy: Callable[..., Proxy], spool_dir: Path) -> Proxy:
    """A proxy that keeps at most 1 KiB of an upload in memory, then spools it to disk."""
    return make_proxy(server={"upload_memory_bytes": 1024, "upload_spool_dir": str(spool_dir)})


# ---------------------------------------------------------------- defect 1: fields after the file


def test_model_after_the_file_is_held_to_the_allowlist(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy()
    key = proxy.create_key("images-only", KeyPolicy(models=("dall-e-2",)))
    parts = _file_first(("prompt", "add a hat"), ("model", "gpt-image-1"))
    response = proxy.http().post(EDITS, files=parts, headers={"Authorization": f"Bearer {key}"})
    error = _error(response, 403, "model_not_allowed")
    assert error["param"] == "model"
    assert fake.count(EDITS) == 0


def test_prompt_after_the_file_is_moderated(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(moderation={"enabled": True})
    parts = _file_first(("model", "dall-e-2"), ("prompt", "FLAG:hate"))
    response = proxy.http().post(EDITS, files=parts, headers=_auth(proxy))
    _error(response, 400, "content_policy_violation")
    assert fake.count(EDITS) == 0
    assert any("FLAG:hate" in str(call) for call in fake.moderation_calls)


def test_model_after_the_file_routes_the_request(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    upstream = {"base_url": fake.base_url}
    proxy = make_proxy(
        upstreams=[
            {**upstream, "name": "dalle", "keys": [FAKE_KEYS[0]], "models": ["dall-e-*"]},
            {**upstream, "name": "images", "keys": [FAKE_KEYS[2]], "models": ["gpt-image-*"]},
        ]
    )
    parts = _file_first(("prompt", "a hat"), ("model", "gpt-image-1"))
    assert proxy.http().post(EDITS, files=parts, headers=_auth(proxy)).status_code == 200
    assert fake.last(EDITS).key == FAKE_KEYS[2]


def test_a_model_sent_as_a_file_after_the_image_is_refused(proxy: Proxy, fake: FakeOpenAI) -> None:
    """The allowlist reads text fields; a ``model`` part with a filename would slip past it."""
    parts = _file_first(("prompt", "a hat"))
    parts.append(("model", ("model.txt", b"gpt-image-1", "text/plain")))
    _error(proxy.http().post(EDITS, files=parts, headers=_auth(proxy)), 400, "invalid_multipart")
    assert fake.count(EDITS) == 0


@pytest.mark.parametrize("name", ["model", "prompt", "stream"])
def test_a_field_given_twice_is_refused(proxy: Proxy, fake: FakeOpenAI, name: str) -> None:
    """Policing one value while the upstream reads the other would be a bypass."""
    parts = _file_first(("model", "dall-e-2"), ("prompt", "a hat"), ("stream", "false"))
    parts.append((name, (None, "other")))
    _error(proxy.http().post(EDITS, files=parts, headers=_auth(proxy)), 400)
    assert fake.count(EDITS) == 0


def test_fields_after_the_file_are_forwarded_byte_for_byte(
    spooling: Proxy, fake: FakeOpenAI
) -> None:
    body, content_type = _encode(
        _file_first(("prompt", "add a hat"), ("model", "dall-e-2"), ("n", "2"))
    )
    response = spooling.http().post(
        EDITS, content=body, headers={**_auth(spooling), "Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
    received = fake.last(EDITS)
    assert received.body == body
    assert received.headers["content-type"] == content_type
    # Spooled to disk, and still sent with its length, not chunked.
    assert received.headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in received.headers
    assert received.form() == {"prompt": "add a hat", "model": "dall-e-2", "n": "2"}
    # Metered (and priced) under the model that came after the file.
    spooling.loop.run(spooling.state.meter.flush())
    rows = spooling.loop.run(spooling.state.store.usage.summary(spooling.key_id))
    assert [row.model for row in rows] == ["dall-e-2"]


def test_the_sdk_upload_still_passes_whole(spooling: Proxy, fake: FakeOpenAI) -> None:
    edited = spooling.client().images.edit(
        image=("a.png", PNG, "image/png"), prompt="add a hat", model="dall-e-2"
    )
    assert edited.data
    image = next(part for part in fake.last(EDITS).parts if part.name == "image")
    assert image.size == len(PNG)


def test_a_spooled_upload_is_replayed_on_another_key(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, spool_dir: Path
) -> None:
    proxy = make_proxy(
        server={"upload_memory_bytes": 1024, "upload_spool_dir": str(spool_dir)},
        upstreams=[{"name": "openai", "base_url": fake.base_url, "keys": list(FAKE_KEYS[:3])}],
    )
    # Two of the three keys fail once, so that, whichever is tried first, it can take two
    # tries; each one sends the whole spooled body again.
    fake.script_key(FAKE_KEYS[0], "server_error", times=1)
    fake.script_key(FAKE_KEYS[1], "server_error", times=1)
    body, content_type = _encode(_file_first(("model", "dall-e-2"), ("prompt", "a hat")))
    response = proxy.http().post(
        EDITS, content=body, headers={**_auth(proxy), "Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    attempts = fake.requests_to(EDITS)
    assert len(attempts) == 3
    assert all(attempt.body == body for attempt in attempts)
    assert _spool_files(spool_dir) == []


# ---------------------------------------------------------------- defect 1: the spool is let go


def test_the_spool_is_let_go_after_a_success(
    spooling: Proxy, fake: FakeOpenAI, spool_dir: Path
) -> None:
    parts = _file_first(("model", "dall-e-2"), ("prompt", "a hat"))
    response = spooling.http().post(EDITS, files=parts, headers=_auth(spooling))
    assert response.status_code == 200
    assert _wait(lambda: _spool_files(spool_dir) == [])
    assert os.listdir(spool_dir) == []


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ((("model", "gpt-image-1"), ("prompt", "a hat")), 403),  # refused by the allowlist
        ((("model", "dall-e-2"), ("prompt", "a hat [[fault:500]]")), 502),  # upstream
    ],
)
def test_the_spool_is_let_go_on_an_error(
    make_proxy: Callable[..., Proxy],
    fake: FakeOpenAI,
    spool_dir: Path,
    fields: tuple[tuple[str, str], ...],
    status: int,
) -> None:
    proxy = make_proxy(
        server={"upload_memory_bytes": 1024, "upload_spool_dir": str(spool_dir)},
        retries={"max_attempts": 1},
    )
    key = proxy.create_key("dall-e-2 only", KeyPolicy(models=("dall-e-2",)))
    response = proxy.http().post(
        EDITS, files=_file_first(*fields), headers={"Authorization": f"Bearer {key}"}
    )
    _error(response, status)
    assert _wait(lambda: _spool_files(spool_dir) == [])


def test_the_spool_is_let_go_when_the_client_leaves(
    spooling: Proxy, fake: FakeOpenAI, spool_dir: Path
) -> None:
    body, content_type = _encode(
        _file_first(("model", "dall-e-2"), ("prompt", "a hat [[fault:slow:30]]"))
    )
    host, port = spooling.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {EDITS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {spooling.key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert fake.wait_for_requests(1, path=EDITS)
        # Held while the upstream works: a 16 KiB upload over a 1 KiB bound is on disk.
        assert _spool_files(spool_dir)
    assert fake.wait_for_disconnect(path=EDITS) is not None
    assert _wait(lambda: _spool_files(spool_dir) == [])


def test_the_spool_is_let_go_when_the_client_leaves_mid_upload(
    spooling: Proxy, fake: FakeOpenAI, spool_dir: Path
) -> None:
    body, content_type = _encode(_file_first(("model", "dall-e-2")))
    host, port = spooling.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {EDITS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {spooling.key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body) + 1}\r\n\r\n".encode()
            + body[:-1]
        )
        assert _wait(lambda: bool(_spool_files(spool_dir)))
    assert _wait(lambda: _spool_files(spool_dir) == [])
    assert fake.count(EDITS) == 0


# ---------------------------------------------------------------- row 15


def _raw(proxy: Proxy, head: str, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send a request head, then body chunks until the proxy answers; its whole answer, and
    how many bytes of the body were sent.

    The proxy may answer (and stop reading) at any point of the body: sending waits until
    the socket can take more or has an answer to read, whichever comes first.
    """
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        sent = _send_until_answered(sock, chunks)
        answer = b""
        while not _complete(answer):
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    proxy.recorder.add_bytes(answer)
    return answer, sent


def _send_until_answered(sock: socket.socket, chunks: Iterator[bytes]) -> int:
    sent = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable or not writable:
                return sent  # answered (or closed) before the body was all sent
            try:
                count = sock.send(view)
            except (BrokenPipeError, ConnectionResetError):
                return sent
            sent += count
            view = view[count:]
    return sent


def _length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    length = _length(head) if sep else None
    return length is not None and len(body) >= length


def _raw_error(answer: bytes, status: int, code: str | None = None) -> None:
    """The first answer of ``answer`` is this error (a second one may have come with it)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"%d" % status, answer[:300]
    error = orjson.loads(body[: _length(head)])["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    if code is not None:
        assert error["code"] == code, error


def _endless(chunk: bytes, *, chunked: bool) -> Iterator[bytes]:
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
    for _ in range(HUNDRED_MB // len(chunk)):  # unless answered before
        yield framed


JSON_HEAD = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
MULTIPART_HEAD = (
    b"--b0undary\r\n"
    b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


JSON = "application/json"
FORM = "multipart/form-data; boundary=b0undary"


@pytest.mark.parametrize(
    ("path", "content_type", "head", "framing", "expected"),
    [
        (CHAT, JSON, JSON_HEAD, "length", 413),
        (CHAT, JSON, JSON_HEAD, "chunked", 413),
        (CHAT, JSON, JSON_HEAD, "lying", 400),
        (EDITS, FORM, MULTIPART_HEAD, "length", 413),
        (EDITS, FORM, MULTIPART_HEAD, "chunked", 413),
        (EDITS, FORM, MULTIPART_HEAD, "lying", 400),
    ],
    ids=["json-length", "json-chunked", "json-lying", "form-length", "form-chunked", "form-lying"],
)
def test_row_15_a_huge_body_is_refused_before_it_is_buffered(
    make_proxy: Callable[..., Proxy],
    fake: FakeOpenAI,
    path: str,
    content_type: str,
    head: bytes,
    framing: str,
    expected: int,
) -> None:
    """Row 15: 100 MB, declared, chunked with no length, or behind a lying Content-Length.

    Declared: 413 before a byte of it is read. Chunked: 413 once the bytes counted as they come
    in pass the limit. A Content-Length smaller than what follows: the body ends where it said
    (an unfinished JSON or form, 400); what follows is never read as part of it, only as a next
    request that is not HTTP (400, and the connection closes), whichever answer comes first.
    Every time the answer comes long before the 100 MB are sent, and nothing goes upstream.
    """
    proxy = make_proxy(server={"max_body_bytes": LIMIT, "max_upload_bytes": LIMIT * 2})
    chunked = framing == "chunked"
    length = {
        "length": f"Content-Length: {HUNDRED_MB}\r\n",
        "chunked": "Transfer-Encoding: chunked\r\n",
        "lying": f"Content-Length: {len(head)}\r\n",
    }[framing]
    request_head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {proxy.key}\r\n"
        f"Content-Type: {content_type}\r\n{length}\r\n"
    )

    def body() -> Iterator[bytes]:
        yield b"%x\r\n%s\r\n" % (len(head), head) if chunked else head
        yield from _endless(b"x" * 16384, chunked=chunked)

    answer, sent = _raw(proxy, request_head, body())
    _raw_error(answer, expected, "request_too_large" if expected == 413 else None)
    assert sent < HUNDRED_MB // 2, "answered long before the body was all sent"
    assert fake.count(path) == 0
    assert proxy.client().models.list().data  # and it still serves


def test_uploads_have_their_own_limit(make_proxy: Callable[..., Proxy], fake: FakeOpenAI) -> None:
    """An upload may be larger than a JSON body, up to ``server.max_upload_bytes`` (row 15's
    limits are per route: upload parts 64 MB)."""
    proxy = make_proxy(server={"max_body_bytes": LIMIT, "max_upload_bytes": LIMIT * 4})
    image = PNG * 8  # twice the JSON limit, half the upload limit
    edited = proxy.client().images.edit(
        image=("a.png", image, "image/png"), prompt="a hat", model="dall-e-2"
    )
    assert edited.data
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().images.edit(
            image=("a.png", image * 3, "image/png"), prompt="a hat", model="dall-e-2"
        )
    assert caught.value.status_code == 413
    assert fake.count(EDITS) == 1


def test_files_and_upload_parts_have_limits_of_their_own(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 15: a file may be as large as ``server.max_file_bytes`` (512 MB), an upload's part
    as ``server.max_upload_part_bytes`` (64 MB), whatever the other uploads' limit."""
    server = {
        "max_body_bytes": LIMIT,
        "max_upload_bytes": LIMIT,
        "max_file_bytes": LIMIT * 8,
        "max_upload_part_bytes": LIMIT * 2,
    }
    client = make_proxy(server=server).client()
    data = b"x" * (LIMIT * 4)
    assert client.files.create(file=("a.txt", data), purpose="user_data").bytes == len(data)
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("a.txt", data * 3), purpose="user_data")
    assert caught.value.status_code == 413
    upload = client.uploads.create(
        bytes=LIMIT * 4, filename="a.txt", mime_type="text/plain", purpose="assistants"
    )
    assert client.uploads.parts.create(upload.id, data=b"x" * LIMIT).id
    with pytest.raises(openai.APIStatusError) as caught:
        client.uploads.parts.create(upload.id, data=data)
    assert caught.value.status_code == 413
    assert fake.count("/v1/files") == 1 and fake.count(f"/v1/uploads/{upload.id}/parts") == 1


def test_text_fields_are_held_to_the_json_limit(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Text fields are kept in memory to police them: together they get a JSON body's limit."""
    proxy = make_proxy(server={"max_body_bytes": LIMIT, "max_upload_bytes": LIMIT * 4})
    parts = _file_first(("model", "dall-e-2"), ("prompt", "x" * (LIMIT * 2)))
    _error(proxy.http().post(EDITS, files=parts, headers=_auth(proxy)), 413, "request_too_large")
    assert fake.count(EDITS) == 0


# ---------------------------------------------------------------- row 16

_BOUNDARY_BODY = (
    b"--right\r\n"
    b'Content-Disposition: form-data; name="model"\r\n\r\ndall-e-2\r\n'
    b"--right\r\n"
    b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n"
    b"--right--\r\n"
)


_MULTIPART = "multipart/form-data; boundary=right"


@pytest.mark.parametrize(
    ("path", "content_type", "body", "code"),
    [
        (CHAT, JSON, b'{"model": "gpt-4o-mini", "messages": [', "invalid_json"),
        (CHAT, JSON, b"[]", "invalid_json"),
        (CHAT, "text/plain", b'{"model": "gpt-4o-mini", "messages": []}', "invalid_content_type"),
        (EDITS, "text/plain", _BOUNDARY_BODY, "invalid_content_type"),
        (EDITS, "multipart/form-data; boundary=wrong", _BOUNDARY_BODY, "invalid_multipart"),
        (EDITS, "multipart/form-data", _BOUNDARY_BODY, "invalid_multipart"),
        (EDITS, _MULTIPART, _BOUNDARY_BODY[:-12], "invalid_multipart"),
        (EDITS, _MULTIPART, _BOUNDARY_BODY.replace(b"--right--", b""), "invalid_multipart"),
        (EDITS, _MULTIPART, b"", "invalid_multipart"),
        (EDITS, _MULTIPART, b"garbage\r\n" + _BOUNDARY_BODY, "invalid_multipart"),
        (EDITS, "multipart/form-data; boundary=" + "b" * 300, _BOUNDARY_BODY, "invalid_multipart"),
        (
            EDITS,
            _MULTIPART,
            _BOUNDARY_BODY.replace(b'form-data; name="model"', b"form-data"),
            "invalid_multipart",
        ),
        (
            EDITS,
            _MULTIPART,
            _BOUNDARY_BODY.replace(b"dall-e-2", b"dall-e-\xff"),
            "invalid_multipart",
        ),
        (
            EDITS,
            _MULTIPART,
            _BOUNDARY_BODY.replace(
                b'name="model"\r\n', b'name="model"\r\nContent-Transfer-Encoding: base64\r\n'
            ),
            "invalid_multipart",
        ),
    ],
    ids=[
        "json-malformed",
        "json-not-an-object",
        "json-as-text-plain",
        "form-as-text-plain",
        "boundary-mismatch",
        "no-boundary",
        "truncated",
        "unterminated",
        "empty",
        "preamble",
        "boundary-too-long",
        "nameless-part",
        "field-not-utf8",
        "field-transfer-encoded",  # the upstream might decode it, the proxy would not
    ],
)
def test_row_16_malformed_bodies_are_400_and_not_forwarded(
    proxy: Proxy, fake: FakeOpenAI, path: str, content_type: str, body: bytes, code: str
) -> None:
    """Row 16: malformed JSON, a wrong content type, a bad multipart boundary or form: 400
    ``invalid_request_error``, and no upstream call."""
    response = proxy.http().post(
        path, content=body, headers={**_auth(proxy), "Content-Type": content_type}
    )
    error = _error(response, 400, code)
    assert error["type"] == "invalid_request_error"
    assert fake.requests == []
