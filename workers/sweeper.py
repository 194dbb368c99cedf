"""The periodic lease sweep: puts work whose worker died back on the queue.

A window holds a lease in the database while it runs (``jobs.steps.window.run_window`` renews it). A
worker killed with SIGKILL stops renewing; once the lease has expired the sweep turns the window
back to ``pending`` and not sent, and the meter sends it again, so a lost window costs about one
lease, not Redis's visibility timeout. Splits and reduces have no lease row of their own: their task
keeps the job's ``updated_at`` fresh (``jobs.steps.leases.job_heartbeat``) and the sweep re-enqueues
a job stuck in ``splitting`` or ``reducing`` whose heartbeat is older than one lease.

Lost messages: a window sent more than ``window_lost_after_s`` ago and still untaken while the gpu
queue is empty lost its message (Redis restarted without its data); the sweep marks it unsent and
the meter sends it again. A succeeded job of a collection that no build of its proceedings has
listed (``Job.proceedings_at``), whose step has shown no sign of life for as long while the gpu
queue is empty, lost its proceedings message the same way (or the gpu worker that took it died):
the sweep puts the step into the outbox again. A job ``queued`` or ``transcribing`` that has made
no progress for ``orphan_after_s``, has no running window and whose queue is empty has lost its
messages too; the sweep enqueues what ``next_steps`` says it needs. Enqueuing twice is harmless
(steps are idempotent and claims are conditional), but the empty-queue test keeps a long backlog
from being duplicated.
Every sweep ends by relaying the outbox and metering the gpu queue (``workers.meter.wake``), then
deletes the finished jobs of tenants with a retention setting that are older than it
(``jobs.retention.sweep_expired``), and last clears the broker's unacked set of what dead workers
left there (``workers.unacked``): a SIGKILLed worker's reserved messages stay in kombu's ``unacked``
hash until the visibility timeout (6 h) and would then be delivered again; those older than
max(one lease, ``RETRY_BACKOFF_MAX_S``) whose work is finished (their job ended, their announce step
done, their webhook event delivered...) are removed the way kombu acks (``SweepReport.unacked_dropped``).

The sweep runs every ``lease_seconds / 4`` in every cpu worker (``SweepTimer``); a Redis key taken
with ``SET NX PX`` lets only one of them enqueue ``voxbatch.sweep`` per period.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import redis

from jobs import retention
from jobs.models import JobStatus, utcnow
from jobs.runtime import Runtime
from jobs.steps.next import next_steps
from workers import meter, unacked
from workers.celery_app import RETRY_BACKOFF_MAX_S
from workers.dispatch import dispatcher, queue_depths
from workers.queues import CPU_QUEUE, GPU_QUEUE

log = logging.getLogger(__name__)

SWEEP_LOCK_KEY = "voxbatch:sweep-lock"


@dataclass
class SweepReport:
    windows: list[tuple[str, int]] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    reduces: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    lost: list[tuple[str, int]] = field(default_factory=list)  # sent windows whose message vanished
    expired: list[str] = field(default_factory=list)  # finished jobs deleted by their tenant's retention
    proceedings: list[str] = field(default_factory=list)  # succeeded jobs whose proceedings step was lost
    unacked_dropped: int = 0  # messages lost workers left unacked, their work done (workers.unacked)


def sweep_period_s(lease_seconds: float) -> float:
    return max(1.0, lease_seconds / 4)


def sweep(
    rt: Runtime,
    queue_depth: Callable[[], dict[str, int]] | None = None,
    broker: redis.Redis | None = None,
) -> SweepReport:
    """Give back windows with expired leases, re-enqueue splits/reduces whose worker stopped
    beating and the work of orphaned jobs, mark lost window messages unsent; then relay and meter,
    apply retention and drop the finished work's messages lost workers left unacked.
    ``queue_depth`` (messages waiting per queue) and ``broker`` (the broker's Redis, for its unacked
    set) default to the Runtime's broker; a caller that stands in for the queues' depths and names
    no broker (the in-process tests, which have no Redis) has no unacked set to sweep."""
    report = SweepReport()
    sweeps_unacked = broker is not None or queue_depth is None
    depths = queue_depth or (lambda: queue_depths(dispatcher(rt).broker_url))
    _sweep_orphans(rt, depths, report)
    for job_id, index in rt.store.expired_leases():
        # Conditional, so two sweeps (or a worker reclaiming in between) act once; the meter sends it.
        if rt.store.requeue_expired(job_id, index):
            log.warning("job %s: window %d lost its worker (lease expired); back to the meter", job_id, index)
            report.windows.append((job_id, index))
    stale = utcnow() - timedelta(seconds=rt.settings.lease_seconds)
    for job_id, status in rt.store.stale([JobStatus.splitting, JobStatus.reducing], stale):
        # Touch the heartbeat so the next sweep waits another lease for the new task.
        if rt.store.touch_if_stale(job_id, status, stale):
            log.warning("job %s: stuck in %s (worker lost); re-enqueued", job_id, status)
            meter.enqueue(rt, [s for s in next_steps(rt, job_id) if s.kind != "window"])
            (report.splits if status == JobStatus.splitting else report.reduces).append(job_id)
    meter.wake(rt)
    try:
        report.expired = retention.sweep_expired(rt)
    except Exception:
        log.exception("sweep: the retention step failed (the next sweep tries again)")
    if sweeps_unacked:
        try:
            report.unacked_dropped = _sweep_unacked(rt, broker)
        except Exception as exc:  # Redis restarting: the entries wait for the next sweep
            log.warning("sweep: could not clear the unacked messages of lost workers: %s", exc)
    return report


def _sweep_unacked(rt: Runtime, broker: redis.Redis | None) -> int:
    if broker is not None:
        return len(unacked.drop_finished(rt, broker))
    url = dispatcher(rt).broker_url
    if urlsplit(url).scheme not in ("redis", "rediss"):
        return 0  # kombu's unacked set is its Redis transport's
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return len(unacked.drop_finished(rt, client))
    finally:
        client.close()


def _sweep_orphans(rt: Runtime, queue_depth: Callable[[], dict[str, int]], report: SweepReport) -> None:
    now = utcnow()
    idle = now - timedelta(seconds=rt.settings.orphan_after_s)
    candidates = rt.store.stale([JobStatus.queued, JobStatus.transcribing], idle)
    depth: dict[str, int] | None = None
    if candidates:
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
            rt.store.undispatch(job_id)
            meter.enqueue(rt, steps)
            report.orphans.append(job_id)
    # Sent windows nobody took while the gpu queue is empty: their messages are gone.
    sent_before = now - timedelta(seconds=rt.settings.window_lost_after_s)
    retrying_before = now - timedelta(seconds=max(rt.settings.window_lost_after_s, 2 * RETRY_BACKOFF_MAX_S))
    if depth is None:
        try:
            depth = queue_depth()
        except Exception as exc:
            log.warning("sweep: could not read the queues' depths: %s", exc)
            return
    if depth.get(GPU_QUEUE, 0) == 0:
        for job_id, index in rt.store.undispatch_lost(sent_before, retrying_before):
            log.warning("job %s: window %d was sent but its message is gone; sending it again", job_id, index)
            report.lost.append((job_id, index))
        _sweep_proceedings(rt, sent_before, report)


def _sweep_proceedings(rt: Runtime, before: datetime, report: SweepReport) -> None:
    """Succeeded jobs of a collection that no build of its proceedings has listed, whose step has
    shown no sign of life (its task beats like a reduce) since ``before``, while the gpu queue is
    empty: the message was lost (Redis lost it, or the gpu worker that took it died). The step goes
    into the outbox again."""
    for job_id in rt.store.proceedings_due(before):
        # Touch the job: the next sweep waits another window_lost_after_s for this message.
        if not rt.store.touch_if_stale(job_id, JobStatus.succeeded, before):
            continue
        steps = next_steps(rt, job_id)
        log.warning("job %s: its proceedings step's message is gone; sent again", job_id)
        meter.enqueue(rt, steps)
        report.proceedings.append(job_id)


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
