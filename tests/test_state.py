"""The wrapper every route is served in: request ids, errors as OpenAI's envelope, metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import orjson
import pytest
from aiohttp import web

from chatgpt_proxy.app import create_app
from chatgpt_proxy.errors import ModelNotFound
from chatgpt_proxy.exchange import context
from chatgpt_proxy.server import ProxyRunner
from chatgpt_proxy.state import STATE, served
from fake_openai import FakeOpenAI
from harness import Recorder, RecordingStream, proxy_settings
from servers import BackgroundLoop


async def _refuses(request: web.Request) -> web.StreamResponse:
    context(request).endpoint = "tests.refuses"
    raise ModelNotFound("No upstream serves the model `nope`.", param="model")


async def _breaks(request: web.Request) -> web.StreamResponse:
    raise RuntimeError("a bug")


@pytest.fixture
def served_app(
    background_loop: BackgroundLoop, fake: FakeOpenAI, tmp_path: Path, recorder: Recorder
) -> Iterator[tuple[str, web.Application]]:
    settings = proxy_settings(fake, tmp_path)
    app = background_loop.run(create_app(settings, log_stream=RecordingStream(recorder)))
    app.router.add_post("/tests/refuses", served(_refuses))
    app.router.add_post("/tests/breaks", served(_breaks))
    url = background_loop.start_app(app, runner_class=ProxyRunner)
    yield url, app
    background_loop.stop_app(url)


def test_a_refusal_is_openais_envelope_with_a_request_id(
    served_app: tuple[str, web.Application],
) -> None:
    url, app = served_app
    with httpx2.Client(base_url=url, timeout=10) as client:
        response = client.post("/tests/refuses")
    assert response.status_code == 404
    assert response.headers["x-request-id"].startswith("req_")
    assert orjson.loads(response.content)["error"]["code"] == "model_not_found"
    assert 'endpoint="tests.refuses"' in app[STATE].metrics.render().decode()


def test_an_unexpected_error_is_a_500_that_tells_nothing_of_it(
    served_app: tuple[str, web.Application], recorder: Recorder
) -> None:
    url, _ = served_app
    with httpx2.Client(base_url=url, timeout=10) as client:
        response = client.post("/tests/breaks")
    assert response.status_code == 500
    error = orjson.loads(response.content)["error"]
    assert "a bug" not in error["message"]
    assert any("unexpected error in POST /tests/breaks" in line for line in recorder.log_lines)
