"""The outbox on the real stack (issue 25): a submitter SIGKILLed right after its job row commits
costs the cpu workers' relay poll, seconds, not the sweep's orphan_after_s (900 s); a broker that is
away when a job is submitted leaves the job queued, not failed, and it runs once the broker is back.
Windows reach the gpu queue through the meter: every window records when it was sent."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jobs.db import Database
from jobs.models import JobStatus, Window
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.steps.create import create_job
from jobs.steps.next import Step
from jobs.storage import LocalStorage
from tests.distributed.conftest import Stack
from tests.documents import check_document
from tests.fixtures.services import Postgres, wait_until
from tests.speech import Recording
from workers import meter
from workers.dispatch import queue_depths

KILLED_AFTER_COMMIT = textwrap.dedent(
    """
    import os, signal, sys
    from jobs.options import JobOptions
    from jobs.settings import Settings
    from jobs.steps.create import create_job
    from workers.runtime import build_runtime

    rt = build_runtime(Settings())
    job = create_job(rt, sys.argv[1], JobOptions(window_minutes=1), enqueue=True)
    print(job.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # committed; never relayed
    """
)


@pytest.fixture(autouse=True)
def _bounded(request: pytest.FixtureRequest) -> None:
    request.node.add_marker(pytest.mark.timeout(300))


def test_a_submitter_killed_after_the_job_row_costs_seconds(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    stack = stack_factory()  # orphan_after_s stays at its 900 s default
    c = stack.cluster
    c.start_worker("cpu", 1)
    c.start_worker("gpu", 2)
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_COMMIT, str(marker_recording.path)],
        env={**c.env, "PYTHONPATH": str(Path(__file__).parents[2])},
        cwd=c.tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    job_id = done.stdout.split()[0]
    killed_at = datetime.now(UTC)
    rt = c.runtime()
    job = wait_until(lambda: rt.store.get(job_id).split_started_at, 30, "a cpu worker to relay the split")
    assert (job - killed_at).total_seconds() < 15
    waited = c.wait(job_id, 120)
    assert waited.returncode == 0, (waited.stderr, c.logs())
    assert rt.store.queued_steps() == []
    windows = rt.store.windows(job_id)
    assert len(windows) == 3 and all(w.dispatched_at is not None for w in windows)
    fetch = c.cli("fetch", job_id, "--output-dir", str(tmp_path / "out"))
    assert fetch.returncode == 0, fetch.stderr
    check_document(tmp_path / "out", marker_recording)


def test_a_job_submitted_while_the_broker_is_away_runs_once_it_is_back(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    stack = stack_factory()
    c = stack.cluster
    stack.redis.stop()
    try:
        submitted = c.cli("submit", str(marker_recording.path), "--window-minutes", "1")
    finally:
        stack.redis.start()
    # Before the outbox the job failed here ("could not reach the broker"); now it is durable.
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    rt = c.runtime()
    assert rt.store.get(job_id).status == JobStatus.queued
    assert [s.job_id for s in rt.store.queued_steps()] == [job_id]
    c.start_worker("cpu", 1)
    c.start_worker("gpu", 2)
    waited = c.wait(job_id, 120)
    assert waited.returncode == 0, (waited.stderr, c.logs())
    fetch = c.cli("fetch", job_id, "--output-dir", str(tmp_path / "out"))
    assert fetch.returncode == 0, fetch.stderr
    check_document(tmp_path / "out", marker_recording)


KILLED_AFTER_ENDING = textwrap.dedent(
    """
    import os, signal, sys
    from jobs.settings import Settings
    from jobs.steps import ending
    from workers.runtime import build_runtime

    rt = build_runtime(Settings())
    # Dies right after the job's end commits, before anything that follows it (the end hooks) runs.
    rt.on_job_end.insert(0, lambda rt, job_id: os.kill(os.getpid(), signal.SIGKILL))
    ending.cancel(rt, sys.argv[1])
    """
)


class WebhookReceiver:
    """Records every POST's body; answers 204."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_process_killed_right_after_a_job_ends_still_announces_the_end(
    stack_factory: Callable[..., Stack], marker_recording: Recording
) -> None:
    # The end and its announcement (the webhook, the drop folder's outbox result: one cpu step) are
    # one commit: a canceller killed between the two used to lose the webhook for good.
    receiver = WebhookReceiver()
    stack = stack_factory(VOXBATCH_WEBHOOK_ALLOW_PRIVATE="1")
    c = stack.cluster
    c.start_worker("cpu", 1)  # no gpu worker: the job is still running when it is cancelled
    rt = c.runtime()
    job = create_job(
        rt, str(marker_recording.path), JobOptions(window_minutes=1, webhook_url=receiver.url), enqueue=True
    )
    wait_until(lambda: rt.store.get(job.id).status == JobStatus.transcribing, 60, "the split to end")
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_ENDING, job.id],
        env={**c.env, "PYTHONPATH": str(Path(__file__).parents[2])},
        cwd=c.tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert rt.store.get(job.id).status == JobStatus.cancelled
    try:
        wait_until(
            lambda: [b for b in receiver.bodies if b["job"]["id"] == job.id],
            60,
            "the cancelled job's webhook (a cpu worker relays its announce step)",
        )
    finally:
        receiver.server.shutdown()
    assert [b["job"]["status"] for b in receiver.bodies] == ["cancelled"]
    assert rt.store.queued_steps() == []


