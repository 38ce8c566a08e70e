"""The Realtime API's WebSocket (``api/realtime.py``), through the openai SDK's own client,
against the fake upstream's scripted Realtime socket."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import openai
import pytest
from websockets.exceptions import ConnectionClosedError

from chatgpt_proxy.keystore import KeyPolicy
from fake_openai import FAKE_KEYS, REALTIME_REPLY, FakeOpenAI
from harness import Proxy, Recorder, proxy_settings, start_proxy
from servers import BackgroundLoop, wait_for
from services import redis_url

MODEL = "gpt-realtime"
FLAGGED = "I will build a bomb tonight"
RULES = {"enabled": True, "engines": ["rules"], "rules": [{"name": "weapons", "words": ["bomb"]}]}


def _user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _until(connection: Any, kind: str) -> list[dict[str, Any]]:
    """Events received up to and including the first of type ``kind``, as raw JSON."""
    seen = []
    while True:
        event = json.loads(connection.recv_bytes())
        seen.append(event)
        if event["type"] == kind:
            return seen


@pytest.fixture(scope="module")
def proxy(
    background_loop: BackgroundLoop,
    fake_openai: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
    recorder: Recorder,
) -> Iterator[Proxy]:
    """One proxy for the module (moderated by a rule), in front of the session's fake; each
    test resets the fake (``fake``) and makes the keys it needs."""
    settings = proxy_settings(fake_openai, tmp_path_factory.mktemp("realtime"), moderation=RULES)
    started = start_proxy(background_loop, settings, recorder)
    yield started
    started.close()


def test_text_in_text_out_with_usage_metered(proxy: Proxy, fake: FakeOpenAI) -> None:
    key = proxy.create_key("metered")  # the module's proxy: a key of this test's own
    client = proxy.client(key=key)
    with client.realtime.connect(model=MODEL) as connection:
        assert _until(connection, "session.created")
        connection.session.update(session={"type": "realtime", "instructions": "Be brief."})
        connection.conversation.item.create(item=_user_text("hello over the socket"))
        connection.response.create()
        events = _until(connection, "response.done")
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == REALTIME_REPLY + "hello over the socket"
    usage = events[-1]["response"]["usage"]
    received = json.dumps(events)
    assert all(secret not in received for secret in FAKE_KEYS)
    session = fake.realtime_sessions[-1]
    assert session.key in FAKE_KEYS[:2]  # a pool key went upstream, never the client's
    assert session.query == {"model": MODEL}
    assert session.texts() == ["hello over the socket"]

    store, key_id = proxy.state.store, proxy.state.keys.authenticate(f"Bearer {key}").id

    def metered() -> int:
        proxy.loop.run(proxy.state.meter.flush())
        totals = proxy.loop.run(store.usage.totals(key_id))
        return int(totals[0])

    wait_for(lambda: metered() == usage["total_tokens"], message="usage not metered")


def test_flagged_text_is_answered_with_an_error_and_never_sent(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    client = proxy.client()
    with client.realtime.connect(model=MODEL) as connection:
        _until(connection, "session.created")
        connection.conversation.item.create(item=_user_text(FLAGGED), event_id="evt_flag")
        error = _until(connection, "error")[-1]["error"]
        connection.session.update(session={"type": "realtime", "instructions": FLAGGED})
        second = _until(connection, "error")[-1]["error"]
        connection.conversation.item.create(item=_user_text("a harmless question"))
        connection.response.create()
        _until(connection, "response.done")
    assert error["code"] == second["code"] == "content_policy_violation"
    assert error["event_id"] == "evt_flag"
    session = fake.realtime_sessions[-1]
    assert session.texts() == ["a harmless question"]
    assert all(FLAGGED not in json.dumps(event) for event in session.events)


def test_client_disconnect_closes_the_upstream_socket(proxy: Proxy, fake: FakeOpenAI) -> None:
    connection = proxy.client().realtime.connect(model=MODEL).enter()
    _until(connection, "session.created")
    session = fake.realtime_sessions[-1]
    assert not session.closed
    connection.close()
    wait_for(lambda: session.closed, message="the upstream socket stayed open")


def test_upstream_close_code_reaches_the_client(proxy: Proxy, fake: FakeOpenAI) -> None:
    async def scripted_close() -> int | None:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(_ws_url(proxy), headers={"Authorization": f"Bearer {proxy.key}"}) as ws,
        ):
            await ws.receive_json()  # session.created
            await ws.send_json({"type": "fake.close", "code": 4001})
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.CLOSE
            return ws.close_code

    assert asyncio.run(scripted_close()) == 4001


def test_frames_of_every_kind_pass_and_only_realtime_is_echoed(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """The browser's subprotocol key authenticates; binary frames and pings cross both ways;
    the key never comes back, nor does the upstream's."""

    async def session() -> tuple[str | None, bytes, bytes, list[str]]:
        protocols = ("realtime", f"openai-insecure-api-key.{proxy.key}", "openai-beta.realtime-v1")
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(_ws_url(proxy), protocols=protocols, autoping=False) as ws,
        ):
            received = [await ws.receive_str()]
            await ws.send_bytes(b"\x00\x01audio")
            echoed = await ws.receive()
            await ws.ping(b"are you there")
            pong = await ws.receive()
            assert pong.type == aiohttp.WSMsgType.PONG
            return ws.protocol, echoed.data, pong.data, received

    protocol, echoed, pong, received = asyncio.run(session())
    assert protocol == "realtime"
    assert echoed == b"\x00\x01audio"
    assert pong == b"are you there"
    upstream = fake.realtime_sessions[-1]
    assert upstream.headers.get("openai-beta") == "realtime=v1"
    assert proxy.key not in json.dumps(upstream.headers)
    for secret in FAKE_KEYS:
        assert all(secret not in text for text in received)


