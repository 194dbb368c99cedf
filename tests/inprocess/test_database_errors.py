"""The database's passing trouble is transient (jobs/db.py): a pool with no free connection, a
dropped connection or a refused transaction reaches the steps as ``DatabaseUnavailable`` (retried,
never a job's failure), and the outbox relay and the meter hold no more connections than they need.

A pool of one connection makes "no free connection" certain rather than timed: the test holds it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.db import Database
from jobs.errors import DatabaseUnavailable, TransientError
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.create import create_job
from jobs.steps.split import split_job
from jobs.storage import LocalStorage
from jobs.store import JobStore
from tests.inprocess.conftest import FakeEngine, RecordingDispatcher
from tests.speech import Recording
from workers import meter
from workers.audio import FfmpegAudio


def one_connection(url: str) -> Database:
    """A pool of exactly one connection that gives up waiting for it quickly."""
    db = Database(url, pool_size=1, max_overflow=0, pool_timeout=0.5)
    db.migrate()
    return db


@pytest.fixture
def small_pool_rt(rt: Runtime, engine: FakeEngine, tmp_path: Path) -> Runtime:
    return Runtime(
        db=one_connection(rt.db.url),
        storage=LocalStorage(tmp_path / "store"),
        audio=FfmpegAudio(),
        settings=rt.settings,
        engine_factory=lambda: engine,
    )


def test_no_free_connection_in_the_pool_is_transient(rt: Runtime) -> None:
    db = one_connection(rt.db.url)
    # Another thread's session holds the only connection.
    with db.engine.connect(), pytest.raises(DatabaseUnavailable) as caught:
        JobStore(db).find("no-such-job")
    assert isinstance(caught.value, TransientError)
    assert (
        str(caught.value)
        == "the database could not answer now (no pooled connection was free in time); this is retried"
    )


def test_a_broken_statement_is_not_transient(rt: Runtime) -> None:
    from sqlalchemy import text

    with pytest.raises(Exception) as caught, rt.db.session() as s:
        s.execute(text("SELECT * FROM no_such_table"))
    assert not isinstance(caught.value, TransientError)


def test_the_relay_needs_one_connection_while_it_holds_the_outbox_lock(small_pool_rt: Runtime) -> None:
    # The relay used to read each step's job (its broker priority) in a second session while its
    # first held the outbox lock: with every other connection of the pool waiting on that lock (a
    # gpu worker's windows ending together), it waited on the pool itself until the pool's timeout.
    rt = small_pool_rt
    rt.dispatcher = d = RecordingDispatcher()
    job = create_job(rt, "s3://b/talk.flac", JobOptions(), enqueue=True)
    assert meter.relay(rt) == 1
    assert [(s.kind, s.job_id) for s in d.sent] == [("split", job.id)]


def test_the_meter_needs_one_connection_at_a_time(small_pool_rt: Runtime, tones: Recording) -> None:
    rt = small_pool_rt
    rt.dispatcher = d = RecordingDispatcher()
    job = create_job(rt, str(tones.path), JobOptions())
    split_job(rt, job.id)
    assert meter.meter(rt) == 2
    assert [(s.job_id, s.index) for s in d.sent] == [(job.id, 0), (job.id, 1)]


def test_threads_of_one_process_share_the_meters_turns() -> None:
    """A call while a turn runs leaves its request and returns; the running thread turns once
    more, with the windows taken meanwhile: one connection waits on the lock, not one per thread."""
    turns = meter.Turns()
    entered, release = threading.Event(), threading.Event()
    seen: list[frozenset[tuple[str, int]]] = []
    results: list[int] = []

    def turn(carried: frozenset[tuple[str, int]]) -> int:
        seen.append(carried)
        if len(seen) == 1:
            entered.set()
            assert release.wait(30)
        return 1

    first = threading.Thread(target=lambda: results.append(turns.run(turn, ("a", 0))))
    first.start()
    assert entered.wait(30)
    assert turns.run(turn, ("b", 1)) == 0
    assert turns.run(turn, ("c", 2)) == 0
    assert turns.run(turn) == 0
    release.set()
    first.join(30)
    assert seen == [frozenset({("a", 0)}), frozenset({("b", 1), ("c", 2)})]
    assert results == [2]
    assert turns.run(turn) == 1  # idle again: the caller turns itself


def test_a_turn_that_raises_leaves_the_turns_idle() -> None:
    turns = meter.Turns()

    def broken(_: frozenset[tuple[str, int]]) -> int:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        turns.run(broken)
    assert turns.run(lambda _: 3) == 3


def test_a_window_claimed_again_by_its_own_task_counts_one_attempt(
    rt: Runtime, tones: Recording, make_runtime: Callable[..., Runtime]
) -> None:
    # Its try could not hand it back (the database was away then): the retry in the same process
    # continues the same attempt; another worker's claim after the lease ran out is a new one.
    job = create_job(rt, str(tones.path), JobOptions())
    split_job(rt, job.id)
    first = rt.store.claim_window(job.id, 0, "gpu:1:task", lease_s=30)
    again = rt.store.claim_window(job.id, 0, "gpu:1:task", lease_s=-1)
    assert first is not None and again is not None
    assert (first.attempts, again.attempts) == (1, 1)
    other = rt.store.claim_window(job.id, 0, "gpu:2:task", lease_s=30)
    assert other is not None and other.attempts == 2
