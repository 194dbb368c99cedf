"""Database engine and sessions. SQLite on one machine, PostgreSQL when workers spread out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine as SAEngine
from sqlmodel import Session, create_engine

from jobs import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from jobs.migrations_runner import upgrade


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        # A gpu worker's windows (VOXBATCH_GPU_CONCURRENCY, 16) each renew a lease and record
        # progress from their own threads: SQLAlchemy's default 5 + 10 connections ran out with 32
        # windows (QueuePool timeouts in the storm benchmark). The overflow is only opened under
        # such bursts and closed after.
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 25}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Several processes (worker pools, the API) share one file: wait for locks instead
            # of failing at once.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: SAEngine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def migrate(self) -> None:
        """Bring the schema to the current version."""
        upgrade(self.engine)

    def ping(self) -> None:
        """One round trip; raises when the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (status, API) run while a worker writes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