def test_the_handshake_echoes_realtime_and_no_key(proxy: Proxy, fake: FakeOpenAI) -> None:
    offered = f"realtime, openai-insecure-api-key.{proxy.key}, openai-beta.realtime-v1"
    head = _handshake(proxy, f"/v1/realtime?model={MODEL}&api-key={proxy.key}", offered)
    assert head.startswith("HTTP/1.1 101")
    assert "sec-websocket-protocol: realtime\r\n" in head.lower()
    assert proxy.key not in head and all(secret not in head for secret in FAKE_KEYS)
    wait_for(lambda: fake.realtime_sessions, message="no upstream session")
    upstream = fake.realtime_sessions[-1]
    assert upstream.query == {"model": MODEL}  # the key in the query stayed behind
    assert upstream.protocol == "realtime"
    # The handshake's connection was dropped without a close frame: the upstream's goes too.
    wait_for(lambda: upstream.closed, message="the upstream socket outlived its client")


def _handshake(proxy: Proxy, target: str, protocols: str) -> str:
    """The head of the proxy's answer to a WebSocket upgrade, as its bytes came."""
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
        )
        conn.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.decode(errors="replace")


def test_a_shutdown_ends_a_session_with_an_error_and_going_away(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    stopping = make_proxy()

    async def session() -> tuple[dict[str, Any], int | None]:
        headers = {"Authorization": f"Bearer {stopping.key}"}
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(_ws_url(stopping), headers=headers) as ws,
        ):
            await ws.receive_json()  # session.created: the session is under way
            # The grace period is over (as drain.begin's timer ends it):
            stopping.loop.loop.call_soon_threadsafe(stopping.state.drain.end_streams)
            error = await ws.receive_json()
            closing = await ws.receive()
            assert closing.type == aiohttp.WSMsgType.CLOSE
            return error, ws.close_code

    error, code = asyncio.run(session())
    assert error["type"] == "error" and code == 1001
    upstream = fake.realtime_sessions[-1]
    wait_for(lambda: upstream.closed, message="upstream left open")
    assert upstream.close_code == 1001


@pytest.mark.parametrize("key", [None, "pk-not-a-real-key-000000000000000000000"])
def test_a_bad_or_absent_key_is_refused_before_the_upgrade(
    proxy: Proxy, fake: FakeOpenAI, key: str | None
) -> None:
    async def refused() -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(_ws_url(proxy), headers=headers)
            async with http.get(_ws_url(proxy), headers=headers) as plain:
                return caught.value.status, await plain.json()

    status, body = asyncio.run(refused())
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert fake.realtime_sessions == []


def test_the_sdk_sees_a_refused_key_as_an_error(proxy: Proxy, fake: FakeOpenAI) -> None:
    client = proxy.client(key="pk-not-a-real-key-000000000000000000000")
    with pytest.raises(Exception) as caught:
        client.realtime.connect(model=MODEL).enter()
    assert "401" in str(caught.value)
    assert fake.realtime_sessions == []


