"""The aiohttp transport over real sockets: answers read as they come, and every failure of the
network translated into the project's ``TransportError`` tree, chained to aiohttp's own."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from chatgpt_proxy.errors import (
    BrokenBody,
    ConnectFailed,
    SocketRefused,
    TransportError,
    TransportTimeout,
)
from chatgpt_proxy.upstream.transport import (
    AiohttpTransport,
    SocketFrame,
    SocketRequest,
    Timeouts,
    TransportRequest,
    sendable_close_code,
)

Scenario = Callable[[AiohttpTransport, str], Awaitable[Any]]
LONG = 30.0  # an upstream that would stall this long is cut off by the limits long before


async def _json(request: web.Request) -> web.StreamResponse:
    return web.json_response({"echo": request.headers.get("Authorization")})


async def _pieces(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for n in range(3):
        await response.write(f"data: {n}\n\n".encode())
    await response.write_eof()
    return response


async def _slow_headers(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(LONG)
    return web.json_response({})


async def _silent_after_one(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: 1\n\n")
    await asyncio.sleep(LONG)
    return response


async def _reset_mid_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b'{"partial": ')
    assert request.transport is not None
    request.transport.close()  # fewer bytes than announced, then the connection ends
    return response


async def _redirect(request: web.Request) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": "/json"})


async def _socket(request: web.Request) -> web.StreamResponse:
    """Echoes each frame back (pings too, as pongs); closes with 4002 when told to."""
    if request.headers.get("Authorization") != "Bearer sk-x":
        return web.json_response({"error": {"message": "no"}}, status=401)
    ws = web.WebSocketResponse(protocols=("realtime",), autoping=False)
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT and message.data == "close please":
            await ws.close(code=4002)
        elif message.type == web.WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == web.WSMsgType.BINARY:
            await ws.send_bytes(message.data)
        elif message.type == web.WSMsgType.PING:
            await ws.pong(message.data)
            await ws.ping(b"yours")
    return ws


def _serve(scenario: Scenario) -> Any:
    async def main() -> Any:
        app = web.Application()
        for path, handler in [
            ("/json", _json),
            ("/pieces", _pieces),
            ("/slow-headers", _slow_headers),
            ("/silent", _silent_after_one),
            ("/reset", _reset_mid_body),
            ("/redirect", _redirect),
            ("/socket", _socket),
        ]:
            app.router.add_get(path, handler)
        server = TestServer(app)
        await server.start_server()
        transport = AiohttpTransport(max_connections=4)
        try:
            return await scenario(transport, str(server.make_url("")))
        finally:
            await transport.close()
            await server.close()

    return asyncio.run(main())


PATIENT = Timeouts(5.0, 5.0, 5.0)


def _get(url: str, timeouts: Timeouts = PATIENT) -> TransportRequest:
    return TransportRequest("GET", url, {"Authorization": "Bearer sk-x"}, timeouts=timeouts)


def test_an_answer_exposes_status_headers_and_body() -> None:
    async def scenario(transport: AiohttpTransport, base: str) -> None:
        response = await transport.send(_get(base + "/json"))
        assert response.status == 200 and response.content_type == "application/json"
        assert response.content_length == len(b'{"echo": "Bearer sk-x"}')
        assert response.headers["Content-Type"].startswith("application/json")
        assert await response.read(1000) == b'{"echo": "Bearer sk-x"}'
        response.release()

    _serve(scenario)


def test_a_stream_is_read_chunk_by_chunk_to_an_empty_end() -> None:
    async def scenario(transport: AiohttpTransport, base: str) -> bytes:
        response = await transport.send(_get(base + "/pieces", Timeouts(5.0, 5.0)))
        body = b""
        while chunk := await response.read_chunk():
            body += chunk
        response.release()
        return body

    assert _serve(scenario) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_read_stops_at_its_limit() -> None:
    async def scenario(transport: AiohttpTransport, base: str) -> bytes:
        response = await transport.send(_get(base + "/pieces"))
        try:
            return await response.read(12)
        finally:
            response.close()

    assert _serve(scenario) == b"data: 0\n\ndat"


def test_a_redirect_is_an_answer_never_followed() -> None:
    async def scenario(transport: AiohttpTransport, base: str) -> int:
        response = await transport.send(_get(base + "/redirect"))
        response.release()
        return response.status

    assert _serve(scenario) == 302


def _failure(scenario: Scenario) -> TransportError:
    async def caught(transport: AiohttpTransport, base: str) -> TransportError:
        with pytest.raises(TransportError) as info:
            await scenario(transport, base)
        return info.value

    failure: TransportError = _serve(caught)
    return failure


def test_a_refused_connection_is_connect_failed_chained_to_aiohttps_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once closed

    async def scenario(transport: AiohttpTransport, base: str) -> None:
        await transport.send(_get(f"http://127.0.0.1:{port}/json"))

    failure = _failure(scenario)
    assert isinstance(failure, ConnectFailed)
    assert isinstance(failure.__cause__, aiohttp.ClientError)
    assert str(failure) == type(failure.__cause__).__name__


@pytest.mark.parametrize("timeouts", [Timeouts(5.0, 0.2, 0.2), Timeouts(5.0, 0.2)])
def test_headers_late_are_a_transport_timeout(timeouts: Timeouts) -> None:
    async def scenario(transport: AiohttpTransport, base: str) -> None:
        await transport.send(_get(base + "/slow-headers", timeouts))

    failure = _failure(scenario)
    assert isinstance(failure, TransportTimeout)
    assert isinstance(failure.__cause__, TimeoutError)


def test_silence_past_the_idle_limit_is_a_transport_timeout() -> None:
    async def scenario(transport: AiohttpTransport, base: str) -> None:
        response = await transport.send(_get(base + "/silent", Timeouts(5.0, 0.2, 0.2)))
        try:
            while await response.read_chunk():
                pass
        finally:
            response.close()

    assert isinstance(_failure(scenario), TransportTimeout)


def test_a_body_cut_short_is_a_broken_body() -> None:
    async def scenario(transport: AiohttpTransport, base: str) -> None:
        response = await transport.send(_get(base + "/reset"))
        try:
            await response.read(10_000)
        finally:
            response.close()

    failure = _failure(scenario)
    assert isinstance(failure, BrokenBody)
    assert isinstance(failure.__cause__, aiohttp.ClientError | OSError)


def test_close_from_another_task_ends_a_pending_read() -> None:
    """What the idle watch and the drain rely on: ``close()`` ends the relay's read."""

    async def scenario(transport: AiohttpTransport, base: str) -> bytes | TransportError:
        response = await transport.send(_get(base + "/silent", Timeouts(5.0, 5.0)))
        assert await response.read_chunk() == b"data: 1\n\n"
        reading = asyncio.create_task(response.read_chunk())
        await asyncio.sleep(0)
        response.close()
        try:
            return await reading
        except TransportError as failure:
            return failure

    ended = _serve(scenario)
    assert ended == b"" or isinstance(ended, BrokenBody)


