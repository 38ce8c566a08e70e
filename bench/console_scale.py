"""How fast the console's pages answer with a big database (issue 12, item 5).

Fills a fresh database with client keys and usage rows (100,000 and 1,000,000 by default),
starts the proxy on it, signs in to the console and times every page over HTTP: the median of a
few requests each. SQLite (a file in a temporary directory) and PostgreSQL (a fresh database
on the test server, skipped when unreachable).

    .venv/bin/python bench/console_scale.py                       # both backends
    .venv/bin/python bench/console_scale.py --keys 10000 --usage 100000 --backends sqlite

Filling takes minutes of CPU per backend. To time again on the same data (after a change of the
code, say), keep the databases: ``--sqlite-file PATH`` and ``--postgres-database NAME`` fill
them only while they hold no client key, migrate them first either way (so a new migration's
backfill is timed too), and leave them in place; ``--pages by=key`` times only the pages whose
path contains that text::

    .venv/bin/python bench/console_scale.py --sqlite-file /tmp/console.db \
        --postgres-database cgp_bench_console --pages by=key
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import sqlalchemy as sa
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chatgpt_proxy.app import create_app
from chatgpt_proxy.keystore import KeyStore, UsageEvent
from chatgpt_proxy.keystore.engine import create_engine
from chatgpt_proxy.keystore.schema import client_keys, usage_events, usage_key_days
from chatgpt_proxy.settings import Settings
from services import POSTGRES_URLS, _probe_postgres

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
BATCH = 20_000
MODELS = ["gpt-4o", "gpt-4o-mini", "o1", "text-embedding-3-small", "gpt-4.1"]


async def fill(url: str, keys: int, usage: int) -> list[str]:
    """Insert ``keys`` client keys and ``usage`` usage rows over the last 30 days."""
    engine = create_engine(url)
    now = datetime.now(UTC)
    ids = [f"key_{n:016x}" for n in range(keys)]
    try:
        async with engine.begin() as conn:
            for start in range(0, keys, BATCH):
                rows = [
                    {
                        "id": key_id,
                        "name": f"team-{n:06d}",
                        "key_hash": secrets.token_hex(32),
                        "prefix": "pk-" + secrets.token_hex(4),
                        "created_at": now - timedelta(seconds=n),
                        "updated_at": now - timedelta(seconds=n),
                    }
                    for n, key_id in enumerate(ids[start : start + BATCH], start)
                ]
                await conn.execute(client_keys.insert(), rows)
    finally:
        await engine.dispose()
    # Usage through the store's own write path, which also keeps the per-day sums. Traffic is
    # skewed as in life: a few keys make most of it (key n is picked with weight ~ 1/n).
    rng = random.Random(7)
    async with await KeyStore.open(url) as store:
        for start in range(0, usage, BATCH):
            events = [
                UsageEvent(
                    key_id=ids[min(int(keys ** rng.random()) - 1, keys - 1)],
                    model=rng.choice(MODELS),
                    upstream=f"openai#{rng.randrange(1, 5)}",
                    endpoint="chat.completions",
                    status=200 if rng.random() < 0.97 else 502,
                    prompt_tokens=100,
                    completion_tokens=50,
                    total_tokens=150,
                    latency_ms=rng.randrange(50, 3000),
                    cost=0.001,
                    created_at=now - timedelta(seconds=rng.randrange(30 * 86400)),
                )
                for _ in range(min(BATCH, usage - start))
            ]
            assert not await store.usage.record(events)
    return ids


async def count_rows(url: str, table: sa.Table) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
    finally:
        await engine.dispose()


async def analyze(url: str) -> None:
    """Statistics for PostgreSQL's planner, as autovacuum gathers them a minute after a fill
    this size: without them it takes a table just filled or created for a few rows."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text("ANALYZE"))
    finally:
        await engine.dispose()