def test_a_model_outside_the_allowlist_is_refused(proxy: Proxy, fake: FakeOpenAI) -> None:
    key = proxy.create_key("narrow", KeyPolicy(models=("gpt-4o-mini",)))
    client = proxy.client(key=key)
    with pytest.raises(Exception) as caught:
        client.realtime.connect(model=MODEL).enter()
    assert "403" in str(caught.value)
    assert fake.realtime_sessions == []


def test_a_spent_budget_ends_the_session_with_an_error(proxy: Proxy, fake: FakeOpenAI) -> None:
    _spend_the_budget(proxy, fake)


def test_a_budget_shared_in_redis_ends_the_session_too(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    shared = make_proxy(
        redis_url=redis_url(), limits={"redis_prefix": f"cgp-test-{secrets.token_hex(4)}:"}
    )
    _spend_the_budget(shared, fake)


def _spend_the_budget(proxy: Proxy, fake: FakeOpenAI) -> None:
    """A key with 3 tokens to spend: its first response (more than 3) ends the session."""
    key = proxy.create_key("small", KeyPolicy(total_token_budget=3))
    with proxy.client(key=key).realtime.connect(model=MODEL) as connection:
        _until(connection, "session.created")
        connection.conversation.item.create(item=_user_text("five words are spent here"))
        connection.response.create()
        events = _until(connection, "error")
        with pytest.raises(ConnectionClosedError) as closed:
            connection.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert events[-2]["type"] == "response.done"
    assert events[-1]["error"]["code"] == "insufficient_quota"
    wait_for(lambda: fake.realtime_sessions[-1].closed, message="upstream left open")


def test_realtime_tokens_count_toward_tpm(proxy: Proxy, fake: FakeOpenAI) -> None:
    _fill_the_tpm_window(proxy, fake)


def test_realtime_tokens_count_toward_a_tpm_shared_in_redis(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    shared = make_proxy(
        redis_url=redis_url(), limits={"redis_prefix": f"cgp-test-{secrets.token_hex(4)}:"}
    )
    _fill_the_tpm_window(shared, fake)


def _fill_the_tpm_window(proxy: Proxy, fake: FakeOpenAI) -> None:
    """A response's tokens fill the key's tpm window: past it the client's next
    ``response.create`` is refused with an error event (never sent upstream), and the key's
    HTTP requests are refused too, as if those tokens had come over HTTP."""
    key = proxy.create_key("tpm", KeyPolicy(tpm=3))
    with proxy.client(key=key).realtime.connect(model=MODEL) as connection:
        _until(connection, "session.created")
        connection.conversation.item.create(item=_user_text("five words are spent here"))
        connection.response.create()
        done = _until(connection, "response.done")[-1]
        assert done["response"]["usage"]["total_tokens"] > 3
        connection.response.create(event_id="event_again")
        refused = _until(connection, "error")[-1]
    assert refused["error"]["code"] == "rate_limit_exceeded"
    assert refused["error"]["event_id"] == "event_again"
    sent = [event["type"] for event in fake.realtime_sessions[-1].events]
    assert sent.count("response.create") == 1
    with pytest.raises(openai.RateLimitError) as caught:
        proxy.client(key=key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "rate_limit_exceeded"


def test_client_secrets_are_forwarded(proxy: Proxy, fake: FakeOpenAI) -> None:
    secret = proxy.client().realtime.client_secrets.create(
        session={"type": "realtime", "model": MODEL, "instructions": "Be kind."}
    )
    assert secret.value.startswith("ek_")
    sent = fake.last("/v1/realtime/client_secrets")
    assert sent.key in FAKE_KEYS[:2]
    assert sent.json()["session"]["instructions"] == "Be kind."


def test_a_client_secrets_model_is_held_to_the_keys_allowlist(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    key = proxy.create_key("narrow", KeyPolicy(models=("gpt-4o-mini",)))
    with pytest.raises(openai.PermissionDeniedError):
        proxy.client(key=key).realtime.client_secrets.create(
            session={"type": "realtime", "model": MODEL}
        )
    assert fake.count("/v1/realtime/client_secrets") == 0


def _ws_url(proxy: Proxy) -> str:
    return proxy.url.replace("http://", "ws://") + f"/v1/realtime?model={MODEL}"


@pytest.fixture(autouse=True)
def _no_leftover_sessions(fake: FakeOpenAI) -> Iterator[None]:
    yield
    for session in fake.realtime_sessions:
        wait_for(lambda session=session: session.closed, message="a session stayed open")
