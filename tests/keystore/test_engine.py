from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from chatgpt_proxy.errors import ConfigError
from chatgpt_proxy.keystore import KeyStore, async_database_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///./chatgpt-proxy.db", "sqlite+aiosqlite:///./chatgpt-proxy.db"),
        ("sqlite:////var/lib/cgp/keys.db", "sqlite+aiosqlite:////var/lib/cgp/keys.db"),
        ("sqlite+aiosqlite:///k.db", "sqlite+aiosqlite:///k.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://app@db:5432/keys", "postgresql+asyncpg://app@db:5432/keys"),
        ("postgres://app@db/keys", "postgresql+asyncpg://app@db/keys"),
        ("postgresql+asyncpg://app@db/keys", "postgresql+asyncpg://app@db/keys"),
    ],
)
def test_urls_map_to_async_drivers(url: str, expected: str) -> None:
    assert async_database_url(url).render_as_string(hide_password=False) == expected


def test_password_survives_mapping() -> None:
    url = async_database_url("postgresql://app:s3cr%40t@db/keys")
    assert url.password == "s3cr@t"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://app:hunter2@db/keys",
        "postgresql+psycopg2://app:hunter2@db/keys",
        "redis://hunter2@localhost",
        "not a url hunter2",
        "",
    ],
)
def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        asyncio.run(KeyStore.open(url))
    assert "hunter2" not in str(caught.value)  # a URL's password never reaches a message


def test_missing_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # makes "import asyncpg" fail
    with pytest.raises(ConfigError) as caught:
        async_database_url("postgresql://app@db/keys")
    assert str(caught.value) == (
        "database_url is PostgreSQL but asyncpg is missing: pip install 'chatgpt-proxy[postgres]'"
    )


def test_sqlite_file_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"

    async def scenario() -> None:
        async with await KeyStore.open(f"sqlite:///{path}") as store:
            await store.migrate()

    asyncio.run(scenario())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
