"""Jobs on real workers: fan-out/fan-in, crashes, shutdown, a restarted broker, a flaky engine,
duplicate deliveries, cancel and retry, Flower's API.

Every job is the ~2 min marker talk in 1-minute windows (3 windows); the stand-in vLLM server
transcribes the marker tones it hears, so a document proves which audio each window carried.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from jobs.documents import DOCUMENT_NAMES
from jobs.models import JobStatus, WindowStatus
from tests.distributed.conftest import Stack
from tests.documents import check_document
from tests.fixtures.services import VOXBATCH, free_port, wait_until
from tests.speech import Recording
from workers.dispatch import queue_depths

WINDOW = ("--window-minutes", "1")
# Markers of the test recording (tests/fixtures/audio.py), all held by a stand-in told to hold them.
ALL_MARKERS = frozenset(range(12))


def fetch_and_check(stack: Stack, job_id: str, rec: Recording, out: Path) -> dict:
    done = stack.cluster.cli("fetch", job_id, "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str((out / "document.md").absolute())
    return check_document(out, rec)


def job_row(stack: Stack, job_id: str) -> dict:
    done = stack.cluster.cli("status", job_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def running_window(rt: object, job_id: str, owner_pid: int | None = None) -> object:

    for w in rt.store.windows(job_id):  # type: ignore[arg-type]
        mine = owner_pid is None or f":{owner_pid}:" in (w.lease_owner or "")
        if w.status == WindowStatus.running and w.lease_owner and mine:
            return w
    return None


def test_three_concurrent_jobs_complete_and_flower_lists_their_tasks(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    stack = stack_factory({"latency_s": 0.2})
    c = stack.cluster
    port = free_port()
    flower = subprocess.Popen(
        [*VOXBATCH, "flower", "--port", str(port)],
        env=c.env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        c.start_worker("cpu", 2)
        c.start_worker("gpu", 4)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(f"{base}/healthcheck") == 200, 30, "flower")
        jobs = [c.submit(marker_recording.path, *WINDOW) for _ in range(3)]
        assert len(set(jobs)) == 3
        for job_id in jobs:
            waited = c.wait(job_id, 120)
            assert waited.returncode == 0, (waited.stderr, c.logs())
        segments = 0
        for n, job_id in enumerate(jobs):
            doc = fetch_and_check(stack, job_id, marker_recording, tmp_path / f"out{n}")
            assert len(doc["windows"]) == 3
            segments += len(doc["segments"])
        # One engine call per speech segment, none repeated.
        assert len(stack.ok_transcriptions()) == segments

        row = job_row(stack, jobs[0])
        assert row["status"] == "succeeded"
        assert row["progress"]["windows_done"] == row["progress"]["windows_total"] == 3
        assert row["progress"]["segments_done"] == row["progress"]["segments_total"] > 3
        assert all(row["timings_s"][k] is not None for k in ("split", "windows", "reduce", "total"))
        listed = c.cli("list", "--status", "succeeded")
        assert listed.returncode == 0 and all(j in listed.stdout for j in jobs)

        # Flower saw the tasks through events; its search finds a job's tasks by the id in their args.
        assert httpx.get(f"{base}/api/tasks").status_code == 401

        def tasks_of(job_id: str) -> list[str] | None:
            r = httpx.get(f"{base}/api/tasks", params={"search": job_id}, auth=("ops", "secret"))
            names = sorted(t["name"] for t in r.json().values()) if r.status_code == 200 else []
            return names if len(names) == 6 else None

        names = wait_until(lambda: tasks_of(jobs[1]), 20, "flower to list the job's tasks", 0.5)
        # The overall summary of three windows is a gpu worker's task of its own.
        assert names == ["voxbatch.overall", "voxbatch.reduce", "voxbatch.split"] + ["voxbatch.window"] * 3
    finally:
        flower.terminate()
        flower.wait(20)


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return 0


def test_a_sigkilled_gpu_worker_costs_about_one_lease(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    lease = 6.0
    # No answer until the victim is dead: its window cannot finish before the kill.
    stack = stack_factory({"hold_markers": ALL_MARKERS}, VOXBATCH_LEASE_SECONDS=str(lease))
    c = stack.cluster
    c.start_worker("cpu", 1)
    victim = c.start_worker("gpu", 1)
    c.start_worker("gpu", 2)
    job_id = c.submit(marker_recording.path, *WINDOW)
    rt = c.runtime()
    window = wait_until(lambda: running_window(rt, job_id, victim.pid), 60, "a window on the victim")
    c.signal_worker(victim, signal.SIGKILL)
    killed_at = datetime.now(UTC)
    stack.vllm.release()
    waited = c.wait(job_id, 90)
    assert waited.returncode == 0, (waited.stderr, c.logs())

    redone = next(w for w in rt.store.windows(job_id) if w.index == window.index)  # type: ignore[attr-defined]
    assert redone.attempts == 2 and redone.status == WindowStatus.done
    # Taken over once the lease expired and the next sweep ran (+ slack for a loaded machine),
    # nowhere near Redis's visibility timeout (hours).
    took = (redone.started_at - killed_at).total_seconds()
    assert lease * 0.5 < took < lease + lease / 4 + 6, took
    fetch_and_check(stack, job_id, marker_recording, tmp_path / "out")


def test_sigterm_requeues_a_running_window_at_once(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    # A long lease: the sweep cannot be what brings the window back within this test.
    lease = 120.0
    # No answer until the worker has handed its window back: it cannot finish it first.
    stack = stack_factory({"hold_markers": ALL_MARKERS}, VOXBATCH_LEASE_SECONDS=str(lease))
    c = stack.cluster
    c.start_worker("cpu", 1)
    leaving = c.start_worker("gpu", 1)
    job_id = c.submit(marker_recording.path, *WINDOW)
    rt = c.runtime()
    window = wait_until(lambda: running_window(rt, job_id, leaving.pid), 60, "a window on the worker")
    c.signal_worker(leaving, signal.SIGTERM)  # 5 s of soft shutdown, then its messages go back
    c.start_worker("gpu", 3, wait=False)
    sent = datetime.now(UTC)
    wait_until(lambda: "handed back to the queue" in leaving.text(), 60, "the window handed back")
    stack.vllm.release()
    waited = c.wait(job_id, 90)
    assert waited.returncode == 0, (waited.stderr, c.logs())
    assert "handed back to the queue" in leaving.text(), leaving.text()[-3000:]

    redone = next(w for w in rt.store.windows(job_id) if w.index == window.index)  # type: ignore[attr-defined]
    assert redone.attempts == 2 and redone.status == WindowStatus.done
    # Claimed again by the other worker as soon as it was up: long before the lease would expire.
    assert (redone.started_at - sent).total_seconds() < 30 < lease
    fetch_and_check(stack, job_id, marker_recording, tmp_path / "out")


def test_jobs_complete_when_redis_restarts_mid_job(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    # The windows after the first (markers past one minute) wait for the restart: it is mid-job.
    later = frozenset(k for k, start, _ in marker_recording.markers if start >= 60.0)
    stack = stack_factory({"hold_markers": later})
    c = stack.cluster
    c.start_worker("cpu", 1)
    c.start_worker("gpu", 2)
    jobs = [c.submit(marker_recording.path, *WINDOW) for _ in range(2)]
    rt = c.runtime()

    wait_until(lambda: rt.store.get(jobs[0]).windows_done >= 1, 60, "a first window")
    stack.redis.restart(down_s=1.0)
    stack.vllm.release()
    for n, job_id in enumerate(jobs):
        waited = c.wait(job_id, 120)
        assert waited.returncode == 0, (waited.stderr, c.logs())
        fetch_and_check(stack, job_id, marker_recording, tmp_path / f"out{n}")


def test_jobs_complete_when_the_engine_answers_503_to_every_third_request(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    # No retries inside the engine client: every 503 reaches the task, which Celery retries.
    stack = stack_factory({"fail_every": 3}, VOXBATCH_ENGINE_RETRIES="0", VOXBATCH_MAX_WINDOW_ATTEMPTS="12")
    c = stack.cluster
    c.start_worker("cpu", 1)
    c.start_worker("gpu", 3)
    jobs = [c.submit(marker_recording.path, *WINDOW) for _ in range(2)]
    for n, job_id in enumerate(jobs):
        waited = c.wait(job_id, 150)
        assert waited.returncode == 0, (waited.stderr, c.logs())
        fetch_and_check(stack, job_id, marker_recording, tmp_path / f"out{n}")
    log = stack.vllm.stats()["log"]
    assert sum(e["status"] == 503 for e in log) >= 3
    rt = c.runtime()

    # The 503s were the server's, not the windows': Celery retried them, and none used up one of a
    # window's attempts (those are for windows that keep killing their worker).
    assert all(w.attempts == 1 for j in jobs for w in rt.store.windows(j))


def test_a_window_delivered_twice_calls_the_engine_once_and_writes_the_same_bytes(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:

    from jobs.settings import Settings
    from workers.celery_app import WINDOW as WINDOW_TASK
    from workers.celery_app import make_celery

    # No answer until the second copy has been handled: the first copy is still running then.
    stack = stack_factory({"hold_markers": ALL_MARKERS})
    c = stack.cluster
    app = make_celery(Settings(broker_url=c.env["VOXBATCH_BROKER_URL"]))
    c.start_worker("cpu", 1)
    c.start_worker("gpu", 4)
    job_id = c.submit(marker_recording.path, *WINDOW)
    rt = c.runtime()
    first = wait_until(lambda: running_window(rt, job_id), 60, "a running window")
    # A second copy while the first runs (what a visibility-timeout redelivery does) ...
    app.send_task(WINDOW_TASK, args=[job_id, first.index]).get(timeout=30)  # type: ignore[attr-defined]
    assert running_window(rt, job_id) is not None
    stack.vllm.release()
    waited = c.wait(job_id, 60)
    assert waited.returncode == 0, (waited.stderr, c.logs())
    total = rt.store.get(job_id).windows_total
    assert total is not None
    assert len(stack.ok_transcriptions()) == rt.store.get(job_id).segments_total  # one call each

    def snapshot() -> dict[str, str]:
        keys = [w.result_key for w in rt.store.windows(job_id)]
        keys += [f"jobs/{job_id}/output/{n}" for n in DOCUMENT_NAMES]
        keys += list(rt.storage.list(f"jobs/{job_id}/windows/"))
        return {k: hashlib.sha256(rt.storage.get_bytes(k)).hexdigest() for k in keys}

    before, posts = snapshot(), stack.vllm.stats()["posts"]
    # ... and every window twice more after the job is done.
    results = [app.send_task(WINDOW_TASK, args=[job_id, i]) for i in range(total) for _ in range(2)]
    for r in results:
        r.get(timeout=30)
    assert stack.vllm.stats()["posts"] == posts
    assert snapshot() == before
    assert rt.store.get(job_id).status == JobStatus.succeeded


def test_cancel_stops_a_job_and_retry_resumes_from_the_windows_done(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:

    # Every window after the first (markers past its one minute) waits in the stand-in until
    # released: the cancel lands while windows remain, however fast the machine.
    later = frozenset(k for k, start, _ in marker_recording.markers if start >= 60.0)
    stack = stack_factory({"hold_markers": later})
    c = stack.cluster
    c.start_worker("cpu", 1)
    c.start_worker("gpu", 1)
    job_id = c.submit(marker_recording.path, *WINDOW)
    rt = c.runtime()
    wait_until(lambda: rt.store.get(job_id).windows_done >= 1, 60, "a first window")
    wait_until(lambda: stack.vllm.stats()["held"] > 0, 60, "a later window at the model")
    cancelled = c.cli("cancel", job_id)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    waited = c.wait(job_id, 10)
    assert waited.returncode == 1 and "cancelled" in waited.stderr
    # The window in flight gets its answers and finishes; nothing new starts: once no window
    # runs and no message is left in the broker, nothing is left to start one.
    stack.vllm.release()
    wait_until(
        lambda: (
            stack.vllm.stats()["holding"] == 0
            and not rt.store.has_running_window(job_id)
            and not any(queue_depths(c.env["VOXBATCH_BROKER_URL"]).values())
        ),
        60,
        "the window in flight to finish",
    )
    assert rt.store.get(job_id).status == JobStatus.cancelled
    assert rt.store.pending_windows(job_id), "cancel should have stopped the job before its last window"
    done_before = {w.index: w.finished_at for w in rt.store.windows(job_id) if w.status == WindowStatus.done}
    assert c.cli("fetch", job_id, "--output-dir", str(tmp_path / "x")).returncode == 2

    retried = c.cli("retry", job_id)
    assert retried.returncode == 0, retried.stderr
    waited = c.wait(job_id, 60)
    assert waited.returncode == 0, (waited.stderr, c.logs())
    after = {w.index: w.finished_at for w in rt.store.windows(job_id)}
    assert all(after[i] == t for i, t in done_before.items())  # not redone
    assert len(stack.ok_transcriptions()) == rt.store.get(job_id).segments_total
    fetch_and_check(stack, job_id, marker_recording, tmp_path / "out")
    # Retrying a finished job is a one-line input error.
    again = c.cli("retry", job_id)
    assert again.returncode == 2 and "only failed or cancelled" in again.stderr


def test_wait_times_out_with_exit_2_and_unknown_jobs_are_one_line_errors(
    stack_factory: Callable[..., Stack], marker_recording: Recording
) -> None:
    stack = stack_factory()
    c = stack.cluster  # no workers: the job stays queued
    job_id = c.submit(marker_recording.path, *WINDOW)
    waited = c.wait(job_id, 1)
    assert waited.returncode == 2 and "still queued" in waited.stderr
    missing = c.cli("status", "nosuchjob")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    bad = c.cli("submit", str(marker_recording.path), "--window-minutes", "0.5")
    assert bad.returncode == 2 and "--window-minutes" in bad.stderr


@pytest.fixture(autouse=True)
def _no_leftover_time(request: pytest.FixtureRequest) -> None:
    request.node.add_marker(pytest.mark.timeout(300))


def test_jobs_whose_messages_were_lost_are_enqueued_again(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    # Redis losing its queues (no AOF, a FLUSHDB by hand) must not strand jobs: the sweep sees a
    # job with no progress, no running window and an empty queue, and enqueues its work again.
    import redis

    stack = stack_factory(VOXBATCH_ORPHAN_AFTER_S="4", VOXBATCH_LEASE_SECONDS="8")
    c = stack.cluster
    broker = redis.Redis.from_url(stack.redis.url)
    queued = c.submit(marker_recording.path, *WINDOW)  # no worker yet: its split waits in "cpu"
    assert broker.llen("cpu") == 1
    broker.delete("cpu")
    c.start_worker("cpu", 1)
    rt = c.runtime()

    wait_until(lambda: rt.store.get(queued).status == JobStatus.transcribing, 60, "the split, enqueued again")
    wait_until(lambda: broker.llen("gpu") >= 2, 30, "the windows' messages")
    broker.delete("gpu")  # the windows' messages are gone too
    c.start_worker("gpu", 2)
    waited = c.wait(queued, 120)
    assert waited.returncode == 0, (waited.stderr, c.logs())
    fetch_and_check(stack, queued, marker_recording, tmp_path / "out")
    assert "no message on the queue" in c.logs()


def test_a_long_split_stops_once_for_a_waiting_clip_and_resumes_after_its_windows(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    # A batch job's split stops between two windows while an interactive job waits for a cpu slot,
    # and its split, sent again, resumes after the windows it stored. The interactive job waits
    # here as a row whose split is not sent yet, so the stop happens however fast the machine is.
    from jobs.options import JobOptions
    from jobs.steps.create import create_job
    from jobs.steps.next import next_steps
    from tests.speech import duration_s
    from workers import meter

    stack = stack_factory()
    c = stack.cluster
    rt = c.runtime()
    clip = create_job(
        rt,
        str(marker_recording.path),
        JobOptions(window_minutes=1),
        duration_s=duration_s(marker_recording.path),
    )
    c.start_worker("cpu", 1)
    c.start_worker("gpu", 1)
    long = c.submit(marker_recording.path, *WINDOW, "--priority", "batch")
    waited = c.wait(long, 120)
    assert waited.returncode == 0, (waited.stderr, c.logs())
    logs = c.logs()
    assert logs.count(f"job {long}: split stopped after 1 windows to make room") == 1, logs
    assert f"job {long}: resuming the split after 1 stored windows" in logs
    assert rt.store.get(long).windows_total == 3
    assert len(stack.ok_transcriptions()) == rt.store.get(long).segments_total  # nothing heard twice
    fetch_and_check(stack, long, marker_recording, tmp_path / "long")

    meter.enqueue(rt, next_steps(rt, clip.id))  # the waiting job's split goes out now
    waited = c.wait(clip.id, 120)
    assert waited.returncode == 0, (waited.stderr, c.logs())
    assert f"job {clip.id}: split stopped" not in c.logs()  # nothing waited for it to make room
