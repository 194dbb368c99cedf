"""Database engine and sessions. SQLite on one machine, PostgreSQL when workers spread out.

Every session and connection handed out here translates the database's passing trouble (no pooled
connection free in time, a connection refused or dropped, as by a PostgreSQL restart, a transaction
refused as a serialization failure or deadlock, SQLite's lock still busy) into
``jobs.errors.DatabaseUnavailable``, a ``TransientError``: a step retries it with backoff
(``workers.tasks``), the API answers 503, and no job fails because of it. What ``transient`` does
not name (a constraint violated, a bad query) propagates unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine as SAEngine
from sqlmodel import Session, create_engine

from jobs import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from jobs.errors import DatabaseUnavailable
from jobs.migrations_runner import upgrade

# PostgreSQL's SQLSTATEs after which the same transaction may pass later: classes 08 (connection
# exception), 40 (transaction rollback: serialization failure, deadlock) and 53 (insufficient
# resources: too many connections, out of memory, disk full), and the server shutting down or
# starting (57P01 admin, 57P02 crash, 57P03 cannot connect now, 57P05 idle session timeout), a
# lock not available (55P03).
_TRANSIENT_CLASSES = ("08", "40", "53")
_TRANSIENT_CODES = ("57P01", "57P02", "57P03", "57P05", "55P03")


def transient(exc: BaseException) -> bool:
    """True when ``exc`` is the database's passing trouble, not the statement's fault."""
    if isinstance(exc, sa_exc.TimeoutError):
        return True  # no pooled connection became free within pool_timeout
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True  # SQLAlchemy saw the connection die (its dialect's is_disconnect)
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code:
        return str(code)[:2] in _TRANSIENT_CLASSES or str(code) in _TRANSIENT_CODES
    if isinstance(orig, sqlite3.OperationalError):
        said = str(orig).lower()
        return "locked" in said or "busy" in said
    # psycopg without a SQLSTATE: the server could not be reached or went away mid-statement.
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)


def _unavailable(exc: BaseException) -> DatabaseUnavailable:
    """The error users and logs see: what kind of trouble, never the driver's text (it names hosts
    and ports, which an API answer must not show); the original stays as ``__cause__``."""
    if isinstance(exc, sa_exc.TimeoutError):
        what = "no pooled connection was free in time"
    else:
        orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else None
        code = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
        if code.startswith("40"):
            what = f"it refused the transaction (SQLSTATE {code}: serialization failure or deadlock)"
        elif code:
            what = f"SQLSTATE {code}"
        elif isinstance(orig, sqlite3.OperationalError):
            what = "it is locked by another writer"
        else:
            what = "the connection was refused or dropped"
    return DatabaseUnavailable(f"the database could not answer now ({what}); this is retried")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if transient(exc):
            raise _unavailable(exc) from exc
        raise


class Database:
    def __init__(
        self, url: str, pool_size: int = 5, max_overflow: int = 25, pool_timeout: float = 30.0
    ) -> None:
        self.url = url
        # A gpu worker's windows (VOXBATCH_GPU_CONCURRENCY) each claim, renew a lease and record
        # progress from their own threads, briefly; the meter and the relay wait on their locks
        # with one connection per process (workers/meter.py). The overflow is only opened under
        # bursts (many windows starting together) and closed after.
        kwargs: dict[str, Any] = {
            "pool_pre_ping": True,
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_timeout": pool_timeout,
        }
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
        with self.connect() as conn:
            conn.execute(text("SELECT 1"))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with _translated(), Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A Core connection (no ORM), with the sessions' translation of passing trouble."""
        with _translated(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A Core connection in a transaction committed at the end of the block."""
        with _translated(), self.engine.begin() as conn:
            yield conn


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (status, API) run while a worker writes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
