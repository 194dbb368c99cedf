"""Thin tasks: ids in, one step, then what ``next_steps`` says is due goes to ``workers.meter``.

Fan-out: each window the split cuts wakes the meter, which sends windows into the gpu queue by
fair share as slots free (a window task's start and end wake it too). Fan-in: after a window,
``next_steps`` asks the database barrier (``JobStore.claim_reduce``); only the one caller it lets
through enqueues the reduce (no chord).

Errors: ``TransientError`` is retried with exponential backoff (``autoretry_for``); anything else
fails the job with its reason (``JobTask.on_failure`` → ``jobs.steps.ending.fail``, which also runs
the job-end side effects), as does a transient error that outlived its retries, except the
database's (``DatabaseUnavailable``: no free connection, a dropped one, a serialization failure),
which is retried until the database answers. A cancelled job's tasks return quietly.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Task

from jobs.errors import DatabaseUnavailable, JobCancelled, TransientError
from jobs.models import JobStatus
from jobs.proceedings import build as build_proceedings
from jobs.steps.ending import fail, failure_reason
from jobs.steps.leases import job_heartbeat
from jobs.steps.next import Step, next_steps
from jobs.steps.overall import summarize_job
from jobs.steps.reduce import reduce_job
from jobs.steps.split import split_job
from jobs.steps.window import run_window
from workers import celery_app, deliveries, lifecycle, meter, scratch, webhooks
from workers.celery_app import app
from workers.engines.http import EngineAborted
from workers.runtime import announce_end, process_runtime
from workers.sweeper import sweep

log = logging.getLogger(__name__)

MAX_RETRIES = 8
# The database's passing trouble is not the job's: a step that met it is retried (with the same
# backoff, at most RETRY_BACKOFF_MAX_S apart) until the database answers, however long it is away;
# failing the job would need the database anyway.
DATABASE_RETRIES = sys.maxsize


class JobTask(Task):
    """Retries transient errors with backoff; fails the job (with the reason) on anything else."""

    autoretry_for = (TransientError,)
    retry_backoff = 2
    retry_backoff_max = celery_app.RETRY_BACKOFF_MAX_S
    retry_jitter = True
    max_retries = MAX_RETRIES
    acks_late = True

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        if isinstance(exc, DatabaseUnavailable):
            max_retries = DATABASE_RETRIES
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def first_deliveries(self, job_id: str) -> bool:
        """False when this message was redelivered past the cap (the job is failed, the message acked)."""
        rt = process_runtime()
        key = f"{self.request.id}:{self.request.retries or 0}"
        step = self.name.rsplit(".", 1)[-1]
        return deliveries.allowed(rt, job_id, step, key, deliveries.redis_counter(rt.settings.broker_url))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        if not job_id or isinstance(exc, JobCancelled):
            return
        reason = failure_reason(exc, job_id, retries=MAX_RETRIES, step=self.name)
        try:
            fail(process_runtime(), job_id, reason)
        except Exception:
            log.exception("job %s: could not record the failure: %s", job_id, reason)


def _enqueue_next(job_id: str, after: str) -> None:
    rt = process_runtime()
    meter.enqueue(rt, next_steps(rt, job_id, after=after))  # type: ignore[arg-type]


@app.task(base=JobTask, name=celery_app.SPLIT, bind=True)
@scratch.full_is_transient
def split(self: JobTask, job_id: str) -> int:
    rt = process_runtime()
    if not self.first_deliveries(job_id):
        return 0

    def window_cut(index: int, _samples: object) -> None:
        # Each window may go to the gpu queue as soon as it is cut (the model works while we
        # split): whether it goes now is the meter's call.
        meter.meter(rt)

    try:
        with job_heartbeat(rt, job_id):
            claims = meter.room_claims(rt.settings.broker_url)
            room = meter.make_room_for(rt, rt.store.get(job_id), claims)
            total = split_job(rt, job_id, on_window=window_cut, make_room=room)
    except JobCancelled:
        log.info("job %s: cancelled; split stopped", job_id)
        meter.meter(rt)
        return 0
    if total is None:
        # Stopped between windows for a higher-ranked split: this slot goes to it, and the rest of
        # this split is sent again (one priority list ahead of splits not begun) to resume.
        meter.enqueue(rt, [Step("split", job_id, reason="resumes after making room for a shorter split")])
        return 0
    _enqueue_next(job_id, after="split")
    return total


@app.task(base=JobTask, name=celery_app.WINDOW, bind=True)
@scratch.full_is_transient
def window(self: JobTask, job_id: str, index: int) -> bool:
    rt = process_runtime()
    owner = f"{lifecycle.owner_prefix()}{self.request.id}"
    if not self.first_deliveries(job_id):
        return False
    if self.request.delivery_info and self.request.delivery_info.get("redelivered"):
        log.info("job %s: window %d redelivered", job_id, index)
    # This message has left the gpu queue: its slot goes to the next window now.
    meter.meter(rt, taken=(job_id, index))
    if JobStatus(rt.store.get(job_id).status).finished:
        log.info("job %s: ended; window %d skipped", job_id, index)  # failed or cancelled meanwhile
        return False
    try:
        all_done = run_window(rt, job_id, index, owner=owner)
    except JobCancelled:
        log.info("job %s: cancelled; window %d skipped", job_id, index)
        return False
    except EngineAborted:
        # The worker is stopping: the window is pending again (ours or the shutdown hook's doing).
        # Mark it unsent so the meter sends it once more: the hook may have run before this
        # window was claimed, and a second message for a window is harmless (the claim decides).
        rt.store.undispatch(job_id, index)
        meter.meter(rt)
        log.info("job %s: window %d stopped with the worker; handed back to the meter", job_id, index)
        return False
    if all_done:
        _enqueue_next(job_id, after="window")
    else:
        meter.meter(rt)
    return all_done


@app.task(base=JobTask, name=celery_app.OVERALL, bind=True)
@scratch.full_is_transient
def overall(self: JobTask, job_id: str) -> bool:
    """The overall summary, on a gpu worker: its request joins the windows' in the scheduler."""
    rt = process_runtime()
    if not self.first_deliveries(job_id):
        return False
    try:
        with job_heartbeat(rt, job_id):
            summarize_job(rt, job_id)
    except JobCancelled:
        log.info("job %s: cancelled; overall summary skipped", job_id)
        return False
    _enqueue_next(job_id, after="overall")
    return True