def test_an_announcement_whose_message_redis_lost_is_sent_again(
    stack_factory: Callable[..., Stack], marker_recording: Recording
) -> None:
    # The announce step stays in the outbox until a cpu worker has done it: its message lost with
    # Redis's data (a restart without the AOF, the last second before a crash) is sent again.
    receiver = WebhookReceiver()
    stack = stack_factory(VOXBATCH_WEBHOOK_ALLOW_PRIVATE="1", VOXBATCH_ANNOUNCE_RESEND_S="5")
    c = stack.cluster
    rt = c.runtime()
    job = create_job(
        rt, str(marker_recording.path), JobOptions(window_minutes=1, webhook_url=receiver.url), enqueue=True
    )
    cancelled = c.cli("cancel", job.id)  # no worker yet: the CLI relays the announce step to Redis
    assert cancelled.returncode == 0, cancelled.stderr
    assert queue_depths(stack.redis.url)["cpu"] >= 1
    stack.redis.stop()
    for f in stack.redis.directory.rglob("*"):
        if f.is_file() and f.name != "redis.log":
            f.unlink()
    stack.redis.start()
    assert queue_depths(stack.redis.url)["cpu"] == 0  # the message is gone
    c.start_worker("cpu", 1)
    try:
        wait_until(
            lambda: [b for b in receiver.bodies if b["job"]["id"] == job.id],
            90,
            "the cancelled job's webhook (its announce step sent again from the outbox)",
        )
    finally:
        receiver.server.shutdown()
    assert {b["job"]["status"] for b in receiver.bodies} == {"cancelled"}
    wait_until(lambda: rt.store.queued_steps() == [], 30, "the announce step to leave the outbox once done")


def test_meters_and_relays_racing_on_postgresql_send_each_thing_once(
    postgres: Postgres, tmp_path: Path
) -> None:
    """The ``dispatchlock`` row lock serialises meters and relays in separate connections."""
    settings = Settings(data_dir=tmp_path, database_url=postgres.fresh_database_url(), gpu_queue_target=5)
    db = Database(settings.resolved_database_url())
    db.migrate()
    rt = Runtime(
        db=db, storage=LocalStorage(tmp_path / "s"), audio=None, settings=settings, engine_factory=None
    )  # type: ignore[arg-type]
    jobs = []
    for n in range(4):
        job = create_job(rt, f"s3://b/talk{n}.mp3", JobOptions(), tenant=f"t{n % 2}", enqueue=True)
        assert rt.store.transition(job.id, [JobStatus.queued], JobStatus.splitting)
        rows = [Window(job_id=job.id, index=i, start_s=i * 60.0, end_s=(i + 1) * 60.0) for i in range(3)]
        assert rt.store.add_windows(job.id, rows, duration_s=180.0)
        jobs.append(job.id)
    sent: list[Step] = []
    lock = threading.Lock()

    class Shared:
        def send(self, step: Step, retry: bool = True, priority: int = 0) -> None:
            with lock:
                sent.append(step)

    rt.dispatcher = Shared()
    barrier = threading.Barrier(8)

    def race(n: int) -> int:
        barrier.wait()
        return meter.relay(rt) if n % 2 else meter.meter(rt)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(race, range(8)))
    splits = [s.job_id for s in sent if s.kind == "split"]
    windows = [(s.job_id, s.index) for s in sent if s.kind == "window"]
    assert sorted(splits) == sorted(jobs)
    assert len(windows) == len(set(windows)) == 5  # the target, not one more
    # Fair share: the two tenants alternate (t0 owns jobs 0 and 2, t1 jobs 1 and 3).
    assert windows == [(jobs[0], 0), (jobs[1], 0), (jobs[0], 1), (jobs[1], 1), (jobs[0], 2)]
