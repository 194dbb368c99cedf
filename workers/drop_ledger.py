"""The drop folder's ledger: one ``DropObject`` row per (bucket, key, ETag) ever seen, so that
ingestion is exactly-once across scans, restarts, several watchers and SQS events. The only module
that reads or writes ``dropobject``.

A watcher takes a recording by inserting its row (the unique constraint decides; whoever loses the
insert does nothing). The row is then a *claim*: it names its watcher and a lease the live watcher
renews (``claim_kept``). The job is created in one transaction with the claim's confirmation
(``job_check``, joined to ``JobStore.add``): the row gets the job id only if the claim is still this
watcher's, and the job exists only if the row got its id. So a watcher killed after the claim
leaves a claim that lapses within ``drop_claim_lease_s`` (any watcher's next scan or event takes
the recording over, ``claim``), and one killed after the job's commit leaves a row naming the job
(nobody takes it again).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from jobs.db import Database
from jobs.models import DropObject, Job, utcnow
from jobs.states import ENDED
from jobs.store import JoinedCheck

log = logging.getLogger(__name__)

# A claim made by a watcher before claims had leases (or held this long by a watcher that lives
# but does not finish) is taken over whatever its lease says.
STALE_CLAIM = timedelta(minutes=15)
DEFAULT_CLAIM_LEASE_S = 30.0


@dataclass(frozen=True)
class DropItem:
    """One version of one object in the inbox."""

    bucket: str
    key: str
    etag: str
    size: int


def normalize_etag(etag: str) -> str:
    # Listings quote ETags, event records do not: both must name the same ledger row.
    return etag.strip().strip('"')


def _lapsed(now: datetime) -> object:
    """The SQL condition of a claim nobody holds any more: no job, no error, lease run out."""
    return (
        col(DropObject.job_id).is_(None)
        & col(DropObject.error).is_(None)
        & or_(
            col(DropObject.lease_expires_at).is_(None),
            col(DropObject.lease_expires_at) < now,
            col(DropObject.created_at) < now - STALE_CLAIM,
        )
    )


def _is_lapsed(
    row_job: str | None, row_error: str | None, expires: datetime | None, created: datetime, now: datetime
) -> bool:
    if row_job is not None or row_error is not None:
        return False
    return expires is None or _aware(expires) < now or _aware(created) < now - STALE_CLAIM


def _aware(t: datetime) -> datetime:
    from datetime import UTC

    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def known_versions(db: Database, bucket: str, keys: Sequence[str]) -> set[tuple[str, str]]:
    """(key, etag) pairs of ``keys`` already in the ledger and decided or claimed by a live
    watcher, in one query. A lapsed claim is not known: whoever sees it takes it over."""
    if not keys:
        return set()
    now = utcnow()
    with db.session() as s:
        rows = s.execute(
            sa_select(
                col(DropObject.key),
                col(DropObject.etag),
                col(DropObject.job_id),
                col(DropObject.error),
                col(DropObject.lease_expires_at),
                col(DropObject.created_at),
            )
            .where(col(DropObject.bucket) == bucket)
            .where(col(DropObject.key).in_(list(set(keys))))
        ).all()
    return {
        (k, e)
        for k, e, job, error, expires, created in rows
        if not _is_lapsed(job, error, expires, created, now)
    }


def claim(
    db: Database, item: DropItem, owner: str = "", lease_s: float = DEFAULT_CLAIM_LEASE_S
) -> int | None:
    """Insert the ledger row as ``owner``'s claim, or take over a lapsed claim on it; its id when
    this caller won, None when the row is decided or claimed by a live watcher."""
    now = utcnow()
    values = {
        "bucket": item.bucket,
        "key": item.key,
        "etag": item.etag,
        "size": item.size,
        "created_at": now,
        "lease_owner": owner,
        "lease_expires_at": now + timedelta(seconds=lease_s),
    }
    conflict = ["bucket", "key", "etag"]
    with db.session() as s:
        dialect = s.get_bind().dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
            new = insert(DropObject).values(**values)
            stmt = new.on_conflict_do_update(
                index_elements=conflict,
                set_={
                    "lease_owner": new.excluded.lease_owner,
                    "lease_expires_at": new.excluded.lease_expires_at,
                    "created_at": new.excluded.created_at,
                },
                where=_lapsed(now),  # type: ignore[arg-type]
            ).returning(col(DropObject.id))
            row_id = s.execute(stmt).scalar()
            s.commit()
            if row_id is not None:
                log.debug("drop: %s claimed by %s", item.key, owner)
            return int(row_id) if row_id is not None else None
        row = DropObject(**values)  # type: ignore[arg-type]
        s.add(row)
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            return None
        return row.id


def renew(db: Database, row_id: int, owner: str, lease_s: float) -> bool:
    """Extend ``owner``'s claim; False when it is no longer a claim of ``owner``."""
    with db.session() as s:
        res = s.execute(
            update(DropObject)
            .where(col(DropObject.id) == row_id)
            .where(col(DropObject.lease_owner) == owner)
            .where(col(DropObject.job_id).is_(None))
            .where(col(DropObject.error).is_(None))
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        )
        s.commit()
        return int(res.rowcount or 0) == 1  # type: ignore[attr-defined]


