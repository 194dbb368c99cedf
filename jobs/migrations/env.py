"""Alembic environment: runs on the connection ``jobs.migrations_runner`` hands over, or on the URL
from ``VOXBATCH_DATABASE_URL`` when run by hand (``alembic -c jobs/alembic.ini ...``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

from jobs import models  # noqa: F401  (registers the tables)
from jobs.migrations_runner import include_name
from jobs.settings import Settings

target_metadata = SQLModel.metadata


def _configure(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
        render_as_batch=True,
        compare_type=True,
        include_name=include_name,  # not SQLite's FTS5 tables (migration 0007)
    )


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(Settings().resolved_database_url())
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