@app.task(base=JobTask, name=celery_app.REDUCE, bind=True)
@scratch.full_is_transient
def reduce(self: JobTask, job_id: str) -> str:
    rt = process_runtime()
    if not self.first_deliveries(job_id):
        return "failed"
    try:
        with job_heartbeat(rt, job_id):
            job = reduce_job(rt, job_id)
    except JobCancelled:
        log.info("job %s: cancelled; reduce skipped", job_id)
        return "cancelled"
    _enqueue_next(job_id, after="reduce")
    return str(job.status)


@app.task(name=celery_app.ANNOUNCE, bind=True, acks_late=True, ignore_result=True)
def announce(self: Any, job_id: str) -> None:
    """A job's end, announced: documents or error.json to the drop-folder outbox, then the webhook
    (queued here by whichever process ended the job). Its outbox step is deleted once both are
    done; otherwise the relay sends it again after ``announce_resend_s``."""
    rt = process_runtime()
    if announce_end(rt, job_id):
        rt.store.announced(job_id)


@app.task(base=JobTask, name=celery_app.PROCEEDINGS, bind=True)
def proceedings(self: JobTask, job_id: str) -> int:
    """The proceedings of the job's collection, on a gpu worker: their summary is a model request."""
    rt = process_runtime()
    if not self.first_deliveries(job_id):
        return 0
    # Its heartbeat tells the sweep the step is alive (a build with no sign of life lost its message).
    with job_heartbeat(rt, job_id):
        return len(build_proceedings(rt, job_id))


@app.task(name=celery_app.SWEEP, ignore_result=True)
def sweep_leases() -> dict[str, int]:
    rt = process_runtime()
    report = sweep(rt)
    return {
        "windows": len(report.windows),
        "splits": len(report.splits),
        "reduces": len(report.reduces),
        "orphans": len(report.orphans),
        "lost": len(report.lost),
        "proceedings": len(report.proceedings),
        "unacked_dropped": report.unacked_dropped,
    }


@app.task(
    name=celery_app.WEBHOOK,
    bind=True,
    acks_late=True,
    max_retries=webhooks.MAX_DELIVERIES - 1,
    ignore_result=True,
)
def webhook(self: Any, job_id: str, job_attempt: int, window: int | None = None) -> str:
    rt = process_runtime()
    delivery = int(self.request.retries) + 1
    result = webhooks.deliver(rt, job_id, job_attempt, delivery, window)
    if not result.ok and result.retry and delivery < webhooks.MAX_DELIVERIES:
        raise self.retry(countdown=webhooks.backoff_s(rt, delivery))
    return "delivered" if result.ok else "gave up"
