"""How a job ends: one place that records the ending and runs its side effects.

Every path that ends a job (a step's permanent error, a task that gave up, cancel from the CLI or
the API, a broker that could not be reached) comes through ``fail`` or ``cancel``; success comes
through ``succeed``. The ending commits together with its announcement (the ``announce`` step in
the outbox, when the job has a webhook or ``rt.announces`` says so: webhook and drop-folder outbox,
run by a cpu worker), so no crash can separate them. Each then calls ``job_ended``, which runs the
hooks the process installed on its Runtime (relay the outbox, meter the gpu queue). A hook that
fails is logged: the job's outcome and its announcement are already stored.
"""

from __future__ import annotations

import logging

from jobs.errors import JobCancelled, TransientError, VoxbatchError
from jobs.models import Job, JobStatus
from jobs.runtime import Runtime

log = logging.getLogger(__name__)

CANCELLED_REASON = "cancelled by user"


def failure_reason(exc: BaseException, job_id: str, *, retries: int | None = None, step: str = "") -> str:
    """The one sentence a failed job shows, for any exception a step can raise."""
    if isinstance(exc, TransientError):
        if retries is not None:
            return f"{exc} (gave up after {retries} retries; `voxbatch retry {job_id}` resumes)"
        return f"{exc} (run the same command again to resume)"
    if isinstance(exc, VoxbatchError):
        return str(exc)
    where = f" in {step}" if step else ""
    return f"internal error{where}: {exc!r}"


def job_ended(rt: Runtime, job_id: str) -> None:
    for hook in rt.on_job_end:
        try:
            hook(rt, job_id)
        except Exception:
            log.exception("job %s: a job-end hook failed", job_id)


def fail(rt: Runtime, job_id: str, reason: str) -> bool:
    """Mark a job failed with one sentence; finished windows and stored results are kept.

    The first ending wins: a job that already ended keeps its state. True if this call ended it.
    """
    ended = rt.store.end(job_id, JobStatus.failed, reason, announce=rt.announces)
    if ended:
        log.info("job %s: failed: %s", job_id, reason)
        job_ended(rt, job_id)
    return ended


def cancel(rt: Runtime, job_id: str, tenant: str | None = None) -> Job:
    rt.store.get(job_id, tenant)
    if rt.store.end(job_id, JobStatus.cancelled, CANCELLED_REASON, announce=rt.announces):
        log.info("job %s: cancelled", job_id)
        job_ended(rt, job_id)
    return rt.store.get(job_id)


def succeed(rt: Runtime, job_id: str, engine: str, model: str) -> bool:
    done = rt.store.transition(
        job_id,
        [JobStatus.reducing],
        JobStatus.succeeded,
        announce=rt.announces,
        engine=engine,
        model=model,
        error=None,
    )
    if done:
        log.info("job %s: succeeded", job_id)
        job_ended(rt, job_id)
    return done


def ensure_running(job: Job) -> None:
    """Steps call this before work: a cancelled job's remaining tasks stop here."""
    if job.status == JobStatus.cancelled:
        raise JobCancelled(f"job {job.id} was cancelled")
