"""``read_json`` on its own: a tiny app that reads a JSON body within a limit of 2 KiB."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import orjson
import pytest
from aiohttp import web

from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.requestbody import read_json
from servers import BackgroundLoop

LIMIT = 2048


async def _handle(request: web.Request) -> web.Response:
    try:
        raw, document = await read_json(request, LIMIT)
    except ProxyError as exc:
        return web.Response(status=exc.status, body=exc.body(), content_type="application/json")
    return web.json_response({"raw": raw.decode(), "keys": sorted(document)})


async def _handle_then_look(request: web.Request) -> web.Response:
    """Reads within LIMIT, then asks the request for its body again."""
    try:
        await read_json(request, LIMIT)
    except ProxyError as exc:
        return web.Response(status=exc.status, body=exc.body(), content_type="application/json")
    return web.json_response({"still_on_the_request": len(await request.read())})


@pytest.fixture
def url(background_loop: BackgroundLoop) -> Iterator[str]:
    # client_max_size as the app sets it: aiohttp stops reading at the limit.
    app = web.Application(client_max_size=LIMIT)
    app.router.add_post("/", _handle)
    app.router.add_post("/look", _handle_then_look)
    served = background_loop.start_app(app)
    yield served
    background_loop.stop_app(served)


def _post(url: str, content: bytes | Iterator[bytes], content_type: str) -> httpx2.Response:
    with httpx2.Client(timeout=10) as client:
        return client.post(url, content=content, headers={"Content-Type": content_type})


def _code(response: httpx2.Response) -> tuple[int, str]:
    return response.status_code, orjson.loads(response.content)["error"]["code"]


def test_the_body_is_kept_byte_for_byte(url: str) -> None:
    raw = b'{ "b" : 1,\n "a": "\\u00e9" }'
    answer = _post(url, raw, "application/json").json()
    assert answer == {"raw": raw.decode(), "keys": ["a", "b"]}


def test_a_declared_length_over_the_limit_is_413(url: str) -> None:
    response = _post(url, b'{"a": "' + b"x" * LIMIT + b'"}', "application/json")
    assert _code(response) == (413, "request_too_large")


def test_a_chunked_body_over_the_limit_is_413(url: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"a": "'
        for _ in range(LIMIT // 256 + 2):
            yield b"x" * 256
        yield b'"}'

    assert _code(_post(url, chunks(), "application/json")) == (413, "request_too_large")


@pytest.mark.parametrize(
    ("content", "content_type", "code"),
    [
        (b'{"a": ', "application/json", "invalid_json"),
        (b"[1, 2]", "application/json", "invalid_json"),
        (b'{"a": 1}', "text/plain", "invalid_content_type"),
    ],
)
def test_not_a_json_object_is_400(url: str, content: bytes, content_type: str, code: str) -> None:
    assert _code(_post(url, content, content_type)) == (400, code)


def test_the_request_does_not_keep_a_copy_of_the_body(url: str) -> None:
    # A stream's request lives as long as its answer: the body must be the proxy's to let go.
    answer = _post(url + "/look", b'{"a": "' + b"x" * 1000 + b'"}', "application/json").json()
    assert answer == {"still_on_the_request": 0}


def test_the_limit_holds_where_it_is_below_the_apps(background_loop: BackgroundLoop) -> None:
    app = web.Application(client_max_size=16 * LIMIT)  # as the admin API's 64 KiB bodies
    app.router.add_post("/", _handle_then_look)
    served = background_loop.start_app(app)
    try:
        chunked = iter([b'{"a": "', b"x" * LIMIT, b'"}'])
        assert _code(_post(served, chunked, "application/json")) == (413, "request_too_large")
    finally:
        background_loop.stop_app(served)
