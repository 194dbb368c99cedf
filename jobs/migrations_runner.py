"""Applies the Alembic migrations in jobs/migrations/ on start (``Database.migrate``).

Many processes start at once (worker pools, the API, ``voxbatch up``), so the upgrade is serialised:
a PostgreSQL advisory lock held for the migration's transaction, or an exclusive file lock next to a
SQLite database. A database already at head is recognised without taking the lock. A database made
before migrations existed is stamped at the first revision, not re-created.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001"
# Any constant shared by every voxbatch process; pg_advisory_xact_lock takes a bigint.
ADVISORY_LOCK_ID = 0x766F78626174


# SQLite's FTS5 tables of the transcript index and their shadow tables (migration 0007): made by
# raw DDL, not modelled, so comparisons of the models with a database leave them out.
FTS_TABLE_PREFIX = "searchsegment_fts_"


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name`` hook: everything but the unmodelled FTS5 tables."""
    return not (type_ == "table" and (name or "").startswith(FTS_TABLE_PREFIX))


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return
    with _serialised(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
        current = current_revision(conn)
        if current == head:
            return
        config = alembic_config()
        config.attributes["connection"] = conn
        if current is None and inspect(conn).has_table("job"):
            log.warning("database made before migrations existed: stamping revision %s", FIRST_REVISION)
            command.stamp(config, FIRST_REVISION)
        log.info("migrating the database from %s to %s", current, head)
        command.upgrade(config, "head")


@contextmanager
def _serialised(engine: Engine) -> Iterator[None]:
    """A file lock for SQLite (PostgreSQL serialises with its advisory lock instead)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate-lock")
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
