"""A whole job in this process (``voxbatch run``): split, the windows side by side, reduce.

The same steps as the workers run, driven by the same ``next_steps``; a failure marks the job
failed with its reason and re-raises, and what was done stays stored, so running the same command
again resumes after the last finished window (the job is found by the recording's fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jobs.documents import DOCUMENT_NAMES
from jobs.engine import Samples
from jobs.errors import JobCancelled, PermanentError
from jobs.interrupts import join_interruptibly, wait_interruptibly
from jobs.models import Job, JobStatus
from jobs.options import JobOptions
from jobs.proceedings import build as build_proceedings
from jobs.runtime import Runtime
from jobs.steps.control import prepare_rerun
from jobs.steps.create import create_job
from jobs.steps.ending import fail, failure_reason
from jobs.steps.next import Step, next_steps
from jobs.steps.overall import summarize_job
from jobs.steps.reduce import reduce_job
from jobs.steps.split import split_job
from jobs.steps.window import run_window

Progress = Callable[[int, int], None]


def fingerprint(path: Path, parts: dict[str, Any]) -> str:
    """Same recording (by content and name) and same options → same job, so a re-run resumes it;
    a copy under another name is another job, with its own title."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps({**parts, "name": path.name}, sort_keys=True).encode())
    return h.hexdigest()


def job_for_file(
    rt: Runtime, path: Path, options: JobOptions, duration_s: float | None = None
) -> tuple[Job, bool]:
    """The job for this recording and options: a new one, or the earlier one to resume (True)."""
    engine = rt.engine
    # Priority decides when, not what: the same recording run again at another priority resumes.
    shaping = {k: v for k, v in options.__dict__.items() if k != "priority"}
    key = fingerprint(path, {"options": shaping, "engine": engine.name, "model": engine.model})
    job = rt.store.find_resumable(key)
    if job is None:
        job = create_job(
            rt, str(path), options, source_name=path.name, fingerprint=key, duration_s=duration_s
        )
        return job, False
    if job.status == JobStatus.succeeded:
        return job, False
    return prepare_rerun(rt, job), True


def run_local(rt: Runtime, job_id: str, progress: Progress | None = None) -> Job:
    try:
        _drive(rt, job_id, progress)
        job = rt.store.get(job_id)
        if job.status != JobStatus.succeeded:
            raise PermanentError(job.error or f"job {job_id} is {job.status}; nothing to reduce")
        return job
    except JobCancelled:
        raise
    except Exception as exc:
        fail(rt, job_id, failure_reason(exc, job_id))
        raise


def _drive(rt: Runtime, job_id: str, progress: Progress | None) -> None:
    previous: list[Step] | None = None
    # A succeeded job's proceedings are built right after its reduce (below), not asked again.
    while steps := [s for s in next_steps(rt, job_id) if s.kind != "proceedings"]:
        if steps == previous:
            raise PermanentError(f"job {job_id} makes no progress (stuck at {steps[0].kind})")
        previous = steps
        windows = [s.index for s in steps if s.kind == "window" and s.index is not None]
        if windows:
            _windows_side_by_side(rt, job_id, windows)
        for step in steps:
            if step.kind == "split":
                _split_while_windows_run(rt, job_id)
            elif step.kind == "overall":
                summarize_job(rt, job_id)
            elif step.kind == "reduce":
                reduce_job(rt, job_id)
                for after in next_steps(rt, job_id, after="reduce"):
                    if after.kind == "proceedings":
                        build_proceedings(rt, job_id)
        if progress is not None:
            job = rt.store.get(job_id)
            if job.windows_total is not None:
                progress(job.windows_done, job.windows_total)


def windows_at_once(rt: Runtime) -> int:
    """Windows run side by side: enough that their segments fill the request scheduler's
    ``max_inflight`` (so the server's batch stays full while one window ends and the next
    starts), plus one. Each running window holds its samples (57.6 MB per 30 minutes)."""
    return max(1, math.ceil(rt.settings.max_inflight / max(1, rt.settings.segment_concurrency))) + 1


def _windows_side_by_side(rt: Runtime, job_id: str, indexes: list[int]) -> None:
    pool = ThreadPoolExecutor(max_workers=windows_at_once(rt), thread_name_prefix=f"windows-{job_id}")
    try:
        futures = [pool.submit(run_window, rt, job_id, index) for index in indexes]
        wait_interruptibly(futures)
        failures = [f.exception() for f in futures if f.exception() is not None]
    except BaseException:
        # A Ctrl-C: do not wait for windows in the model (the caller aborts their requests).
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    if failures:
        raise failures[0]  # type: ignore[misc]


def _split_while_windows_run(rt: Runtime, job_id: str) -> None:
    """The split in this thread; each window it cuts goes to the model at once, in one of
    ``windows_at_once`` threads, so the decode and the model overlap and several windows' requests
    share the server's batch (the windows left when the split ends run in ``_drive``).

    A window cut while a window thread waits for work is handed over with its samples, so it is
    not decoded again from its FLAC; one cut while every thread is busy is not, so at most one
    window's samples more than the threads hold are in memory, whatever the length.
    """
    ready: queue.Queue[tuple[int, Samples | None] | None] = queue.Queue()
    waiting = threading.Semaphore(0)  # one release per thread waiting for a window
    failures: list[tuple[int, BaseException]] = []
    threads = windows_at_once(rt)

    def work() -> None:
        while True:
            waiting.release()
            item = ready.get()
            if item is None:
                return
            if not failures:
                try:
                    run_window(rt, job_id, item[0], samples=item[1])
                except BaseException as exc:
                    failures.append((item[0], exc))
            del item  # its samples, before waiting for the next window

    def cut(index: int, samples: Samples | None) -> None:
        idle = waiting.acquire(blocking=False)  # a thread is waiting: it takes this window now
        ready.put((index, samples if idle else None))

    workers = [
        threading.Thread(target=work, name=f"windows-{job_id}-{n}", daemon=True) for n in range(threads)
    ]
    for worker in workers:
        worker.start()
    try:
        split_job(rt, job_id, on_window=cut, keep_samples=True)
    except BaseException:
        for _ in workers:
            ready.put(None)  # not joined: a Ctrl-C must not wait for a window in the model
        raise
    for _ in workers:
        ready.put(None)
    for worker in workers:
        join_interruptibly(worker)
    if failures:
        # Windows run side by side: say the earliest window's failure, whichever failed first.
        raise min(failures, key=lambda failure: failure[0])[1]


def copy_documents(rt: Runtime, job: Job, out_dir: Path) -> Path:
    """Download a finished job's documents into ``out_dir``; returns the path of document.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in DOCUMENT_NAMES:
        rt.storage.download(job.output_prefix + name, out_dir / name)
    return out_dir / "document.md"
