"""Alembic's entry point for the key store's migrations.

There is no alembic.ini: ``chatgpt_proxy.keystore.migrator`` configures Alembic in code and hands
this script an open connection (inside a transaction it owns, holding the migration lock), so
the CLI, the server and the tests all migrate the same way.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from chatgpt_proxy.keystore.schema import VERSION_TABLE, metadata


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if context.is_offline_mode() or not isinstance(_connection, sa.Connection):
    raise RuntimeError(
        "the key store's migrations run through chatgpt_proxy.keystore.migrator, "
        "which passes an open connection; offline (--sql) mode is not supported"
    )
run_migrations(_connection)