@contextmanager
def claim_kept(db: Database, row_id: int, owner: str, lease_s: float) -> Iterator[None]:
    """Renew the claim every third of its lease while the body runs (probe, sidecar, submit): the
    claim lives exactly as long as this watcher does."""
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(lease_s / 3):
            try:
                if not renew(db, row_id, owner, lease_s):
                    return
            except Exception as exc:  # the database away for a moment: try again next time
                log.warning("drop: could not renew a claim: %s", exc)

    thread = threading.Thread(target=keep, name="voxbatch-drop-claim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def job_check(row_id: int, owner: str, confirmed: list[str] | None = None) -> JoinedCheck:
    """For ``jobs.store.joined``: in the job's transaction, write the job id on the claim's row,
    only while the claim is still ``owner``'s. ``confirmed`` gets the job id when it did."""

    def check(s: Session, job_id: str) -> bool:
        res = s.execute(
            update(DropObject)
            .where(col(DropObject.id) == row_id)
            .where(col(DropObject.lease_owner) == owner)
            .where(col(DropObject.job_id).is_(None))
            .where(col(DropObject.error).is_(None))
            .values(job_id=job_id, lease_expires_at=None)
        )
        won = int(res.rowcount or 0) == 1  # type: ignore[attr-defined]
        if won and confirmed is not None:
            confirmed.append(job_id)
        return won

    return check


def record_job(db: Database, row_id: int, job_id: str) -> None:
    with db.session() as s:
        s.execute(
            update(DropObject)
            .where(col(DropObject.id) == row_id)
            .values(job_id=job_id, lease_expires_at=None)
        )
        s.commit()


def record_error(db: Database, row_id: int, reason: str) -> None:
    with db.session() as s:
        s.execute(
            update(DropObject)
            .where(col(DropObject.id) == row_id)
            .where(col(DropObject.job_id).is_(None))
            .values(error=reason[:4000], lease_expires_at=None)
        )
        s.commit()


def release(db: Database, row_id: int, owner: str | None = None) -> None:
    """Forget an unfinished claim so that a later scan (by any watcher) takes the recording again."""
    query = (
        delete(DropObject)
        .where(col(DropObject.id) == row_id)
        .where(col(DropObject.job_id).is_(None))
        .where(col(DropObject.error).is_(None))
    )
    if owner is not None:
        query = query.where(col(DropObject.lease_owner) == owner)
    with db.session() as s:
        s.execute(query)
        s.commit()


def names_job(s: Session, job_id: str) -> bool:
    """Whether a drop-folder recording's ledger row names this job (its end has an outbox result to
    write). Read in the caller's transaction: the one that ends the job (``Runtime.announces``)."""
    return s.exec(select(DropObject.id).where(col(DropObject.job_id) == job_id)).first() is not None


def drop_object_for_job(db: Database, job_id: str) -> DropObject | None:
    with db.session() as s:
        return s.exec(select(DropObject).where(col(DropObject.job_id) == job_id)).first()


def ledger_counts(db: Database) -> dict[str, int]:
    """The drop folder's backlog, read only: recordings ``seen`` (every ledger row), ``claimed``
    (taken by a watcher, no job yet), ``submitted`` (a job that has not ended), ``done`` (its job
    ended: documents or error.json in the outbox) and ``rejected`` (error.json without a job).
    claimed + submitted + done + rejected = seen. The job table is only joined, for its state."""
    ended = [str(s) for s in ENDED]
    state = case(
        (col(DropObject.error).is_not(None) & col(DropObject.job_id).is_(None), "rejected"),
        (col(DropObject.job_id).is_(None), "claimed"),
        (col(Job.status).in_(ended), "done"),
        else_="submitted",
    )
    with db.session() as s:
        rows = s.exec(
            select(state, func.count())
            .select_from(DropObject)
            .outerjoin(Job, col(Job.id) == col(DropObject.job_id))
            .group_by(state)
        ).all()
    counts = {name: 0 for name in ("claimed", "submitted", "done", "rejected")}
    for name, n in rows:
        counts[str(name)] = int(n)
    return {"seen": sum(counts.values()), **counts}
