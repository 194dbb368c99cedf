"""A whole job in this process (``voxbatch run``): split, every window in order, reduce.

The same steps as the workers run, driven by the same ``next_steps``; a failure marks the job
failed with its reason and re-raises, and what was done stays stored, so running the same command
again resumes after the last finished window (the job is found by the recording's fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.documents import DOCUMENT_NAMES
from jobs.engine import Samples
from jobs.errors import JobCancelled, PermanentError
from jobs.models import Job, JobStatus
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.control import prepare_rerun
from jobs.steps.create import create_job
from jobs.steps.ending import fail, failure_reason
from jobs.steps.next import Step, next_steps
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
    while steps := next_steps(rt, job_id):
        if steps == previous:
            raise PermanentError(f"job {job_id} makes no progress (stuck at {steps[0].kind})")
        previous = steps
        for step in steps:
            if step.kind == "split":
                _split_while_windows_run(rt, job_id)
            elif step.kind == "window":
                assert step.index is not None
                run_window(rt, job_id, step.index)
            else:
                reduce_job(rt, job_id)
            if progress is not None:
                job = rt.store.get(job_id)
                if job.windows_total is not None:
                    progress(job.windows_done, job.windows_total)


def _split_while_windows_run(rt: Runtime, job_id: str) -> None:
    """The split in this thread; each window it cuts goes to the model in another at once, so the
    decode and the model overlap (the windows left when the split ends run in ``_drive``).

    A window cut while the other thread waits for work is handed over with its samples, so it is
    not decoded again from its FLAC; one cut while that thread is busy is not, so at most two
    windows' samples (one being cut, one being transcribed) are in memory whatever the length.
    """
    ready: queue.Queue[tuple[int, Samples | None] | None] = queue.Queue()
    waiting = threading.Event()
    failures: list[BaseException] = []

    def work() -> None:
        while True:
            waiting.set()
            item = ready.get()
            waiting.clear()
            if item is None:
                return
            if not failures:
                try:
                    run_window(rt, job_id, item[0], samples=item[1])
                except BaseException as exc:
                    failures.append(exc)
            del item  # its samples, before waiting for the next window

    def cut(index: int, samples: Samples | None) -> None:
        ready.put((index, samples if waiting.is_set() and ready.empty() else None))

    worker = threading.Thread(target=work, name=f"windows-{job_id}", daemon=True)
    worker.start()
    try:
        split_job(rt, job_id, on_window=cut, keep_samples=True)
    except BaseException:
        ready.put(None)  # not joined: a Ctrl-C must not wait for a window in the model
        raise
    ready.put(None)
    worker.join()
    if failures:
        raise failures[0]


def copy_documents(rt: Runtime, job: Job, out_dir: Path) -> Path:
    """Download a finished job's documents into ``out_dir``; returns the path of document.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in DOCUMENT_NAMES:
        rt.storage.download(job.output_prefix + name, out_dir / name)
    return out_dir / "document.md"
