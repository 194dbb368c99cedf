"""The periodic lease sweep: puts work whose worker died back on the queue.

A window holds a lease in the database while it runs (``jobs.steps.window.run_window`` renews it). A
worker killed with SIGKILL stops renewing; once the lease has expired the sweep turns the window
back to ``pending`` and enqueues it again, so a lost window costs about one lease, not Redis's
visibility timeout. Splits and reduces have no lease row of their own: their task keeps the job's
``updated_at`` fresh (``jobs.steps.leases.job_heartbeat``) and the sweep re-enqueues a job stuck in
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
from datetime import timedelta

import redis

from jobs.models import JobStatus, utcnow
from jobs.runtime import Runtime
from jobs.steps.next import Step, next_steps
from workers.celery_app import CPU_QUEUE, GPU_QUEUE
from workers.dispatch import Dispatcher, queue_depths

log = logging.getLogger(__name__)

SWEEP_LOCK_KEY = "voxbatch:sweep-lock"


@dataclass
class SweepReport:
    windows: list[tuple[str, int]] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    reduces: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)


def sweep_period_s(lease_seconds: float) -> float:
    return max(1.0, lease_seconds / 4)


def sweep(
    rt: Runtime, dispatcher: Dispatcher, queue_depth: Callable[[], dict[str, int]] | None = None
) -> SweepReport:
    """Re-enqueue windows with expired leases, splits/reduces whose worker stopped beating, and
    the work of orphaned jobs. ``queue_depth`` (messages waiting per queue) defaults to asking the
    dispatcher's broker."""
    report = SweepReport()
    depths = queue_depth or (lambda: queue_depths(dispatcher.broker_url))
    _sweep_orphans(rt, dispatcher, depths, report)
    for job_id, index in rt.store.expired_leases():
        # Conditional, so two sweeps (or a worker reclaiming in between) enqueue it once; pending
        # windows are not swept again, so a backlog does not fill the queue with copies.
        if rt.store.requeue_expired(job_id, index):
            log.warning("job %s: window %d lost its worker (lease expired); re-enqueued", job_id, index)
            dispatcher.send(Step("window", job_id, index))
            report.windows.append((job_id, index))
    stale = utcnow() - timedelta(seconds=rt.settings.lease_seconds)
    for job_id, status in rt.store.stale([JobStatus.splitting, JobStatus.reducing], stale):
        # Touch the heartbeat so the next sweep waits another lease for the new task.
        if rt.store.touch_if_stale(job_id, status, stale):
            log.warning("job %s: stuck in %s (worker lost); re-enqueued", job_id, status)
            if status == JobStatus.splitting:
                dispatcher.send(Step("split", job_id))
                report.splits.append(job_id)
            else:
                dispatcher.send(Step("reduce", job_id))
                report.reduces.append(job_id)
    return report


def _sweep_orphans(
    rt: Runtime, dispatcher: Dispatcher, queue_depth: Callable[[], dict[str, int]], report: SweepReport
) -> None:
    idle = utcnow() - timedelta(seconds=rt.settings.orphan_after_s)
    candidates = rt.store.stale([JobStatus.queued, JobStatus.transcribing], idle)
    if not candidates:
        return
    depth = queue_depth()
    for job_id, status in candidates:
        queue = CPU_QUEUE if status == JobStatus.queued else GPU_QUEUE
        if depth.get(queue, 0) > 0:
            continue  # its messages may be waiting behind others
        if rt.store.has_running_window(job_id):
            continue
        # Touch the job: the next sweep waits another orphan_after_s for these messages.
        if not rt.store.touch_if_stale(job_id, status, idle):
            continue
        steps = next_steps(rt, job_id)
        log.warning(
            "job %s: %s with no message on the queue; enqueued again: %s",
            job_id,
            status,
            ", ".join(sorted({s.kind for s in steps})) or "nothing",
        )
        dispatcher.send_all(steps)
        report.orphans.append(job_id)


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
