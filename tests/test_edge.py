"""The edge in front of the app: refusals in OpenAI's envelope, the in-flight gate, and the
per-address connection count."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from chatgpt_proxy.edge import ConnectionCounts, Edge, InFlightGate
from chatgpt_proxy.errors import Overloaded
from chatgpt_proxy.ids import UniqueIds
from chatgpt_proxy.settings import ServerSettings
from harness import Proxy


async def _ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="served")


def _edge(**server: object) -> Edge:
    return Edge(ServerSettings.model_validate(server), _ok, UniqueIds("req_", digits=6))


def _serve(edge: Edge, path: str = "/v1/models", **headers: str) -> web.Response:
    async def run() -> web.StreamResponse:
        return await edge.serve(make_mocked_request("POST", path, headers=headers))

    response = asyncio.run(run())
    assert isinstance(response, web.Response)
    return response


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/v1/%2e%2e/admin/keys", {}, 404, "unknown_url"),
        ("/v1/models", {"Expect": "200-ok"}, 417, "expectation_failed"),
        ("/v1/models", {"Content-Encoding": "br"}, 415, "unsupported_content_encoding"),
    ],
    ids=["dot-segment", "expect", "encoding"],
)
def test_what_cannot_be_served_is_refused_in_the_envelope_before_the_app(
    path: str, headers: dict[str, str], status: int, code: str
) -> None:
    response = _serve(_edge(), path, **headers)
    assert response.status == status
    assert isinstance(response.body, bytes)
    error = orjson.loads(response.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert response.headers["x-request-id"].startswith("req_")


def test_a_request_that_passes_reaches_the_app() -> None:
    response = _serve(_edge(), "/v1/models", **{"Content-Encoding": "gzip"})
    assert response.status == 200 and response.text == "served"


def test_the_gate_admits_its_limit_queues_its_pending_and_refuses_the_rest() -> None:
    async def scenario() -> list[bool]:
        gate = InFlightGate(limit=1, pending=1, wait=5.0)
        assert await gate.enter()
        queued = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)  # it now waits in the queue
        refused = await gate.enter()  # the queue is full: refused at once
        gate.leave()  # the slot goes to the queued one
        return [refused, await queued]

    assert asyncio.run(scenario()) == [False, True]


def test_a_freed_slot_goes_to_the_oldest_waiter_not_a_newcomer() -> None:
    async def scenario() -> list[bool]:
        gate = InFlightGate(limit=1, pending=2, wait=5.0)
        assert gate.try_enter()
        queued = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)  # it now waits in the queue
        gate.leave()  # the slot is the queued one's, before it even runs again
        newcomer = gate.try_enter()
        admitted = await queued
        gate.leave()
        return [newcomer, admitted, gate.try_enter()]  # then free for whoever comes

    assert asyncio.run(scenario()) == [False, True, True]


def test_a_wait_that_timed_out_leaves_no_slot_taken() -> None:
    async def scenario() -> bool:
        gate = InFlightGate(limit=1, pending=5, wait=0.01)
        assert await gate.enter()
        assert not await gate.enter()  # timed out in the queue
        gate.leave()
        return gate.try_enter()

    assert asyncio.run(scenario()) is True


def test_a_wait_in_the_queue_is_bounded() -> None:
    async def scenario() -> bool:
        gate = InFlightGate(limit=1, pending=5, wait=0.01)
        await gate.enter()
        return await gate.enter()

    assert asyncio.run(scenario()) is False


def test_connections_are_counted_per_address_and_forgotten_at_zero() -> None:
    counts = ConnectionCounts(limit=2)
    assert counts.admit("10.0.0.1") and counts.admit("10.0.0.1")
    assert not counts.admit("10.0.0.1")
    assert counts.admit("10.0.0.2")
    counts.release("10.0.0.1")
    assert counts.admit("10.0.0.1")
    unlimited = ConnectionCounts(limit=0)
    assert all(unlimited.admit("10.0.0.3") for _ in range(100))


def test_a_raw_answer_is_a_whole_http_1_1_response_that_closes() -> None:
    raw = _edge().raw_response(Overloaded("The server is overloaded. Retry shortly."))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert "Connection: close" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert orjson.loads(body)["error"]["code"] == "server_overloaded"


def test_past_its_streams_and_its_queue_the_proxy_refuses_at_once_with_retry_after(
    make_proxy: Callable[..., Proxy],
) -> None:
    """Streams fill every slot and the queue has no room: the next request is a 503 with
    retry-after straight away. (A queued request would wait an hour here: the SDK's own
    timeout would fail the test long before.)"""
    proxy = make_proxy(
        server={"max_requests_in_flight": 2, "max_pending_requests": 0, "pending_timeout": 3600}
    )
    client = proxy.client()
    slow = [{"role": "user", "content": "held [[fault:long:400]][[fault:slow:0.2]]"}]
    held = [
        client.chat.completions.create(model="gpt-4o-mini", messages=slow, stream=True)
        for _ in range(2)
    ]
    try:
        for stream in held:
            next(iter(stream))
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "one more"}]
            )
        assert refused.value.status_code == 503
        assert refused.value.code == "server_overloaded"
        assert refused.value.response.headers["retry-after"] == "1"
    finally:
        for stream in held:
            stream.close()
