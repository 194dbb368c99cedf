"""The fleet's queries (``JobStore.backlog``, ``reducing_by_tenant``, ``drop_ledger.ledger_counts``)
on SQLite and PostgreSQL: grouped and joined reads that each dialect must accept alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import col

from jobs.db import Database
from jobs.models import Job, JobStatus, Priority, Window, WindowStatus
from jobs.settings import Settings
from jobs.store import JobStore
from tests.fixtures.services import Postgres
from workers.drop_ledger import DropItem, claim, ledger_counts, record_error, record_job


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'v.db'}"
    else:
        postgres: Postgres = request.getfixturevalue("postgres")
        url = Settings(database_url=postgres.fresh_database_url()).resolved_database_url()
    database = Database(url)
    database.migrate()
    return database


def job(store: JobStore, tenant: str | None, priority: Priority, duration_s: float) -> Job:
    return store.add(Job(source="s.mp3", tenant=tenant, priority=priority, duration_s=duration_s))


def test_backlog_and_ledger_counts(db: Database) -> None:
    store = JobStore(db)
    queued = job(store, "drop", Priority.batch, 7200.0)
    splitting = job(store, "alpha", Priority.interactive, 3000.0)
    store.transition(splitting.id, [JobStatus.queued], JobStatus.splitting)
    store.add_window(Window(job_id=splitting.id, index=0, start_s=0.0, end_s=1800.0))
    split = job(store, "alpha", Priority.interactive, 600.0)
    store.transition(split.id, [JobStatus.queued], JobStatus.splitting)
    windows = [Window(job_id=split.id, index=i, start_s=i * 300.0, end_s=(i + 1) * 300.0) for i in range(2)]
    store.add_windows(split.id, windows, 600.0)
    done = store.windows(split.id)[0]
    store._update(Window, [col(Window.id) == done.id], status=WindowStatus.done)
    ended = job(store, None, Priority.interactive, 100.0)
    store.transition(ended.id, [JobStatus.queued], JobStatus.cancelled)

    # queued: all 7200 s; splitting: its window (1800) + the rest not yet cut (1200); split: one
    # window of 300 s left; cancelled: nothing.
    assert store.backlog() == {("drop", "batch"): 7200.0, ("alpha", "interactive"): 1800.0 + 1200.0 + 300.0}
    assert store.reducing_by_tenant() == {}

    rows = [claim(db, DropItem("b", f"inbox/{n}.wav", "e", 1)) for n in range(4)]
    record_job(db, rows[0] or 0, queued.id)
    record_job(db, rows[1] or 0, ended.id)
    record_error(db, rows[2] or 0, "not audio")
    assert ledger_counts(db) == {"seen": 4, "claimed": 1, "submitted": 1, "done": 1, "rejected": 1}
