"""Schema migrations: Alembic, configured in code, run over the store's async engine.

``KeyStore.migrate()`` is the way in; this module is the Alembic plumbing behind it. To write the
next revision, numbered after the newest in ``migrations/versions`` (then edit it by hand, as
the others were)::

    python -c "from alembic import command; from chatgpt_proxy.keystore.migrator import \\
        alembic_config; command.revision(alembic_config(), 'add a column', rev_id='0003')"
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgpt_proxy.keystore.engine import exclusive

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Any fixed 64-bit number, the same in every replica: it names the lock, nothing more.
_POSTGRES_MIGRATION_LOCK = 0x6367705F6B657973  # b"cgp_keys"


def alembic_config() -> Config:
    """Alembic's configuration without an alembic.ini, so the package can migrate from anywhere."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _upgrade(connection: sa.Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the database to the newest revision in one transaction (DDL is transactional on
    both).

    Replicas starting together queue on the lock and each then finds the schema current (a CLI
    and a server migrating one SQLite file run one after the other instead of both creating the
    tables). The lock is taken before Alembic is entered, and that matters twice: Alembic's
    ``context`` and ``op`` are process-wide proxies, so two upgrades interleaving on one event
    loop would corrupt each other even before they raced in the database.
    """
    async with exclusive(engine, _POSTGRES_MIGRATION_LOCK) as conn:
        await conn.run_sync(_upgrade)
