"""Thin tasks: ids in, one pipeline call, the next step enqueued. Bookkeeping lives in ``JobTask``.

Fan-out: the split enqueues one ``voxbatch.window`` per window. Fan-in: the window task that sees
``run_window`` return True asks ``claim_reduce``; only the one caller it lets through enqueues
``voxbatch.reduce`` (a database barrier, not a chord).

Errors: ``TransientError`` is retried with exponential backoff (``autoretry_for``); anything else
fails the job with its reason (``JobTask.on_failure``), as does a transient error that outlived its
retries. A cancelled job's tasks return quietly.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import Task, signals

from jobs import pipeline
from jobs.errors import JobCancelled, TransientError, VoxbatchError
from jobs.settings import get_settings
from workers import celery_app, webhooks  # webhooks registers voxbatch.webhook
from workers.celery_app import CPU_QUEUE, app
from workers.outbox import deliver_quietly
from workers.sweeper import Enqueuers, SweepTimer, release_leases, sweep, sweep_period_s

log = logging.getLogger(__name__)

MAX_RETRIES = 8

_runtime: pipeline.Runtime | None = None
_runtime_lock = threading.Lock()
_timer: SweepTimer | None = None


def runtime() -> pipeline.Runtime:
    """This process's Runtime, built on first use (after the prefork fork, once per child)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from workers.runtime import build_runtime

            _runtime = build_runtime(get_settings())
        return _runtime


def owner_prefix() -> str:
    """Lease owners of this process start with this; shutdown releases exactly these leases."""
    return f"{socket.gethostname()}:{os.getpid()}:"


ENQUEUE = Enqueuers(
    split=celery_app.enqueue_split, window=celery_app.enqueue_window, reduce=celery_app.enqueue_reduce
)


class JobTask(Task):
    """Retries transient errors with backoff; fails the job (with the reason) on anything else."""

    autoretry_for = (TransientError,)
    retry_backoff = 2
    retry_backoff_max = celery_app.RETRY_BACKOFF_MAX_S
    retry_jitter = True
    max_retries = MAX_RETRIES
    acks_late = True

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        if not job_id or isinstance(exc, JobCancelled):
            return
        if isinstance(exc, TransientError):
            reason = f"{exc} (gave up after {MAX_RETRIES} retries; `voxbatch retry {job_id}` resumes)"
        elif isinstance(exc, VoxbatchError):
            reason = str(exc)
        else:
            reason = f"internal error in {self.name}: {exc!r}"
        try:
            pipeline.fail_job(runtime(), job_id, reason)
        except Exception:
            log.exception("job %s: could not record the failure: %s", job_id, reason)
            return
        deliver_quietly(runtime(), job_id)  # error.json for drop-folder recordings
        webhooks.notify(runtime(), job_id)


@app.task(base=JobTask, name=celery_app.SPLIT, bind=True)
def split(self: JobTask, job_id: str) -> int:
    rt = runtime()
    try:
        with pipeline.job_heartbeat(rt, job_id):
            total = pipeline.split_job(rt, job_id)
    except JobCancelled:
        log.info("job %s: cancelled; split skipped", job_id)
        return 0
    pending = pipeline.pending_windows(rt, job_id)
    for index in pending:
        celery_app.enqueue_window(job_id, index)
    if not pending and pipeline.claim_reduce(rt, job_id):
        celery_app.enqueue_reduce(job_id)
    return total


@app.task(base=JobTask, name=celery_app.WINDOW, bind=True)
def window(self: JobTask, job_id: str, index: int) -> bool:
    rt = runtime()
    owner = f"{owner_prefix()}{self.request.id}"
    if self.request.delivery_info and self.request.delivery_info.get("redelivered"):
        log.info("job %s: window %d redelivered", job_id, index)
    try:
        all_done = pipeline.run_window(rt, job_id, index, owner=owner)
    except JobCancelled:
        log.info("job %s: cancelled; window %d skipped", job_id, index)
        return False
    if all_done and pipeline.claim_reduce(rt, job_id):
        celery_app.enqueue_reduce(job_id)
    return all_done


@app.task(base=JobTask, name=celery_app.REDUCE, bind=True)
def reduce(self: JobTask, job_id: str) -> str:
    rt = runtime()
    try:
        with pipeline.job_heartbeat(rt, job_id):
            job = pipeline.reduce_job(rt, job_id)
    except JobCancelled:
        log.info("job %s: cancelled; reduce skipped", job_id)
        return "cancelled"
    deliver_quietly(rt, job_id)  # documents of drop-folder recordings to the outbox
    webhooks.notify(rt, job_id)
    return str(job.status)


@app.task(name=celery_app.SWEEP, ignore_result=True)
def sweep_leases() -> dict[str, int]:
    report = sweep(runtime(), ENQUEUE, queue_depth=_queue_depth)
    return {
        "windows": len(report.windows),
        "splits": len(report.splits),
        "reduces": len(report.reduces),
        "orphans": len(report.orphans),
    }


def _queue_depth(queue: str) -> int:
    """Messages waiting in a Celery queue on the Redis broker (kombu keeps each queue as a list)."""
    import redis

    client = redis.Redis.from_url(get_settings().broker_url, socket_timeout=5)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


# --- worker life cycle --------------------------------------------------------------------------


@signals.worker_ready.connect
def _start_sweep_timer(sender: Any = None, **_: Any) -> None:
    """Every cpu worker runs the sweep timer; the Redis lock keeps it to one sweep per period."""
    global _timer
    consumer = sender
    queues = {q.name for q in consumer.app.amqp.queues.consume_from.values()}
    if CPU_QUEUE not in queues:
        return
    settings = get_settings()
    _timer = SweepTimer(settings.broker_url, sweep_period_s(settings.lease_seconds), celery_app.enqueue_sweep)
    _timer.start()
    log.info("sweep timer: every %.1f s", _timer.period_s)


@signals.worker_shutting_down.connect
def _release_on_shutdown(**_: Any) -> None:
    """Give back the leases of running windows and requeue them, so another worker takes them at
    once. Runs first thing on a stop signal (``celery_app.STOP_HOOKS``); again, harmlessly, when
    Celery announces the shutdown."""
    if _timer is not None:
        _timer.stop()
    if _runtime is None:
        return  # this process ran no task (prefork parent): its children release their own
    try:
        # Celery's threads pool cannot cancel a running task in a cold shutdown, so it would wait
        # for the window to finish; enqueue it again now so another worker takes it at once.
        released = release_leases(_runtime, owner_prefix())
        for job_id, index in released:
            celery_app.enqueue_window(job_id, index)
            log.warning("job %s: shutting down: window %d handed back to the queue", job_id, index)
    except Exception:
        log.exception("shutting down: could not hand back running windows")


celery_app.STOP_HOOKS.append(_release_on_shutdown)


@signals.worker_process_shutdown.connect
def _release_in_child(**_: Any) -> None:
    _release_on_shutdown()
