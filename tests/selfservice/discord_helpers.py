"""Signed fake interactions and a fake Discord API, for the self-service tests.

The test key pair stands in for the application's: the proxy is configured with its public
half, and ``Signer`` signs interactions as Discord would (Ed25519 over the timestamp and the
raw body). ``FakeDiscord`` is a real aiohttp server on 127.0.0.1 that records what the proxy
sends it (command registrations, follow-ups). The fixtures are in ``conftest.py`` beside this;
tests elsewhere import this module as ``selfservice.discord_helpers`` (as the conftest does, so
there is one module, whichever directory runs).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from nacl.signing import SigningKey

from chatgpt_proxy.keystore import ClientKey
from harness import Proxy

APPLICATION_ID = "1100000000000000001"
GUILD_ID = "1200000000000000002"
ROLE_ID = "1300000000000000003"
BOT_TOKEN = "bot-token-for-tests-0123456789"
USER = "900000000000000001"
PATH = "/discord/interactions"
SECRET = re.compile(r"pk-[A-Za-z0-9_\-]{20,}")


class Signer:
    """Signs bodies as Discord does; ``public_key`` goes into ``discord.public_key``."""

    def __init__(self) -> None:
        self._key = SigningKey.generate()
        self.public_key = self._key.verify_key.encode().hex()
        self._ids = itertools.count(1_400_000_000_000_000_000)

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self._key.sign(stamp.encode() + body).signature.hex()
        return {
            "X-Signature-Ed25519": signature,
            "X-Signature-Timestamp": stamp,
            "Content-Type": "application/json",
        }

    def next_id(self) -> str:
        return str(next(self._ids))


def command(
    signer: Signer,
    name: str,
    user_id: str,
    *,
    options: list[dict[str, Any]] | None = None,
    roles: tuple[str, ...] = (ROLE_ID,),
    guild_id: str | None = GUILD_ID,
) -> bytes:
    """A slash command interaction, as Discord sends one from a server (or a DM without guild)."""
    user = {"id": user_id, "username": f"user{user_id[-4:]}"}
    interaction: dict[str, Any] = {
        "id": signer.next_id(),
        "application_id": APPLICATION_ID,
        "type": 2,
        "token": f"tok_{signer.next_id()}",
        "version": 1,
        "data": {"id": "1500000000000000005", "name": name, "type": 1},
    }
    if options:
        interaction["data"]["options"] = options
    if guild_id is None:
        interaction["user"] = user
    else:
        interaction["guild_id"] = guild_id
        interaction["member"] = {"user": user, "roles": list(roles)}
    return orjson.dumps(interaction)


def ping(signer: Signer) -> bytes:
    return orjson.dumps(
        {"id": signer.next_id(), "application_id": APPLICATION_ID, "type": 1, "version": 1}
    )


ROTATE = [{"name": "action", "type": 3, "value": "rotate"}]


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeDiscord:
    """Discord's API as far as the proxy calls it: command registration and follow-ups."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    refuse_with: int | None = None  # a status to answer every call with, as Discord refusing
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/v10/{path:.*}", self._record)
        return app

    async def _record(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read() or b"null")
        with self._changed:
            self.calls.append(Call(request.method, request.path, dict(request.headers), body))
            self._changed.notify_all()
        if self.refuse_with is not None:
            return web.json_response(
                {"message": "Refused by the fake", "code": 0}, status=self.refuse_with
            )
        if request.method == "PUT" and isinstance(body, list):
            answer = [{**c, "id": str(1600000000000000000 + i)} for i, c in enumerate(body)]
            return web.json_response(answer)
        return web.json_response({"id": "1700000000000000007", "content": "ok"})

    def wait_for_calls(self, count: int, timeout: float = 10.0) -> list[Call]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.calls) >= count, timeout)
            return list(self.calls)


def discord_settings(signer: Signer, fake: FakeDiscord, **overrides: Any) -> dict[str, Any]:
    """The ``discord`` section of a proxy that answers ``signer``'s interactions."""
    return {
        "application_id": APPLICATION_ID,
        "public_key": signer.public_key,
        "bot_token": BOT_TOKEN,
        "api_base": fake.url + "/api/v10",
        "guild_id": GUILD_ID,
        "required_role": ROLE_ID,
        **overrides,
    }


def send(proxy: Proxy, signer: Signer, body: bytes, **header_changes: Any) -> Any:
    """POST ``body`` signed; ``header_changes`` replace headers (``None`` removes one)."""
    headers = signer.headers(body)
    for name, value in header_changes.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return proxy.http().post(PATH, content=body, headers=headers)


def reply(proxy: Proxy, signer: Signer, body: bytes) -> dict[str, Any]:
    answer = send(proxy, signer, body)
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def owned(proxy: Proxy, user: str = USER) -> list[ClientKey]:
    return proxy.loop.run(proxy.state.store.owners.keys(f"discord:{user}"))


def ask_key(proxy: Proxy, signer: Signer, user: str = USER, **kwargs: Any) -> dict[str, Any]:
    return reply(proxy, signer, command(signer, "key", user, **kwargs))


def secret_in(message: dict[str, Any]) -> str | None:
    found = SECRET.search(message["data"]["content"])
    return None if found is None else found.group(0)


def chat(proxy: Proxy, key: str) -> None:
    proxy.client(key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