async def kept_key_ids(url: str) -> list[str]:
    """The ids ``fill`` gave the keys of a database it filled before, in its order."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            query = sa.select(client_keys.c.id).order_by(client_keys.c.id)
            return list((await conn.scalars(query)).all())
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def postgres_database(server: str, kept: str | None) -> AsyncIterator[str]:
    """A database on ``server``: ``kept`` (created if missing, left in place) or a fresh one."""
    name = kept or "cgp_bench_" + secrets.token_hex(4)
    admin = create_engine(server)
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        exists = await conn.scalar(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
        )
        if not exists:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        if kept is None:
            async with admin.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def time_pages(url: str, key_id: str, repeat: int, only: str) -> list[tuple[str, float, int]]:
    settings = Settings.model_validate(
        {
            # An upstream nobody calls: the pages read the database and the pool only.
            "upstreams": [{"name": "openai", "base_url": "http://127.0.0.1:9/v1", "keys": ["x"]}],
            "database_url": url,
            "auth": {"admin_key": ADMIN_KEY},
            "moderation": {"enabled": False},
            "server": {"access_log": False},
        }
    )
    store = await KeyStore.open(url)
    app = await create_app(settings, store=store)
    server = TestServer(app)
    await server.start_server()
    base = str(server.make_url(""))
    today = datetime.now(UTC).date()
    month = f"since={today - timedelta(days=29)}&until={today}"
    pages = [
        "/admin/",
        "/admin/console/keys",
        "/admin/console/keys?page=2000",
        "/admin/console/keys?sort=name&dir=asc&page=1000",
        "/admin/console/keys?q=team-0999",
        "/admin/console/keys?q=pk-zzzz",
        f"/admin/console/keys/{key_id}",
        "/admin/console/upstreams",
        "/admin/console/usage",
        f"/admin/console/usage?{month}&by=day",
        f"/admin/console/usage?{month}&by=model",
        f"/admin/console/usage?{month}&by=key",
        f"/admin/console/usage.csv?{month}&by=key",
        "/admin/console/moderation",
        "/admin/console/audit",
    ]
    results = []
    try:
        # unsafe: the jar keeps cookies of an IP address (127.0.0.1), as a browser does.
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(base_url=base, cookie_jar=jar) as http:
            async with http.post(
                "/admin/login", data={"password": ADMIN_KEY}, headers={"Origin": base.rstrip("/")}
            ) as answer:
                assert answer.status in (200, 303), answer.status
            for page in (page for page in pages if only in page):
                times = []
                status = 0
                for _ in range(repeat):
                    started = time.perf_counter()
                    async with http.get(page, allow_redirects=False) as answer:
                        await answer.read()
                        status = answer.status
                    times.append(time.perf_counter() - started)
                results.append((page, statistics.median(times), status))
    finally:
        await server.close()
        await store.close()
    return results


async def bench_backend(name: str, url: str, options: argparse.Namespace) -> None:
    started = time.perf_counter()
    store = await KeyStore.open(url)
    await store.migrate()
    await store.close()
    migrated = time.perf_counter() - started
    started = time.perf_counter()
    ids = await kept_key_ids(url)
    if ids:
        how = f"kept from an earlier run; migrated in {migrated:.1f} s"
    else:
        ids = await fill(url, options.keys, options.usage)
        how = f"filled in {time.perf_counter() - started:.0f} s"
    if url.startswith("postgresql"):
        await analyze(url)
    usage = await count_rows(url, usage_events)
    daily = await count_rows(url, usage_key_days)
    print(
        f"\n### {name}: {len(ids):,} keys, {usage:,} usage rows, {daily:,} per-key-day sums "
        f"({how})\n"
    )
    print("| page | median ms | status |\n|---|---:|---:|", flush=True)
    for page, seconds, status in await time_pages(
        url, ids[len(ids) // 2], options.repeat, options.pages
    ):
        print(f"| `{page}` | {seconds * 1000:.0f} | {status} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--usage", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--sqlite-file", help="keep (or reuse) the SQLite database in this file")
    parser.add_argument("--postgres-database", help="keep (or reuse) this PostgreSQL database")
    parser.add_argument("--pages", default="", help="time only pages whose path contains this")
    args = parser.parse_args()
    backends = args.backends.split(",")
    if "sqlite" in backends:
        if args.sqlite_file:
            asyncio.run(bench_backend("SQLite", f"sqlite:///{args.sqlite_file}", args))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(bench_backend("SQLite", f"sqlite:///{tmp}/bench.db", args))
    if "postgresql" in backends:
        server, reason = _probe_postgres()
        if server is None:
            print(f"\nPostgreSQL not reachable at {POSTGRES_URLS[0]} ({reason}): skipped")
        else:
            asyncio.run(bench_postgres(server, args))


async def bench_postgres(server: str, options: argparse.Namespace) -> None:
    async with postgres_database(server, options.postgres_database) as url:
        await bench_backend("PostgreSQL", url, options)


if __name__ == "__main__":
    main()
