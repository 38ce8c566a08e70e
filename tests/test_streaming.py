"""The relay, driven through the fake transport: upstream answers scripted piece by piece, the
client's end a mocked request. No socket; the same behaviour over real sockets is in
``tests/api/test_api_stream_failures.py`` and ``tests/reliability/test_rel_streams.py``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from unittest import mock

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_coro, make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.drain import Drain
from chatgpt_proxy.errors import BrokenBody
from chatgpt_proxy.exchange import CLIENT_CLOSED, CONTEXT, Outcome, RequestContext
from chatgpt_proxy.redaction import Redactor
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.streaming import StreamStyle, relay
from chatgpt_proxy.token_usage import Usage
from chatgpt_proxy.upstream.client import Outbound, UpstreamClient
from chatgpt_proxy.upstream.fake_transport import (
    JSON,
    SSE,
    Answer,
    FakeResponse,
    FakeTransport,
    Pause,
    Piece,
)
from chatgpt_proxy.upstream.idle import IdleWatch
from chatgpt_proxy.upstream.router import Router

SECRET = "sk-relay-test-0001"
PLAIN = StreamStyle()


@dataclass
class Relayed:
    status: int  # what the client was told
    body: bytes  # every byte the client received
    outcome: Outcome
    upstream: FakeResponse
    closed_client: bool  # the proxy cut the client's connection (a body it cannot finish)
    failures: int  # the key's failures, as the pool counts them


def _writer(fail: bool = False) -> mock.Mock:
    writer = mock.Mock()
    writer.write_headers = make_mocked_coro(None)
    error = ConnectionResetError("the client left") if fail else None
    writer.write = make_mocked_coro(None) if not fail else make_mocked_coro(raise_exception=error)
    writer.write_eof = make_mocked_coro(None)
    writer.drain = make_mocked_coro(None)
    return writer


async def _relay(
    answer: Answer,
    *,
    stream: bool = True,
    style: StreamStyle = PLAIN,
    timeouts: dict[str, Any] | None = None,
    idle: IdleWatch | None = None,
    drain: Drain | None = None,
    client_leaves: bool = False,
) -> Relayed:
    settings = Settings.model_validate(
        {
            "upstreams": [{"name": "openai", "base_url": "http://u.invalid/v1", "keys": [SECRET]}],
            "timeouts": timeouts or {},
        }
    )
    upstream = Router.from_settings(settings.upstreams, settings.pool).upstreams[0]
    fake = FakeTransport(answer)
    client = UpstreamClient(fake, settings.timeouts, settings.retries, idle=idle)
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    outbound = Outbound("POST", "/chat/completions", "", headers, b"{}", stream=stream)
    reply = await client.send(upstream, outbound)
    writer = _writer(fail=client_leaves)
    request = make_mocked_request("POST", "/v1/chat/completions", writer=writer)
    request[CONTEXT] = RequestContext("req_test", time.monotonic())
    outcome = Outcome(reply.response.status)
    try:
        response = await relay(
            request, reply, Redactor([SECRET]), outcome, style=style, drain=drain
        )
    except ConnectionResetError:
        response = None
    if isinstance(response, web.Response):  # answered whole, in one write by the server
        body = response.body if isinstance(response.body, bytes) else b""
    else:
        sent = [*writer.write.call_args_list, *writer.write_eof.call_args_list]
        body = b"".join(bytes(call.args[0]) for call in sent if call.args)
    assert request.transport is not None
    return Relayed(
        status=outcome.status,
        body=body,
        outcome=outcome,
        upstream=fake.responses[0],
        closed_client=bool(request.transport.close.called),
        failures=upstream.pool.keys()[0].failures,
    )


def _event(document: object, end: bytes = b"\n") -> bytes:
    return b"data: " + orjson.dumps(document) + end + end


def _chunk(n: int, end: bytes = b"\n") -> bytes:
    delta = {"id": "c", "choices": [{"index": 0, "delta": {"content": f"w{n}"}}], "usage": None}
    return _event(delta, end)


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
USAGE_CHUNK = _event({"id": "c", "choices": [], "usage": USAGE})
DONE = b"data: [DONE]\n\n"


def _split(stream: bytes, size: int) -> list[Piece]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def _errors(body: bytes) -> list[dict[str, Any]]:
    found = []
    for line in body.splitlines():
        if line.startswith(b"data: {") and b'"error"' in line:
            found.append(orjson.loads(line[6:])["error"])
    return found


def test_a_stream_is_relayed_byte_for_byte_whatever_its_line_ends() -> None:
    stream = b"".join(
        [_chunk(0, b"\r\n"), _chunk(1, b"\r"), _chunk(2), _event({"usage": USAGE}, b"\r\n")]
    )
    stream += b"data: [DONE]\r\n\r\n"
    # Pieces cut anywhere: inside a CRLF, inside a line, between events.
    relayed = asyncio.run(_relay(Answer(200, SSE, _split(stream, 7))))
    assert relayed.body == stream
    assert relayed.outcome.complete and relayed.status == 200
    assert relayed.outcome.usage == Usage(5, 2, 7)
    assert relayed.upstream.released and not relayed.upstream.closed


def test_a_stream_cut_mid_event_ends_with_an_error_event_and_no_done() -> None:
    pieces: list[Piece] = [_chunk(0), b'data: {"id":"partial-cut', BrokenBody("ClientPayloadError")]
    relayed = asyncio.run(_relay(Answer(200, SSE, pieces)))
    # The unfinished event was held by the framer, never sent: dropped, the error follows.
    assert relayed.body.startswith(_chunk(0) + b'data: {"error"')
    assert b"partial-cut" not in relayed.body and b"[DONE]" not in relayed.body
    assert [error["code"] for error in _errors(relayed.body)] == ["upstream_error"]
    assert not relayed.outcome.complete
    assert relayed.upstream.closed  # the connection is dropped, not reused
    assert relayed.failures == 1


def test_a_stream_silent_past_the_watch_ends_with_a_timeout_event() -> None:
    async def scenario() -> Relayed:
        watch = IdleWatch(idle=0.05)
        watch.start()
        try:
            answer = Answer(200, SSE, [_chunk(0), Pause(3600.0)])
            return await _relay(answer, idle=watch)
        finally:
            await watch.stop()

    relayed = asyncio.run(scenario())
    assert relayed.body.startswith(_chunk(0))
    assert [error["code"] for error in _errors(relayed.body)] == ["upstream_timeout"]
    assert b"[DONE]" not in relayed.body and relayed.upstream.closed


def test_a_stream_silent_past_the_transports_limit_ends_with_a_timeout_event() -> None:
    answer = Answer(200, SSE, [_chunk(0), Pause(3600.0)])
    relayed = asyncio.run(_relay(answer, timeouts={"stream_idle": 0.05}))
    assert [error["code"] for error in _errors(relayed.body)] == ["upstream_timeout"]
    assert not relayed.outcome.complete


def test_the_usage_chunk_the_proxy_asked_for_is_stripped() -> None:
    stream = _chunk(0) + _chunk(1) + USAGE_CHUNK + DONE
    style = StreamStyle(strip_usage=True)
    relayed = asyncio.run(_relay(Answer(200, SSE, _split(stream, 11)), style=style))
    expected = (_chunk(0) + _chunk(1)).replace(b',"usage":null', b"") + DONE
    assert relayed.body == expected
    assert relayed.outcome.usage == Usage(5, 2, 7) and relayed.outcome.complete


def test_a_stream_ended_by_the_shutdown_tells_the_client_why() -> None:
    drain = Drain()

    async def scenario() -> Relayed:
        answer = Answer(200, SSE, [_chunk(0), Pause(3600.0)])
        relaying = asyncio.create_task(_relay(answer, drain=drain))
        while not drain.streams:
            await asyncio.sleep(0)
        drain.end_streams()
        return await relaying

    relayed = asyncio.run(scenario())
    assert [error["code"] for error in _errors(relayed.body)] == ["service_unavailable"]
    assert relayed.failures == 0  # the upstream did nothing wrong


def test_a_client_that_leaves_drops_the_upstream_connection() -> None:
    relayed = asyncio.run(_relay(Answer(200, SSE, [_chunk(0), _chunk(1)]), client_leaves=True))
    assert relayed.status == CLIENT_CLOSED
    assert relayed.upstream.closed and not relayed.outcome.complete


def test_a_whole_json_answer_is_sent_in_one_piece_with_its_usage() -> None:
    document = orjson.dumps({"id": "chatcmpl-1", "choices": [], "usage": USAGE})
    headers = {**JSON, "Content-Length": str(len(document))}
    relayed = asyncio.run(_relay(Answer(200, headers, _split(document, 10)), stream=False))
    assert relayed.body == document
    assert relayed.outcome.usage == Usage(5, 2, 7) and relayed.outcome.complete


def test_an_error_answer_is_scrubbed_of_account_ids() -> None:
    document = orjson.dumps({"error": {"message": "org-AbCdEf123456 may not", "code": "x"}})
    relayed = asyncio.run(_relay(Answer(400, JSON, [document]), stream=False))
    assert relayed.status == 400 and b"org-AbCdEf123456" not in relayed.body


@pytest.mark.parametrize("cut", [BrokenBody("ClientPayloadError")])
def test_a_streamed_body_cut_short_is_never_presented_as_whole(cut: BrokenBody) -> None:
    big = b'{"data": "' + b"x" * (2 * 1024 * 1024)
    relayed = asyncio.run(_relay(Answer(200, JSON, [*_split(big, 65536), cut]), stream=False))
    assert relayed.closed_client  # no last chunk: the client knows the answer is incomplete
    assert not relayed.outcome.complete and relayed.failures == 1
