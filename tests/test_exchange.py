"""The pipeline of stages: order, answers, work after the rest, a stage of one's own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from chatgpt_proxy.auth import ModelPolicy
from chatgpt_proxy.errors import ModelNotAllowed, ProxyError, UpstreamError
from chatgpt_proxy.exchange import Exchange, Next, Pipeline, RequestContext
from chatgpt_proxy.keystore import ClientKey, KeyPolicy


def _exchange() -> Exchange:
    request = make_mocked_request("POST", "/v1/chat/completions")
    return Exchange(request, RequestContext("req_1", 0.0), "chat.completions")


class Note:
    """A stage that notes its name on the way in and on the way out."""

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        self.seen.append(f"{self.name} in")
        try:
            return await forward(exchange)
        finally:
            self.seen.append(f"{self.name} out")


class Answer:
    def __init__(self, text: str) -> None:
        self.text = text

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        return web.Response(text=self.text)


class Fail:
    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        raise UpstreamError("broke")


def test_stages_run_in_order_and_the_first_answer_is_the_answer() -> None:
    seen: list[str] = []
    pipeline = Pipeline([Note("a", seen), Note("b", seen), Answer("first"), Answer("second")])
    response = asyncio.run(pipeline(_exchange()))
    assert isinstance(response, web.Response) and response.text == "first"
    assert seen == ["a in", "b in", "b out", "a out"]


def test_work_after_the_rest_runs_however_it_ends() -> None:
    seen: list[str] = []
    pipeline = Pipeline([Note("a", seen), Note("b", seen), Fail()])
    with pytest.raises(UpstreamError):
        asyncio.run(pipeline(_exchange()))
    assert seen == ["a in", "b in", "b out", "a out"]


def test_a_pipeline_where_no_stage_answers_is_an_error() -> None:
    with pytest.raises(ProxyError):
        asyncio.run(Pipeline([Note("a", [])])(_exchange()))


def _key(models: tuple[str, ...]) -> ClientKey:
    now = datetime.now(UTC)
    return ClientKey("key_1", "k", "pk-abc", "hash", now, now, None, None, KeyPolicy(models=models))


class PinModel:
    """A third party's stage: every request uses one model, whatever it asked for."""

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        exchange.model = "gpt-4o-mini"
        return await forward(exchange)


@pytest.mark.parametrize(("allowed", "passes"), [(("gpt-4o-mini",), True), (("gpt-4o",), False)])
def test_a_stage_of_ones_own_runs_beside_the_built_in_ones(
    allowed: tuple[str, ...], passes: bool
) -> None:
    exchange = _exchange()
    exchange.key = _key(allowed)
    exchange.model = "gpt-4o"
    pipeline = Pipeline([PinModel(), ModelPolicy(), Answer("ok")])
    if passes:
        asyncio.run(pipeline(exchange))
        assert exchange.context.model == "gpt-4o-mini"
    else:
        with pytest.raises(ModelNotAllowed):
            asyncio.run(pipeline(exchange))
