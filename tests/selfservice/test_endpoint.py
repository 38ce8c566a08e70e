"""``selfservice/endpoint.py``: the interactions endpoint, signed fake interactions against a
running proxy. The body is read within its limit, its signature and age checked, then parsed,
and its id seen once; slow commands are deferred and followed up. Random bodies with valid
signatures are refused or answered, never a 500."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatgpt_proxy.selfservice.endpoint import MAX_BODY_BYTES
from harness import Proxy
from selfservice.discord_helpers import (
    APPLICATION_ID,
    PATH,
    ROTATE,
    SECRET,
    USER,
    FakeDiscord,
    Signer,
    chat,
    command,
    owned,
    ping,
    reply,
    send,
)
from servers import wait_for

snowflakes = st.from_regex(r"[0-9]{1,20}", fullmatch=True)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
options = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["action", "x"]) | st.text(max_size=5), "type": anything},
        optional={"value": anything, "options": anything},
    ),
    max_size=3,
)
interactions = st.fixed_dictionaries(
    {
        "id": snowflakes | anything,
        "application_id": st.just(APPLICATION_ID) | anything,
        "type": st.sampled_from([1, 2, 3, 4, 5]) | anything,
    },
    optional={
        "token": st.from_regex(r"[A-Za-z0-9_.\-]{1,40}", fullmatch=True) | anything,
        "guild_id": snowflakes | anything,
        "member": st.fixed_dictionaries(
            {"user": st.fixed_dictionaries({"id": snowflakes | anything})},
            optional={"roles": st.lists(snowflakes, max_size=3) | anything},
        )
        | anything,
        "user": st.fixed_dictionaries({"id": snowflakes}) | anything,
        "data": st.fixed_dictionaries(
            {"name": st.sampled_from(["key", "usage", "other"]) | anything},
            optional={"options": options | anything},
        )
        | anything,
    },
)
# The standard library's encoder: it writes integers of any size, and NaN, which JSON has not.
bodies = (
    interactions.map(lambda value: json.dumps(value).encode())
    | anything.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=200)
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_signed_random_bodies_never_cause_a_500(
    discord_proxy: Proxy, signer: Signer, body: bytes
) -> None:
    answer: Any = discord_proxy.http().post(
        "/discord/interactions", content=body, headers=signer.headers(body)
    )
    assert answer.status_code in (200, 400, 401, 413), (answer.status_code, answer.text)
    if answer.status_code == 200:
        assert answer.json()["type"] in (1, 4, 5)
    else:
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_ping_is_answered_with_pong(discord_proxy: Proxy, signer: Signer) -> None:
    assert reply(discord_proxy, signer, ping(signer)) == {"type": 1}


def test_a_slow_command_is_deferred_and_followed_up(
    make_discord_proxy: Callable[..., Proxy], signer: Signer, fake_discord: FakeDiscord
) -> None:
    # Any command takes longer than a microsecond: this one is deferred.
    proxy = make_discord_proxy(reply_within=0.000001)
    body = command(signer, "key", USER)
    token = orjson.loads(body)["token"]
    message = reply(proxy, signer, body)
    assert message == {"type": 5, "data": {"flags": 64}}
    [call] = fake_discord.wait_for_calls(1)
    assert call.method == "PATCH"
    assert call.path.endswith(
        f"/webhooks/{orjson.loads(body)['application_id']}/{token}/messages/@original"
    )
    secret = SECRET.search(call.body["content"])
    assert secret is not None
    chat(proxy, secret.group(0))


@pytest.mark.parametrize(
    "spoil",
    ["bad-signature", "tampered-body", "no-signature", "no-timestamp", "stale", "future"],
)
def test_unsigned_or_stale_interactions_are_refused(
    discord_proxy: Proxy, signer: Signer, spoil: str
) -> None:
    body = command(signer, "key", USER)
    headers = signer.headers(body)
    if spoil == "bad-signature":
        headers["X-Signature-Ed25519"] = "00" * 64
    elif spoil == "tampered-body":
        body = body.replace(USER.encode(), b"900000000000000002")
    elif spoil == "no-signature":
        del headers["X-Signature-Ed25519"]
    elif spoil == "no-timestamp":
        del headers["X-Signature-Timestamp"]
    else:
        offset = -3600 if spoil == "stale" else 3600
        headers = signer.headers(body, timestamp=int(time.time()) + offset)
    answer = discord_proxy.http().post(PATH, content=body, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_signature"
    assert owned(discord_proxy) == [] and owned(discord_proxy, "900000000000000002") == []


def test_a_replayed_interaction_is_refused(discord_proxy: Proxy, signer: Signer) -> None:
    body = command(signer, "key", USER, options=ROTATE)
    headers = signer.headers(body)
    first = discord_proxy.http().post(PATH, content=body, headers=headers)
    assert first.status_code == 200
    replayed = discord_proxy.http().post(PATH, content=body, headers=headers)
    assert replayed.status_code == 401
    assert len(owned(discord_proxy)) == 1  # the replayed rotation issued nothing


def test_a_signed_interaction_of_another_application_is_refused(
    discord_proxy: Proxy, signer: Signer
) -> None:
    body = command(signer, "key", USER).replace(b"1100000000000000001", b"1100000000000000009")
    assert send(discord_proxy, signer, body).status_code == 401
    assert owned(discord_proxy) == []


def test_a_dot_segment_token_is_refused(discord_proxy: Proxy, signer: Signer) -> None:
    body = command(signer, "key", USER)
    body = body.replace(orjson.loads(body)["token"].encode(), b"..")
    assert send(discord_proxy, signer, body).status_code == 400
    assert owned(discord_proxy) == []


def padded(signer: Signer, size: int) -> bytes:
    """A ``/key`` command of exactly ``size`` bytes (Discord's fields plus one it never sends)."""
    interaction = orjson.loads(command(signer, "key", USER))
    interaction["padding"] = ""
    interaction["padding"] = "x" * (size - len(orjson.dumps(interaction)))
    body = orjson.dumps(interaction)
    assert len(body) == size
    return body


def test_a_body_at_the_limit_is_read_whole(discord_proxy: Proxy, signer: Signer) -> None:
    message = reply(discord_proxy, signer, padded(signer, MAX_BODY_BYTES))
    assert message["type"] == 4 and len(owned(discord_proxy)) == 1


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_is_a_413_before_anything_else(
    discord_proxy: Proxy, signer: Signer, framing: str
) -> None:
    body = padded(signer, MAX_BODY_BYTES + 1)
    headers = signer.headers(body)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    content: Any = body if framing == "content-length" else chunks()
    answer = discord_proxy.http().post(PATH, content=content, headers=headers)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"
    assert owned(discord_proxy) == []


def test_an_interaction_of_another_type_is_answered_not_supported(
    discord_proxy: Proxy, signer: Signer
) -> None:
    interaction = orjson.loads(command(signer, "key", USER))
    interaction["type"] = 3  # a message component: a button press
    message = reply(discord_proxy, signer, orjson.dumps(interaction))
    assert message == {
        "type": 4,
        "data": {"content": "This interaction is not supported.", "flags": 64},
    }
    assert owned(discord_proxy) == []


def test_a_command_without_its_token_is_a_400(discord_proxy: Proxy, signer: Signer) -> None:
    interaction = orjson.loads(command(signer, "key", USER))
    del interaction["token"]
    answer = send(discord_proxy, signer, orjson.dumps(interaction))
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_request"
    assert owned(discord_proxy) == []


def test_a_follow_up_discord_refuses_is_logged(
    make_discord_proxy: Callable[..., Proxy],
    signer: Signer,
    fake_discord: FakeDiscord,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="chatgpt_proxy.selfservice")
    fake_discord.refuse_with = 500
    proxy = make_discord_proxy(reply_within=0.000001)
    assert reply(proxy, signer, command(signer, "key", USER)) == {"type": 5, "data": {"flags": 64}}
    [call] = fake_discord.wait_for_calls(1)
    assert call.method == "PATCH"
    failures = wait_for(
        lambda: [r for r in caplog.records if "follow-up" in r.getMessage()],
        message="the lost follow-up was not logged",
    )
    assert failures[0].exc_info is not None and "500" in str(failures[0].exc_info[1])
    assert len(owned(proxy)) == 1  # the key was issued; only its message was lost
