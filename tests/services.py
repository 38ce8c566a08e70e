"""Real services for tests: PostgreSQL and Redis on localhost, or a clear skip.

A test that needs a service calls ``postgres_url()`` or ``redis_url()``; when the service is not
running the test is skipped with the reason, unless ``CHATGPT_PROXY_REQUIRE_SERVICES=1`` (as in
CI), where a missing service fails the run instead of quietly testing less. The URLs can be
pointed elsewhere with ``CHATGPT_PROXY_TEST_POSTGRES_URL`` and ``CHATGPT_PROXY_TEST_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import socket
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

POSTGRES_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
REDIS_URL = "redis://127.0.0.1:6379"
TIMEOUT_S = 2.0


def _unavailable(service: str, reason: str) -> NoReturn:
    message = f"{service}: {reason}"
    if os.environ.get("CHATGPT_PROXY_REQUIRE_SERVICES") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def postgres_url() -> str:
    """The URL of a reachable PostgreSQL ``test`` database (trust auth), or skip."""
    url, reason = _probe_postgres()
    if url is None:
        where = os.environ.get("CHATGPT_PROXY_TEST_POSTGRES_URL", POSTGRES_URLS[0])
        host, port = _host_port(where, 5432)
        _unavailable(f"PostgreSQL not reachable at {host}:{port}", reason)
    return url


def redis_url() -> str:
    """The URL of a reachable Redis, or skip."""
    url = os.environ.get("CHATGPT_PROXY_TEST_REDIS_URL", REDIS_URL)
    reason = _probe_redis(url)
    if reason:
        _unavailable(f"Redis not reachable at {_host_port(url, 6379)}", reason)
    return url


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database ``cgp_<hex>`` for one test; dropped afterwards."""
    server = postgres_url()
    name = "cgp_" + secrets.token_hex(6)
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(server)._replace(path="/" + name))
    finally:
        # FORCE ends connections a failed test left open (PostgreSQL 13+).
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@functools.cache
def _probe_postgres() -> tuple[str, str] | tuple[None, str]:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return None, "asyncpg is not installed (pip install -e '.[dev]')"
    override = os.environ.get("CHATGPT_PROXY_TEST_POSTGRES_URL")
    reasons = []
    for url in (override,) if override else POSTGRES_URLS:
        try:
            asyncio.run(_admin(url, "SELECT 1"))
        except Exception as exc:  # any failure means "not usable here"; report it
            reasons.append(f"{urlsplit(url).username}: {type(exc).__name__}: {exc}")
        else:
            return url, ""
    return None, "; ".join(reasons)


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=TIMEOUT_S)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _probe_redis(url: str) -> str:
    try:
        with socket.create_connection(_host_port(url, 6379), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "" if reply.startswith(b"+PONG") else f"unexpected reply {reply[:40]!r}"


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port
