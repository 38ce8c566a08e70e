"""The Alembic plumbing: configured in code, upgrading one revision at a time, or to the head."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from chatgpt_proxy.keystore import async_database_url
from chatgpt_proxy.keystore.migrator import MIGRATIONS_DIR, alembic_config, upgrade
from chatgpt_proxy.keystore.schema import VERSION_TABLE


def test_the_configuration_needs_no_alembic_ini() -> None:
    config = alembic_config()
    assert config.config_file_name is None
    assert Path(config.get_main_option("script_location") or "") == MIGRATIONS_DIR
    revisions = list(ScriptDirectory.from_config(config).walk_revisions())
    assert [r.revision for r in revisions][-1] == "0001"  # the first, with no parent
    assert revisions[-1].down_revision is None


def _state(conn: sa.Connection) -> tuple[set[str], tuple[str, ...]]:
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return set(sa.inspect(conn).get_table_names()), context.get_current_heads()


def test_upgrading_goes_to_the_revision_asked_then_to_the_head(database_url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()

    async def scenario() -> list[tuple[set[str], tuple[str, ...]]]:
        engine = create_async_engine(async_database_url(database_url))
        seen = []
        try:
            for revision in ("0001", "head", "head"):
                await upgrade(engine, revision)
                async with engine.connect() as conn:
                    seen.append(await conn.run_sync(_state))
        finally:
            await engine.dispose()
        return seen

    first, latest, again = asyncio.run(scenario())
    assert first[1] == ("0001",)
    assert "client_keys" in first[0] and "stored_objects" not in first[0]
    assert latest[1] == (head,)
    assert "stored_objects" in latest[0] and VERSION_TABLE in latest[0]
    assert again == latest  # at the head, upgrading again changes nothing
