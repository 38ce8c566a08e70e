"""The fake transport keeps the promises of the real one: the limits it is given, the errors of
the tree, a close that ends a pending read. (The real one: ``test_transport.py``.)"""

from __future__ import annotations

import asyncio

import pytest

from chatgpt_proxy.errors import BrokenBody, ConnectFailed, TransportTimeout
from chatgpt_proxy.upstream.fake_transport import SSE, Answer, FakeTransport, Pause
from chatgpt_proxy.upstream.transport import SocketRequest, Timeouts, TransportRequest


def _request(timeouts: Timeouts = Timeouts()) -> TransportRequest:  # noqa: B008 (frozen)
    return TransportRequest("GET", "http://u.invalid/v1/models", {}, timeouts=timeouts)


def test_steps_answer_in_order_then_the_script() -> None:
    async def scenario() -> list[int]:
        fake = FakeTransport(Answer(429), script=lambda request: Answer(200))
        statuses = [(await fake.send(_request())).status for _ in range(3)]
        assert len(fake.requests) == 3
        return statuses

    assert asyncio.run(scenario()) == [429, 200, 200]


def test_an_unscripted_request_fails_the_test() -> None:
    with pytest.raises(AssertionError, match="no answer scripted"):
        asyncio.run(FakeTransport().send(_request()))


def test_a_scripted_error_is_raised_instead_of_an_answer() -> None:
    with pytest.raises(ConnectFailed):
        asyncio.run(FakeTransport(ConnectFailed("ClientConnectorError")).send(_request()))


def test_the_body_comes_piece_by_piece_and_ends_empty() -> None:
    async def scenario() -> list[bytes]:
        response = await FakeTransport(Answer(200, SSE, [b"a", b"", b"b"])).send(_request())
        assert response.content_type == "text/event-stream"
        return [await response.read_chunk() for _ in range(3)]

    assert asyncio.run(scenario()) == [b"a", b"b", b""]


def test_read_stops_at_its_limit() -> None:
    async def scenario() -> bytes:
        response = await FakeTransport(Answer(200, body=[b"abc", b"def"])).send(_request())
        return await response.read(4)

    assert asyncio.run(scenario()) == b"abcd"


def test_headers_later_than_first_byte_are_a_timeout() -> None:
    fake = FakeTransport(Answer(200, wait=3600.0))
    with pytest.raises(TransportTimeout):
        asyncio.run(fake.send(_request(Timeouts(first_byte=0.01))))


def test_a_pause_longer_than_idle_is_a_timeout() -> None:
    async def scenario() -> None:
        fake = FakeTransport(Answer(200, body=[Pause(3600.0), b"late"]))
        response = await fake.send(_request(Timeouts(first_byte=0.01, idle=0.01)))
        await response.read_chunk()

    with pytest.raises(TransportTimeout):
        asyncio.run(scenario())


def test_a_close_ends_a_pending_read_as_a_dropped_connection() -> None:
    async def scenario() -> None:
        response = await FakeTransport(Answer(200, body=[Pause(3600.0)])).send(_request())
        reading = asyncio.create_task(response.read_chunk())
        await asyncio.sleep(0)
        response.close()
        await reading

    with pytest.raises(BrokenBody):
        asyncio.run(scenario())


def test_the_fake_opens_no_websockets() -> None:
    request = SocketRequest("ws://u.invalid/v1/realtime", {})
    with pytest.raises(ConnectFailed, match="no WebSockets"):
        asyncio.run(FakeTransport().connect_socket(request))
