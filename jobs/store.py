"""The job store: every read and write of the ``job`` and ``window`` tables goes through here.

No other module opens a session on these tables. Each method is one short transaction; the ones
that several workers race for (claims, the reduce barrier, the sweep's re-enqueues) are single
conditional UPDATEs whose row count says who won, so they are correct on PostgreSQL and SQLite
alike without explicit locks.

Job states move only along ``jobs.states.TRANSITIONS``; a state change that table does not allow
raises ``InvalidTransition``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from jobs.db import Database
from jobs.errors import NotFound
from jobs.models import DispatchLock, Job, JobStatus, Priority, QueuedStep, Window, WindowStatus, utcnow
from jobs.states import ACTIVE, ENDED, InvalidTransition, check_transition

_NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}


def _changed(result: Any) -> int:
    return int(result.rowcount)


# Outbox steps kept (marked sent) until the worker that ran them says they are done: nothing else
# records that they still have to happen (a job's announcement).
KEPT_UNTIL_DONE = frozenset({"announce"})

# Jobs whose windows the meter may send: the split may still be cutting them.
METERED = (JobStatus.splitting, JobStatus.transcribing)

JoinedCheck = Callable[[Session, str], bool]
_joined: ContextVar[tuple[JoinedCheck, ...]] = ContextVar("voxbatch_joined", default=())


class ClaimLost(Exception):
    """A check joined to the job's transaction (``joined``) said no: the job was not created."""


@contextmanager
def joined(check: JoinedCheck) -> Iterator[None]:
    """Run ``check(session, job_id)`` inside the transaction that adds a job in this context.

    The drop folder's watcher joins its claim on a recording: the claim is confirmed and the job id
    written on the ledger row in the job's own transaction, so a watcher killed at any point leaves
    either no job (the claim lapses, another watcher takes the recording) or a job the ledger
    names (nobody takes it again). When ``check`` answers False the transaction is rolled back and
    ``ClaimLost`` raised.
    """
    token = _joined.set((*_joined.get(), check))
    try:
        yield
    finally:
        _joined.reset(token)


@dataclass(frozen=True)
class WindowCandidate:
    """A window the meter may send next: pending, not sent, its job still running."""

    window_id: int
    job_id: str
    index: int
    seconds: float  # of audio
    tenant: str  # "" for jobs with no tenant
    priority: Priority
    created_at: datetime  # the job's