def _socket_request(base: str, key: str = "sk-x") -> SocketRequest:
    url = base.replace("http://", "ws://") + "/socket"
    return SocketRequest(url, {"Authorization": f"Bearer {key}"}, ("realtime",), PATIENT)


def test_a_socket_carries_every_kind_of_frame_and_the_close_code() -> None:
    async def scenario(transport: AiohttpTransport, base: str) -> list[SocketFrame]:
        socket = await transport.connect_socket(_socket_request(base))
        assert socket.protocol == "realtime"
        frames = []
        for frame in (SocketFrame("text", "hi"), SocketFrame("binary", b"\x00")):
            await socket.send(frame)
            frames.append(await socket.receive())
        await socket.send(SocketFrame("ping", b"p"))
        frames += [await socket.receive(), await socket.receive()]
        await socket.send(SocketFrame("text", "close please"))
        frames.append(await socket.receive())
        await socket.close()
        return frames

    assert _serve(scenario) == [
        SocketFrame("text", "hi"),
        SocketFrame("binary", b"\x00"),
        SocketFrame("pong", b"p"),
        SocketFrame("ping", b"yours"),
        SocketFrame("close", code=4002),
    ]


def test_a_refused_upgrade_is_socket_refused_with_its_status() -> None:
    async def scenario(transport: AiohttpTransport, base: str) -> SocketRefused:
        with pytest.raises(SocketRefused) as caught:
            await transport.connect_socket(_socket_request(base, key="sk-wrong"))
        return caught.value

    refused = _serve(scenario)
    assert refused.status == 401
    assert isinstance(refused.__cause__, aiohttp.WSServerHandshakeError)
    assert "sk-wrong" not in str(refused)


def test_a_socket_to_nowhere_is_connect_failed() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]

    async def main() -> None:
        transport = AiohttpTransport()
        try:
            with pytest.raises(ConnectFailed):
                await transport.connect_socket(_socket_request(f"http://127.0.0.1:{port}"))
        finally:
            await transport.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("code", "sent"), [(None, 1000), (1005, 1000), (1006, 1000), (4001, 4001), (99, 1000)]
)
def test_only_sendable_close_codes_are_passed_on(code: int | None, sent: int) -> None:
    assert sendable_close_code(code) == sent


def test_nothing_above_the_transport_talks_to_aiohttps_client() -> None:
    """The one boundary: above it, no module imports aiohttp's client side or catches its
    errors (the server side, ``aiohttp.web``, is another matter)."""
    import ast
    from pathlib import Path

    import chatgpt_proxy

    root = Path(chatgpt_proxy.__file__).parent
    above = [
        "upstream/client.py",
        "upstream/idle.py",
        "upstream/prober.py",
        "streaming.py",
        "catalog.py",
        "drain.py",
        "moderation/openai_engine.py",
        "upstream/sockets.py",
        "api/realtime.py",
    ]
    for name in above:
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(alias.name != "aiohttp" for alias in node.names), name
            if isinstance(node, ast.ImportFrom) and node.module == "aiohttp":
                assert all(alias.name == "web" for alias in node.names), name


@pytest.mark.parametrize(
    ("limits", "seconds", "expected"),
    [
        (Timeouts(5.0, 600.0, 600.0), 30.0, Timeouts(5.0, 30.0, 30.0)),
        (Timeouts(5.0, 60.0), 30.0, Timeouts(5.0, 30.0, None)),  # a watched stream stays so
        (Timeouts(5.0, 60.0), 90.0, Timeouts(5.0, 60.0, None)),
        (Timeouts(5.0), 90.0, Timeouts(5.0, 90.0, None)),
    ],
)
def test_limits_cut_to_a_deadline(limits: Timeouts, seconds: float, expected: Timeouts) -> None:
    assert limits.within(seconds) == expected


def test_short_calls_have_connections_of_their_own_when_streams_hold_every_other() -> None:
    """Streams holding all of the lasting lane's connections leave short calls theirs."""

    async def scenario(transport: AiohttpTransport, base: str) -> bytes:
        held = []
        for _ in range(4):  # the lane's whole cap (max_connections=4), each stream left open
            request = _get(base + "/silent", Timeouts(5.0, 5.0))
            request.lasting = True
            held.append(await transport.send(request))
        try:
            response = await transport.send(_get(base + "/json"))
            try:
                return await response.read(1000)
            finally:
                response.release()
        finally:
            for stream in held:
                stream.close()

    assert _serve(scenario) == b'{"echo": "Bearer sk-x"}'
