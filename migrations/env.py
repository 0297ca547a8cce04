"""Alembic environment: the URL and the metadata come from the service itself."""

from __future__ import annotations

from alembic import context

from core.db import Timeouts, make_engine
from core.models import Base
from core.settings import Settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("database_url") or Settings().db_url


def run_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    # DDL may wait on locks or build indexes for long: no statement limit, no answer deadline.
    engine = make_engine(_url(), Timeouts(statement=0, answer=None))
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # Batch mode drops and re-creates tables: with foreign keys enforced, dropping one
            # would fire ON DELETE on the rows of every table pointing at it. (Outside a
            # transaction: SQLite ignores this pragma inside one.)
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things in place; batch mode copies the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