def take_turn(s: Session, name: str) -> None:
    """Serialise with every other holder of lock ``name`` until ``s`` commits or rolls back.

    An UPDATE of the lock's row: PostgreSQL holds the row lock to the end of the transaction;
    SQLite's first write takes the database's write lock. Must be the transaction's first
    statement (a SQLite transaction that read first may be refused the lock instead of waiting)."""
    s.execute(update(DispatchLock).where(col(DispatchLock.name) == name).values(turns=DispatchLock.turns + 1))


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _update(self, table: type[Job] | type[Window], conditions: list[Any], **values: Any) -> int:
        """One conditional UPDATE in its own transaction; returns how many rows it changed."""
        with self.db.session() as s:
            res = s.execute(update(table).where(*conditions).values(**values))
            s.commit()
        return _changed(res)

    # --- jobs -----------------------------------------------------------------------------------

    def add(self, job: Job, *, enqueue: bool = False) -> Job:
        """Insert the job; with ``enqueue`` its split goes into the outbox in the same transaction
        (``workers.meter.relay`` hands it to the broker), so the job and its first message are one
        durable act. Checks ``joined`` in this context run in the same transaction."""
        with self.db.session() as s:
            s.add(job)
            s.flush()
            for check in _joined.get():
                if not check(s, job.id):
                    s.rollback()
                    raise ClaimLost(f"job for {job.source_name}: the claim it was made under is lost")
            if enqueue:
                s.add(QueuedStep(job_id=job.id, kind="split"))
            s.commit()
            s.refresh(job)
        return job

    def make_ready(self, job_id: str, **values: Any) -> None:
        """Set fields the split needs (an uploaded source's key) and put the split into the
        outbox, in one transaction."""
        with self.db.session() as s:
            s.execute(update(Job).where(col(Job.id) == job_id).values(updated_at=utcnow(), **values))
            s.add(QueuedStep(job_id=job_id, kind="split"))
            s.commit()

    # --- the outbox -----------------------------------------------------------------------------

    def queue_steps(self, steps: Collection[tuple[str, str, int | None]]) -> None:
        """Put steps (kind, job id, window index) into the outbox in one transaction."""
        if not steps:
            return
        with self.db.session() as s:
            s.add_all([QueuedStep(kind=kind, job_id=job_id, index=index) for kind, job_id, index in steps])
            s.commit()

    def relay(
        self,
        send: Callable[[QueuedStep, Job | None], None],
        limit: int = 200,
        resend_after_s: float = 120.0,
    ) -> int:
        """Hand the outbox's due steps, each with its job (None if deleted since), to ``send`` and
        delete them, under the ``outbox`` lock; returns how many were sent. A step whose send
        raises stays (with those after it) for the next relay, and the error propagates; a relay
        killed mid-way sends a step twice at worst. The jobs are read in the lock's own session:
        ``send`` must not open another one while the lock is held (with every other pooled
        connection waiting on the lock, it would wait for the pool until its timeout).

        ``announce`` steps are kept, marked ``sent_at``, until ``announced``; one sent more than
        ``resend_after_s`` ago is due again."""
        due = or_(
            col(QueuedStep.sent_at).is_(None),
            col(QueuedStep.sent_at) < utcnow() - timedelta(seconds=resend_after_s),
        )
        with self.db.session() as s:
            if s.exec(select(QueuedStep.id).where(due).limit(1)).first() is None:
                return 0  # the common case: nothing to relay, no lock taken
        sent = 0
        with self.db.session() as s:
            take_turn(s, "outbox")
            rows = list(
                s.exec(
                    select(QueuedStep, Job)
                    .join(Job, col(Job.id) == col(QueuedStep.job_id), isouter=True)
                    .where(due)
                    .order_by(col(QueuedStep.id))
                    .limit(limit)
                )
            )
            try:
                for row, job in rows:
                    send(row, job)
                    this = col(QueuedStep.id) == row.id
                    if row.kind in KEPT_UNTIL_DONE:
                        s.execute(update(QueuedStep).where(this).values(sent_at=utcnow()))
                    else:
                        s.execute(delete(QueuedStep).where(this))
                    sent += 1
            finally:
                s.commit()
        return sent

    def announced(self, job_id: str) -> None:
        """The job's end was announced (by the cpu worker's ``announce`` task): its step leaves the
        outbox."""
        with self.db.session() as s:
            where = [col(QueuedStep.job_id) == job_id, col(QueuedStep.kind).in_(list(KEPT_UNTIL_DONE))]
            s.execute(delete(QueuedStep).where(*where))
            s.commit()

    def announce_pending(self, job_id: str) -> bool:
        """Whether the job's end still has to be announced: its step is in the outbox until
        ``announced``."""
        with self.db.session() as s:
            where = [col(QueuedStep.job_id) == job_id, col(QueuedStep.kind).in_(list(KEPT_UNTIL_DONE))]
            return s.exec(select(QueuedStep.id).where(*where).limit(1)).first() is not None

    def queued_steps(self) -> list[QueuedStep]:
        with self.db.session() as s:
            return list(s.exec(select(QueuedStep).order_by(col(QueuedStep.id))))

    def find(self, job_id: str) -> Job | None:
        with self.db.session() as s:
            return s.get(Job, job_id)

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        """The job; NotFound when it does not exist or belongs to another tenant (same answer)."""
        job = self.find(job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise NotFound(f"no job {job_id[:64]}")
        return job

    def delete(self, job_id: str) -> bool:
        """Delete a job that has ended, with its windows and outbox rows, in one transaction; False
        when it is not there or has not ended (a job still running keeps its rows)."""
        ended = [col(Job.id) == job_id, col(Job.status).in_(list(ENDED))]
        with self.db.session() as s:
            if s.exec(select(Job.id).where(*ended)).first() is None:
                return False
            s.execute(delete(Window).where(col(Window.job_id) == job_id))
            s.execute(delete(QueuedStep).where(col(QueuedStep.job_id) == job_id))
            if _changed(s.execute(delete(Job).where(*ended))) != 1:
                s.rollback()  # it was retried meanwhile: keep everything
                return False
            s.commit()
        return True

    def in_collection(self, collection_id: str) -> list[Job]:
        """A collection's jobs, oldest first."""
        with self.db.session() as s:
            return list(
                s.exec(
                    select(Job)
                    .where(Job.collection_id == collection_id)
                    .order_by(col(Job.created_at), col(Job.id))
                )
            )

    def listed_in_proceedings(self, job_ids: Collection[str]) -> None:
        """A build of the proceedings listed these jobs: their proceedings step is done."""
        if job_ids:
            where = [col(Job.id).in_(list(job_ids)), col(Job.proceedings_at).is_(None)]
            self._update(Job, where, proceedings_at=utcnow())

    def proceedings_due(self, before: datetime, limit: int = 100) -> list[str]:
        """Succeeded jobs of a collection that no build of its proceedings has listed, with no sign
        of their proceedings step since ``before`` (the sweep's: their message was lost)."""
        with self.db.session() as s:
            return list(
                s.exec(
                    select(Job.id)
                    .where(col(Job.collection_id).is_not(None), col(Job.proceedings_at).is_(None))
                    .where(Job.status == JobStatus.succeeded, col(Job.updated_at) < before)
                    .order_by(col(Job.updated_at))
                    .limit(limit)
                )
            )

    def ended_before(self, tenant: str, before: datetime, limit: int = 100) -> list[str]:
        """Ids of the tenant's jobs that ended before ``before`` (the retention sweep's)."""
        with self.db.session() as s:
            return list(
                s.exec(
                    select(Job.id)
                    .where(Job.tenant == tenant, col(Job.status).in_(list(ENDED)))
                    .where(col(Job.finished_at) < before)
                    .order_by(col(Job.finished_at))
                    .limit(limit)
                )
            )

    def find_resumable(self, fingerprint: str) -> Job | None:
        """The newest job for the same recording and options, so that a re-run resumes it."""
        with self.db.session() as s:
            return s.exec(
                select(Job)
                .where(Job.fingerprint == fingerprint)
                .where(col(Job.status) != JobStatus.cancelled)
                .order_by(col(Job.created_at).desc())
            ).first()

    def list_jobs(
        self, *, tenant: str | None = None, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Job], int]:
        """Jobs newest first, and how many match in all."""
        query = select(Job)
        count = select(func.count()).select_from(Job)
        if tenant is not None:
            query, count = query.where(Job.tenant == tenant), count.where(Job.tenant == tenant)
        if status is not None:
            query, count = query.where(Job.status == status), count.where(Job.status == status)
        with self.db.session() as s:
            total = s.exec(count).one()
            rows = list(
                s.exec(query.order_by(col(Job.created_at).desc(), col(Job.id)).offset(offset).limit(limit))
            )
        return rows, int(total)

    def tenant_load(self, tenant: str) -> tuple[int, float]:
        """A tenant's jobs that have not ended, and the seconds of audio in them (as probed)."""
        with self.db.session() as s:
            count, seconds = s.exec(
                select(func.count(), func.coalesce(func.sum(Job.duration_s), 0.0))
                .select_from(Job)
                .where(Job.tenant == tenant, col(Job.status).in_(list(ACTIVE)))
            ).one()
        return int(count), float(seconds or 0.0)

    def counts_by_status(self) -> dict[str, int]:
        with self.db.session() as s:
            rows = s.exec(select(Job.status, func.count()).group_by(Job.status)).all()
        return {str(status): int(n) for status, n in rows}

    def update(self, job_id: str, **values: Any) -> None:
        """Change fields that are not the state (source key, engine, webhook record)."""
        if "status" in values:
            raise InvalidTransition("state changes go through JobStore.transition")
        self._update(Job, [col(Job.id) == job_id], updated_at=utcnow(), **values)

    def compare_and_set(self, job_id: str, field: str, old: Any, new: Any) -> bool:
        """Set ``field`` to ``new`` only while it still holds ``old`` (writers race on it). Never the
        state: that goes through ``transition`` and the table in jobs/states.py."""
        if field == "status":
            raise InvalidTransition("state changes go through JobStore.transition")
        column = col(getattr(Job, field))
        cond = column.is_(None) if old is None else column == old
        return self._update(Job, [col(Job.id) == job_id, cond], **{field: new}) == 1

    def transition(
        self,
        job_id: str,
        sources: Collection[JobStatus],
        target: JobStatus,
        *,
        announce: JoinedCheck | None = None,
        **values: Any,
    ) -> bool:
        """Move the job to ``target`` if it is in one of ``sources``; True when this call moved it.

        ``announce`` (an ending only): when this call ended the job and the job has a webhook or
        ``announce(session, job_id)`` says it has something else to announce (a drop-folder
        recording's outbox result), its ``announce`` step goes into the outbox in the same
        transaction. The end and its announcement are one commit: a process killed right after the
        end cannot lose the job's webhook or outbox result (a cpu worker relays the step).
        """
        check_transition(sources, target)
        now = utcnow()
        if target in ENDED:
            values.setdefault("finished_at", now)
        where = [col(Job.id) == job_id, col(Job.status).in_(list(sources))]
        with self.db.session() as s:
            moved = _changed(
                s.execute(update(Job).where(*where).values(status=target, updated_at=now, **values))
            )
            if moved == 1 and announce is not None and target in ENDED:
                webhook = s.exec(select(Job.webhook_url).where(col(Job.id) == job_id)).first()
                if webhook or announce(s, job_id):
                    s.add(QueuedStep(job_id=job_id, kind="announce"))
            s.commit()
        return moved == 1

    def end(
        self, job_id: str, target: JobStatus, reason: str | None, *, announce: JoinedCheck | None = None
    ) -> bool:
        """Fail or cancel an active job; the first ending wins. True when this call ended it.
        ``announce``: as for ``transition``."""
        return self.transition(job_id, ACTIVE, target, announce=announce, error=reason)

    def heartbeat(self, job_id: str) -> None:
        """Keep ``updated_at`` fresh while a split, a reduce or a succeeded job's proceedings step
        runs, so the sweep leaves it be."""
        beating = [JobStatus.splitting, JobStatus.reducing, JobStatus.succeeded]
        where = [col(Job.id) == job_id, col(Job.status).in_(beating)]
        self._update(Job, where, updated_at=utcnow())

    def touch_if_stale(self, job_id: str, status: str, before: datetime) -> bool:
        """Refresh ``updated_at`` if the job is still ``status`` and older than ``before``.

        Conditional, so of two sweeps (or a sweep and a worker making progress) only one acts.
        """
        where = [col(Job.id) == job_id, col(Job.status) == status, col(Job.updated_at) < before]
        return self._update(Job, where, updated_at=utcnow()) == 1

    def waiting_to_split(self, priority: Priority, created_before: datetime, limit: int = 1000) -> list[Job]:
        """Jobs of ``priority`` whose split has not begun (``queued``) since before
        ``created_before``, oldest first."""
        with self.db.session() as s:
            return list(
                s.exec(
                    select(Job)
                    .where(col(Job.status) == JobStatus.queued)
                    .where(col(Job.priority) == priority)
                    .where(col(Job.created_at) < created_before)
                    .order_by(col(Job.created_at))
                    .limit(limit)
                )
            )

    def stale(self, statuses: Collection[JobStatus], before: datetime) -> list[tuple[str, JobStatus]]:
        """Jobs in one of ``statuses`` whose last sign of progress is older than ``before``."""
        with self.db.session() as s:
            rows = s.exec(
                select(Job.id, Job.status)
                .where(col(Job.status).in_(list(statuses)))
                .where(col(Job.updated_at) < before)
            ).all()
        return [(j, JobStatus(st)) for j, st in rows]

    # --- windows --------------------------------------------------------------------------------

    def windows(self, job_id: str) -> list[Window]:
        with self.db.session() as s:
            return list(s.exec(select(Window).where(Window.job_id == job_id).order_by(col(Window.index))))

    def add_window(self, row: Window) -> None:
        """Register one window while the split goes on, so it can run before the split ends."""
        with self.db.session() as s:
            exists = s.exec(
                select(Window.id).where(Window.job_id == row.job_id).where(Window.index == row.index)
            ).first()
            if exists is None:
                s.add(Window(job_id=row.job_id, index=row.index, start_s=row.start_s, end_s=row.end_s))
                s.commit()

    def add_windows(self, job_id: str, rows: list[Window], duration_s: float) -> bool:
        """Store the split's windows and move the job on to ``transcribing`` in one transaction."""
        check_transition([JobStatus.splitting], JobStatus.transcribing)
        with self.db.session() as s:
            existing = {w.index for w in s.exec(select(Window).where(Window.job_id == job_id))}
            for row in rows:
                if row.index not in existing:
                    s.add(row)
            res = s.execute(
                update(Job)
                .where(col(Job.id) == job_id)
                .where(col(Job.status) == JobStatus.splitting)
                .values(
                    windows_total=len(rows),
                    duration_s=duration_s,
                    status=JobStatus.transcribing,
                    split_finished_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            if _changed(res) != 1:
                # Cancelled (or failed) while splitting: keep no half-registered windows.
                s.rollback()
                return False
            s.commit()
        return True

    def pending_windows(self, job_id: str) -> list[int]:
        """Indexes of the windows not done yet, in order."""
        with self.db.session() as s:
            return list(
                s.exec(
                    select(Window.index)
                    .where(Window.job_id == job_id)
                    .where(col(Window.status) != WindowStatus.done)
                    .order_by(col(Window.index))
                )
            )

    def has_running_window(self, job_id: str) -> bool:
        with self.db.session() as s:
            return (
                s.exec(
                    select(Window.index)
                    .where(Window.job_id == job_id)
                    .where(Window.status == WindowStatus.running)
                ).first()
                is not None
            )

    def claim_window(self, job_id: str, index: int, owner: str, lease_s: float) -> Window | None:
        """Take the window's lease; None when it is done or another worker's lease is still valid.

        A claim counts an attempt, except when ``owner`` holds the lease already: the same task
        retried in the same process after a try that could not hand the window back (the database
        was away then), which is the outside world's failure, not the window's."""
        now = utcnow()
        counted = case((col(Window.lease_owner) == owner, 0), else_=1)
        with self.db.session() as s:
            res = s.execute(
                update(Window)
                .where(col(Window.job_id) == job_id)
                .where(col(Window.index) == index)
                .where(
                    or_(
                        col(Window.status) == WindowStatus.pending,
                        (col(Window.status) == WindowStatus.running)
                        & ((col(Window.lease_expires_at) < now) | (col(Window.lease_owner) == owner)),
                    )
                )
                .values(
                    status=WindowStatus.running,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    attempts=Window.attempts + counted,
                    started_at=now,
                )
            )
            s.commit()
            if _changed(res) != 1:
                return None
            return s.exec(select(Window).where(Window.job_id == job_id).where(Window.index == index)).one()

    def renew_lease(self, window_id: int | None, owner: str, lease_s: float) -> None:
        where = [col(Window.id) == window_id, col(Window.lease_owner) == owner]
        self._update(Window, where, lease_expires_at=utcnow() + timedelta(seconds=lease_s))

    def hand_back_window(self, window_id: int | None, owner: str, error: str, refund: bool = False) -> None:
        """A failure that may pass: the window is pending again unless another worker took it over.

        ``refund``: the error was the outside world's (a server away, a full disk), not the
        window's, so this attempt does not count towards ``max_window_attempts`` (which is there
        for windows that keep killing their worker); the task's own retry limit still bounds it."""
        where = [col(Window.id) == window_id, col(Window.lease_owner) == owner]
        more: dict[str, Any] = {"attempts": col(Window.attempts) - 1} if refund else {}
        self._update(Window, where, status=WindowStatus.pending, **_NO_LEASE, error=error, **more)

    def finish_window(self, window_id: int | None, engine_s: float) -> None:
        where = [col(Window.id) == window_id]
        self._update(
            Window,
            where,
            status=WindowStatus.done,
            **_NO_LEASE,
            error=None,
            engine_s=engine_s,
            finished_at=utcnow(),
        )

    def record_segments(self, window: Window, done: int, total: int) -> None:
        """A window's segment progress, and the job's sums over its windows."""
        self._update(Window, [col(Window.id) == window.id], segments_done=done, segments_total=total)
        mine = col(Window.job_id) == window.job_id
        sums = select(func.coalesce(func.sum(Window.segments_done), 0), func.sum(Window.segments_total))
        with self.db.session() as s:
            done_all, total_all = s.exec(sums.where(mine)).one()
        self._update(Job, [col(Job.id) == window.job_id], segments_done=done_all, segments_total=total_all)

    def fail_window(self, window_id: int | None, reason: str) -> None:
        self._update(
            Window, [col(Window.id) == window_id], status=WindowStatus.failed, error=reason, **_NO_LEASE
        )

    def reset_windows(self, job_id: str, *, only_running: bool) -> None:
        """Unfinished windows back to pending with no lease: all of them for a retry (attempts
        start over), or only running ones for a local re-run (its own leases are stale)."""
        values: dict[str, Any] = {
            "status": WindowStatus.pending,
            "lease_owner": None,
            "lease_expires_at": None,
            "dispatched_at": None,  # their messages are gone or stale: the meter sends them again
        }
        query = update(Window).where(col(Window.job_id) == job_id)
        if only_running:
            query = query.where(col(Window.status) == WindowStatus.running)
        else:
            query = query.where(col(Window.status) != WindowStatus.done)
            values.update(attempts=0, error=None)
        with self.db.session() as s:
            s.execute(query.values(**values))
            s.commit()

    # --- the barrier ----------------------------------------------------------------------------

    def count_done(self, job_id: str) -> bool:
        """Record how many distinct windows are done; True when all of them are."""
        with self.db.session() as s:
            done = s.exec(
                select(func.count(func.distinct(Window.index)))
                .where(Window.job_id == job_id)
                .where(Window.status == WindowStatus.done)
            ).one()
            # updated_at doubles as the job's last sign of progress for the orphan sweep.
            s.execute(update(Job).where(col(Job.id) == job_id).values(windows_done=done, updated_at=utcnow()))
            s.commit()
            total = s.exec(select(Job.windows_total).where(Job.id == job_id)).one()
        return total is not None and done >= total

    def claim_reduce(self, job_id: str) -> bool:
        """The fan-in barrier: True for exactly one caller once every window is done."""
        self.count_done(job_id)
        check_transition([JobStatus.transcribing], JobStatus.reducing)
        now = utcnow()
        with self.db.session() as s:
            res = s.execute(
                update(Job)
                .where(col(Job.id) == job_id)
                .where(col(Job.reduce_claimed).is_(False))
                .where(col(Job.status) == JobStatus.transcribing)
                .where(col(Job.windows_total).is_not(None))
                .where(col(Job.windows_done) >= col(Job.windows_total))
                .values(reduce_claimed=True, status=JobStatus.reducing, reduce_started_at=now, updated_at=now)
            )
            s.commit()
        return _changed(res) == 1

    # --- the sweep ------------------------------------------------------------------------------

    def expired_leases(self) -> list[tuple[str, int]]:
        """Windows whose worker stopped renewing its lease (killed, lost its network)."""
        with self.db.session() as s:
            rows = s.exec(
                select(Window.job_id, Window.index)
                .join(Job, col(Job.id) == col(Window.job_id))
                .where(Window.status == WindowStatus.running)
                .where(col(Window.lease_expires_at) < utcnow())
                .where(Job.status == JobStatus.transcribing)
            ).all()
        return [(j, i) for j, i in rows]

    def requeue_expired(self, job_id: str, index: int) -> bool:
        """Back to pending if its lease is still expired; conditional, so two sweeps act once."""
        where = [
            col(Window.job_id) == job_id,
            col(Window.index) == index,
            col(Window.status) == WindowStatus.running,
            col(Window.lease_expires_at) < utcnow(),
        ]
        return self._update(Window, where, status=WindowStatus.pending, dispatched_at=None, **_NO_LEASE) == 1

    def release_leases(self, owner_prefix: str) -> list[tuple[str, int]]:
        """Give back the leases of windows whose owner starts with ``owner_prefix`` (a stopping
        worker process); returns them so the caller can requeue them."""
        owned = col(Window.lease_owner).startswith(owner_prefix, autoescape=True)
        with self.db.session() as s:
            rows = list(
                s.exec(
                    select(Window.job_id, Window.index)
                    .where(Window.status == WindowStatus.running)
                    .where(owned)
                )
            )
            s.execute(
                update(Window)
                .where(col(Window.status) == WindowStatus.running)
                .where(owned)
                .values(
                    status=WindowStatus.pending, lease_owner=None, lease_expires_at=None, dispatched_at=None
                )
            )
            s.commit()
        return [(j, i) for j, i in rows]

    # --- metering windows into the gpu queue (workers/meter.py decides which) ----------------------

    def undispatch(self, job_id: str, index: int | None = None) -> int:
        """Mark a job's pending windows (or one) as not sent: the meter sends them again."""
        where = [col(Window.job_id) == job_id, col(Window.status) == WindowStatus.pending]
        if index is not None:
            where.append(col(Window.index) == index)
        return self._update(Window, where, dispatched_at=None)

    def undispatch_lost(self, sent_before: datetime, retrying_before: datetime) -> list[tuple[str, int]]:
        """Windows sent before ``sent_before`` (before ``retrying_before`` for one that failed and
        waits for its retry) and still untaken: marked not sent. The caller has seen the gpu queue
        empty, so their messages are gone."""
        lost = (
            (col(Window.status) == WindowStatus.pending)
            & col(Window.dispatched_at).is_not(None)
            & (
                (col(Window.error).is_(None) & (col(Window.dispatched_at) < sent_before))
                | (col(Window.dispatched_at) < retrying_before)
            )
        )
        with self.db.session() as s:
            rows = list(
                s.exec(
                    select(Window.id, Window.job_id, Window.index)
                    .join(Job, col(Job.id) == col(Window.job_id))
                    .where(lost)
                    .where(col(Job.status).in_(list(METERED)))
                )
            )
            if rows:
                s.execute(
                    update(Window)
                    .where(col(Window.id).in_([r[0] for r in rows]))
                    .where(lost)
                    .values(dispatched_at=None)
                )
                s.commit()
        return [(j, i) for _, j, i in rows]

    def meter_windows(
        self,
        target: int,
        choose: Callable[[list[WindowCandidate], dict[str, float], int], list[WindowCandidate]],
        send: Callable[[list[WindowCandidate]], None],
        taken: Collection[tuple[str, int]] = (),
    ) -> list[WindowCandidate]:
        """Fill the gpu queue up to ``target`` windows sent and not yet taken, under the
        ``windows`` lock: ``choose(candidates, seconds in service per tenant, free slots)`` picks,
        the picks get ``dispatched_at``, ``send`` hands them to the broker before the commit (a send
        that raises rolls the marks back). ``taken``: windows whose messages a worker holds now
        (counted as out of the queue though they are not claimed yet)."""
        unsent = (
            (col(Window.status) == WindowStatus.pending)
            & col(Window.dispatched_at).is_(None)
            & col(Job.status).in_(list(METERED))
        )
        with self.db.session() as s:
            if (
                s.exec(
                    select(Window.id).join(Job, col(Job.id) == col(Window.job_id)).where(unsent).limit(1)
                ).first()
                is None
            ):
                return []  # nothing to send: no lock taken
        in_queue = (
            (col(Window.status) == WindowStatus.pending)
            & col(Window.dispatched_at).is_not(None)
            & col(Window.error).is_(None)
        )
        running = col(Window.status) == WindowStatus.running
        active = col(Job.status).in_(list(METERED))
        with self.db.session() as s:
            take_turn(s, "windows")
            count = select(func.count()).select_from(Window).join(Job, col(Job.id) == col(Window.job_id))
            count = count.where(in_queue, active)
            for job_id, index in taken:
                count = count.where(~((col(Window.job_id) == job_id) & (col(Window.index) == index)))
            free = target - int(s.exec(count).one())
            if free <= 0:
                s.commit()
                return []
            seconds = func.sum(col(Window.end_s) - col(Window.start_s))
            in_service = {
                str(tenant or ""): float(total or 0.0)
                for tenant, total in s.exec(
                    select(Job.tenant, seconds)
                    .join(Job, col(Job.id) == col(Window.job_id))
                    .where(active, in_queue | running)
                    .group_by(Job.tenant)
                ).all()
            }
            # Only the first ``free`` windows of each (class, tenant) can be chosen: fetch those,
            # not the whole backlog.
            head = (
                func.row_number()
                .over(
                    partition_by=[col(Job.priority), func.coalesce(col(Job.tenant), "")],
                    order_by=[col(Job.created_at), col(Window.job_id), col(Window.index)],
                )
                .label("head")
            )
            ranked = (
                sa_select(
                    col(Window.id).label("wid"),
                    col(Window.job_id).label("job_id"),
                    col(Window.index).label("idx"),
                    (col(Window.end_s) - col(Window.start_s)).label("seconds"),
                    col(Job.tenant).label("tenant"),
                    col(Job.priority).label("priority"),
                    col(Job.created_at).label("created"),
                    head,
                )
                .join(Job, col(Job.id) == col(Window.job_id))
                .where(unsent)
                .subquery()
            )
            rows = s.execute(
                sa_select(
                    ranked.c.wid,
                    ranked.c.job_id,
                    ranked.c.idx,
                    ranked.c.seconds,
                    ranked.c.tenant,
                    ranked.c.priority,
                    ranked.c.created,
                ).where(ranked.c.head <= free)
            ).all()
            candidates = [
                WindowCandidate(wid, job_id, index, float(sec), tenant or "", Priority(priority), created)
                for wid, job_id, index, sec, tenant, priority, created in rows
            ]
            picks = choose(candidates, in_service, free)
            if not picks:
                s.commit()
                return []
            now = utcnow()
            s.execute(
                update(Window)
                .where(col(Window.id).in_([p.window_id for p in picks]))
                .where(col(Window.dispatched_at).is_(None))
                .values(dispatched_at=now)
            )
            send(picks)
            s.commit()
        return picks

    # --- metrics --------------------------------------------------------------------------------

    def window_durations(self, buckets: tuple[float, ...]) -> tuple[int, float, list[int]]:
        """Finished windows' engine seconds: how many, their sum, and how many are ≤ each bucket."""
        done = (col(Window.status) == WindowStatus.done) & col(Window.engine_s).is_not(None)
        columns = [func.count(case((col(Window.engine_s) <= b, 1))) for b in buckets]
        with self.db.session() as s:
            row = s.exec(
                select(func.count(), func.coalesce(func.sum(Window.engine_s), 0.0), *columns).where(done)
            ).one()
        values: list[Any] = list(row)
        return int(values[0] or 0), float(values[1] or 0.0), [int(n or 0) for n in values[2:]]

    def backlog(self) -> dict[tuple[str | None, str], float]:
        """Seconds of audio the model has still to hear, by (tenant, priority): windows pending or
        running, plus the part of each recording still queued or being split (its probed length
        less the windows already registered). Ended jobs count for nothing, whatever their windows."""
        waiting = (WindowStatus.pending, WindowStatus.running)
        out: dict[tuple[str | None, str], float] = {}

        def add(tenant: str | None, priority: Any, seconds: Any) -> None:
            if seconds and float(seconds) > 0:
                key = (tenant, str(priority or "interactive"))
                out[key] = out.get(key, 0.0) + float(seconds)

        length = col(Window.end_s) - col(Window.start_s)
        with self.db.session() as s:
            windows = s.exec(
                select(Job.tenant, Job.priority, func.sum(length))
                .join(Job, col(Job.id) == col(Window.job_id))
                .where(col(Window.status).in_(list(waiting)))
                .where(col(Job.status).in_([JobStatus.queued, JobStatus.splitting, JobStatus.transcribing]))
                .group_by(Job.tenant, Job.priority)
            ).all()
            unsplit = s.exec(
                select(Job.tenant, Job.priority, Job.duration_s, func.coalesce(func.sum(length), 0.0))
                .select_from(Job)
                .outerjoin(Window, col(Window.job_id) == col(Job.id))
                .where(col(Job.status).in_([JobStatus.queued, JobStatus.splitting]))
                .where(col(Job.duration_s).is_not(None))
                .group_by(col(Job.id))
            ).all()
        for tenant, priority, seconds in windows:
            add(tenant, priority, seconds)
        for tenant, priority, duration, covered in unsplit:
            add(tenant, priority, float(duration or 0.0) - float(covered or 0.0))
        return out

    def reducing_by_tenant(self) -> dict[str | None, int]:
        """Jobs whose windows are all done and whose reduce has not ended, by tenant."""
        with self.db.session() as s:
            rows = s.exec(
                select(Job.tenant, func.count()).where(Job.status == JobStatus.reducing).group_by(Job.tenant)
            ).all()
        return {tenant: int(n) for tenant, n in rows}
