"""A step whose database connection is dropped mid-statement (what a PostgreSQL restart does to
every connection) is retried; the job succeeds and the window's attempts are not used up.

The drop is made certain, not timed: the test holds the job's row lock while the windows' answers
arrive, so a window's progress write waits on it; the test then terminates that waiting backend
(``pg_terminate_backend``: SQLSTATE 57P01, as in a fast shutdown) and lets go of the lock.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg

from jobs.models import JobStatus
from tests.distributed.conftest import Stack
from tests.distributed.test_workers import ALL_MARKERS, WINDOW, fetch_and_check
from tests.fixtures.services import wait_until
from tests.speech import Recording


def _backends_waiting_on_a_lock(conn: psycopg.Connection, database: str) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = %s AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return [int(r[0]) for r in rows]


def test_a_connection_dropped_mid_step_is_retried_and_the_job_succeeds(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    stack = stack_factory({"hold_markers": ALL_MARKERS})
    c = stack.cluster
    c.start_worker("cpu", 1)
    c.start_worker("gpu", 4)
    job_id = c.submit(marker_recording.path, *WINDOW)
    rt = c.runtime()
    wait_until(
        lambda: rt.store.get(job_id).status == JobStatus.transcribing and stack.vllm.stats()["holding"] > 0,
        60,
        "the split done and a window's answers held",
    )
    database = stack.database_url.rsplit("/", 1)[-1]
    with (
        psycopg.connect(stack.database_url) as locker,
        psycopg.connect(stack.database_url, autocommit=True) as admin,
    ):
        locker.execute("SELECT id FROM job WHERE id = %s FOR UPDATE", (job_id,))
        stack.vllm.release()
        waiting = wait_until(
            lambda: _backends_waiting_on_a_lock(admin, database),
            60,
            "a window's write waiting on the job's row",
        )
        for pid in waiting:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        locker.rollback()

    waited = c.wait(job_id, 120)
    assert waited.returncode == 0, (waited.stderr, c.logs())
    assert rt.store.get(job_id).status == JobStatus.succeeded
    # The drop reached a step, which Celery retried (the whole logs: c.logs() keeps their ends).
    assert any("DatabaseUnavailable" in w.text() for w in c.workers)
    # The database's failure, not the windows': no attempt was used up.
    assert all(w.attempts == 1 for w in rt.store.windows(job_id))
    fetch_and_check(stack, job_id, marker_recording, tmp_path / "out")
