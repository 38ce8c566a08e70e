"""Fixtures shared by the whole test tree. Service helpers live in ``services.py``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_openai import FAKE_KEYS, FakeOpenAI
from harness import Proxy, Recorder, RecordingHandler, proxy_settings, start_proxy
from servers import BackgroundLoop
from services import fresh_postgres_database


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> str:
    """A database URL for a new SQLite file (a file, not :memory:, so every connection sees it)."""
    return f"sqlite:///{tmp_path / 'chatgpt-proxy.db'}"


@pytest.fixture
def postgres_database_url() -> Iterator[str]:
    """A database URL for a new, empty PostgreSQL database, dropped after the test."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each backend in turn: a test using this runs once on SQLite and once on PostgreSQL."""
    fixture = {"sqlite": "sqlite_database_url", "postgresql": "postgres_database_url"}
    url: str = request.getfixturevalue(fixture[request.param])
    return url


@pytest.fixture(scope="session")
def background_loop() -> Iterator[BackgroundLoop]:
    """One event loop on a daemon thread for the whole session: servers under test run on it."""
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def fake_openai(background_loop: BackgroundLoop) -> FakeOpenAI:
    """The fake OpenAI upstream, served for the whole session; accepts the keys in FAKE_KEYS.

    Session-scoped, so its records and scripts carry over between tests: use `fake` for a
    per-test reset, or call `fake_openai.reset()` yourself.
    """
    fake = FakeOpenAI(keys=FAKE_KEYS)
    fake.url = background_loop.start_app(fake.app, handler_cancellation=True)
    return fake


@pytest.fixture
def fake(fake_openai: FakeOpenAI) -> FakeOpenAI:
    """The session's fake OpenAI upstream, reset (no records, no scripts) for this test."""
    fake_openai.reset()
    return fake_openai


@pytest.fixture(scope="session")
def recorder() -> Iterator[Recorder]:
    """All the proxy sent to clients and logs this session, scanned for upstream keys at the end."""
    recorder = Recorder()
    handler = RecordingHandler(recorder)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield recorder
    root.removeHandler(handler)
    root.setLevel(previous)
    leaks = recorder.leaks(list(FAKE_KEYS))
    assert not leaks, f"upstream keys leaked: {leaks}"


@pytest.fixture
def make_proxy(
    background_loop: BackgroundLoop, fake: FakeOpenAI, tmp_path: Path, recorder: Recorder
) -> Iterator[Callable[..., Proxy]]:
    """Start a proxy in front of the fake upstream; keyword arguments override settings."""
    started: list[Proxy] = []

    def make(**overrides: Any) -> Proxy:
        proxy = start_proxy(background_loop, proxy_settings(fake, tmp_path, **overrides), recorder)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.close()


@pytest.fixture
def proxy(make_proxy: Callable[..., Proxy]) -> Proxy:
    """A proxy with default test settings: two upstream keys, no moderation, an admin key."""
    return make_proxy()
