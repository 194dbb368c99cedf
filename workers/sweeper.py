"""The periodic lease sweep: puts work whose worker died back on the queue.

A window holds a lease in the database while it runs (``jobs.pipeline.run_window`` renews it). A
worker killed with SIGKILL stops renewing; once the lease has expired the sweep turns the window
back to ``pending`` and enqueues it again, so a lost window costs about one lease, not Redis's
visibility timeout. Splits and reduces have no lease row of their own: their task keeps the job's
``updated_at`` fresh (``jobs.pipeline.job_heartbeat``) and the sweep re-enqueues a job stuck in
``splitting`` or ``reducing`` whose heartbeat is older than one lease.

Lost messages: a job ``queued`` or ``transcribing`` that has made no progress for
``orphan_after_s``, has no running window and whose queue is empty has lost its messages (Redis
restarted without them, a queue flushed by hand); the sweep enqueues its split or its pending
windows again. Enqueuing twice is harmless (steps are idempotent and claims are conditional), but
the empty-queue test keeps a long backlog from being duplicated.

The sweep runs every ``lease_seconds / 4`` in every cpu worker (``SweepTimer``); a Redis key taken
with ``SET NX PX`` lets only one of them enqueue ``voxbatch.sweep`` per period.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import update
from sqlmodel import col, select

from jobs.models import Job, JobStatus, Window, WindowStatus, utcnow
from jobs.pipeline import Runtime, expired_leases
from workers.celery_app import CPU_QUEUE, GPU_QUEUE

log = logging.getLogger(__name__)

SWEEP_LOCK_KEY = "voxbatch:sweep-lock"


@dataclass
class SweepReport:
    windows: list[tuple[str, int]] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    reduces: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Enqueuers:
    split: Callable[[str], None]
    window: Callable[[str, int], None]
    reduce: Callable[[str], None]


def sweep_period_s(lease_seconds: float) -> float:
    return max(1.0, lease_seconds / 4)


def sweep(rt: Runtime, enqueue: Enqueuers, queue_depth: Callable[[str], int] | None = None) -> SweepReport:
    """Re-enqueue windows with expired leases and splits/reduces whose worker stopped beating;
    with ``queue_depth`` (messages waiting in a queue), also the work of orphaned jobs."""
    report = SweepReport()
    if queue_depth is not None:
        _sweep_orphans(rt, enqueue, queue_depth, report)
    for job_id, index in expired_leases(rt):
        # Conditional, so two sweeps (or a worker reclaiming in between) enqueue it once; pending
        # windows are not swept again, so a backlog does not fill the queue with copies.
        with rt.db.session() as s:
            res = s.execute(
                update(Window)
                .where(col(Window.job_id) == job_id)
                .where(col(Window.index) == index)
                .where(col(Window.status) == WindowStatus.running)
                .where(col(Window.lease_expires_at) < utcnow())
                .values(status=WindowStatus.pending, lease_owner=None, lease_expires_at=None)
            )
            s.commit()
        if res.rowcount == 1:  # type: ignore[attr-defined]
            log.warning("job %s: window %d lost its worker (lease expired); re-enqueued", job_id, index)
            enqueue.window(job_id, index)
            report.windows.append((job_id, index))
    stale = utcnow() - timedelta(seconds=rt.settings.lease_seconds)
    for status, target, fn in (
        (JobStatus.splitting, report.splits, enqueue.split),
        (JobStatus.reducing, report.reduces, enqueue.reduce),
    ):
        with rt.db.session() as s:
            ids = list(s.exec(select(Job.id).where(Job.status == status).where(col(Job.updated_at) < stale)))
        for job_id in ids:
            # Touch the heartbeat so the next sweep waits another lease for the new task.
            if _touch_if_stale(rt, job_id, status, stale):
                log.warning("job %s: stuck in %s (worker lost); re-enqueued", job_id, status)
                fn(job_id)
                target.append(job_id)
    return report


def _touch_if_stale(rt: Runtime, job_id: str, status: str, before: datetime) -> bool:
    """Refresh the job's ``updated_at`` if it is still ``status`` and older than ``before``.

    Conditional, so of two sweeps (or a sweep and a worker making progress) only one acts.
    """
    with rt.db.session() as s:
        res = s.execute(
            update(Job)
            .where(col(Job.id) == job_id)
            .where(col(Job.status) == status)
            .where(col(Job.updated_at) < before)
            .values(updated_at=utcnow())
        )
        s.commit()
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def _sweep_orphans(
    rt: Runtime, enqueue: Enqueuers, queue_depth: Callable[[str], int], report: SweepReport
) -> None:
    idle = utcnow() - timedelta(seconds=rt.settings.orphan_after_s)
    with rt.db.session() as s:
        candidates = list(
            s.exec(
                select(Job.id, Job.status)
                .where(col(Job.status).in_([JobStatus.queued, JobStatus.transcribing]))
                .where(col(Job.updated_at) < idle)
            )
        )
    if not candidates:
        return
    depth = {queue: queue_depth(queue) for queue in (CPU_QUEUE, GPU_QUEUE)}
    for job_id, status in candidates:
        queue = CPU_QUEUE if status == JobStatus.queued else GPU_QUEUE
        if depth[queue] > 0:
            continue  # its messages may be waiting behind others
        with rt.db.session() as s:
            running = s.exec(
                select(Window.index)
                .where(Window.job_id == job_id)
                .where(Window.status == WindowStatus.running)
            ).first()
            if running is not None:
                continue
            pending = list(
                s.exec(
                    select(Window.index)
                    .where(Window.job_id == job_id)
                    .where(Window.status == WindowStatus.pending)
                    .order_by(col(Window.index))
                )
            )
        # Touch the job: the next sweep waits another orphan_after_s for these messages.
        if not _touch_if_stale(rt, job_id, status, idle):
            continue
        if status == JobStatus.queued:
            log.warning("job %s: queued with no message on the queue; split enqueued again", job_id)
            enqueue.split(job_id)
        else:
            log.warning(
                "job %s: %d pending windows with no message on the queue; enqueued again",
                job_id,
                len(pending),
            )
            for index in pending:
                enqueue.window(job_id, index)
        report.orphans.append(job_id)


def release_leases(rt: Runtime, owner_prefix: str) -> list[tuple[str, int]]:
    """Give back the leases of windows this process runs; returns them so the caller can requeue them.

    Called when a worker shuts down: another worker can then claim them at once instead of
    waiting for the lease to expire.
    """
    owned = col(Window.lease_owner).startswith(owner_prefix, autoescape=True)
    with rt.db.session() as s:
        rows = list(
            s.exec(
                select(Window.job_id, Window.index).where(Window.status == WindowStatus.running).where(owned)
            )
        )
        s.execute(
            update(Window)
            .where(col(Window.status) == WindowStatus.running)
            .where(owned)
            .values(status=WindowStatus.pending, lease_owner=None, lease_expires_at=None)
        )
        s.commit()
    return [(j, i) for j, i in rows]


class SweepTimer:
    """A daemon thread in a cpu worker's main process that enqueues ``voxbatch.sweep`` each period."""

    def __init__(self, broker_url: str, period_s: float, send: Callable[[float], None]) -> None:
        self.broker_url = broker_url
        self.period_s = period_s
        self.send = send
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="voxbatch-sweep-timer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        client = redis.Redis.from_url(self.broker_url, socket_timeout=5, socket_connect_timeout=5)
        while not self._stop.wait(self.period_s):
            try:
                # Several cpu workers: the first to take the key this period sends the sweep.
                if client.set(SWEEP_LOCK_KEY, b"1", nx=True, px=int(self.period_s * 900)):
                    self.send(self.period_s)
            except Exception as exc:  # Redis restarting: try again next period.
                log.warning("sweep timer: could not enqueue a sweep: %s", exc)
