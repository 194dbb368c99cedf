"""The drop folder's ledger: one ``DropObject`` row per (bucket, key, ETag) ever seen, so that
ingestion is exactly-once across scans, restarts and several watchers (the unique constraint
decides who takes a recording; whoever loses the insert does nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, delete, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from jobs.db import Database
from jobs.models import DropObject, Job, utcnow
from jobs.states import ENDED

# A ledger row with neither a job nor an error this old belongs to a watcher that died between
# taking the recording and submitting it: release it so a later scan takes it again.
STALE_CLAIM = timedelta(minutes=15)


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


def known_versions(db: Database, bucket: str, keys: Sequence[str]) -> set[tuple[str, str]]:
    """(key, etag) pairs of ``keys`` already in the ledger, in one query."""
    if not keys:
        return set()
    with db.session() as s:
        rows = s.exec(
            select(DropObject.key, DropObject.etag)
            .where(col(DropObject.bucket) == bucket)
            .where(col(DropObject.key).in_(list(set(keys))))
        ).all()
    return {(k, e) for k, e in rows}


def claim(db: Database, item: DropItem) -> int | None:
    """Insert the ledger row; its id when this caller won, None when the row already existed."""
    values = {
        "bucket": item.bucket,
        "key": item.key,
        "etag": item.etag,
        "size": item.size,
        "created_at": utcnow(),
    }
    conflict = ["bucket", "key", "etag"]
    with db.session() as s:
        dialect = s.get_bind().dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
            stmt = (
                insert(DropObject)
                .values(**values)
                .on_conflict_do_nothing(index_elements=conflict)
                .returning(col(DropObject.id))
            )
            row_id = s.execute(stmt).scalar()
            s.commit()
            return int(row_id) if row_id is not None else None
        row = DropObject(**values)  # type: ignore[arg-type]
        s.add(row)
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            return None
        return row.id


def record_job(db: Database, row_id: int, job_id: str) -> None:
    with db.session() as s:
        s.execute(update(DropObject).where(col(DropObject.id) == row_id).values(job_id=job_id))
        s.commit()


def record_error(db: Database, row_id: int, reason: str) -> None:
    with db.session() as s:
        s.execute(update(DropObject).where(col(DropObject.id) == row_id).values(error=reason[:4000]))
        s.commit()


def release(db: Database, row_id: int) -> None:
    """Forget an unfinished claim so that a later scan (by any watcher) takes the recording again."""
    with db.session() as s:
        s.execute(
            delete(DropObject)
            .where(col(DropObject.id) == row_id)
            .where(col(DropObject.job_id).is_(None))
            .where(col(DropObject.error).is_(None))
        )
        s.commit()


def release_stale_claims(db: Database, bucket: str) -> int:
    with db.session() as s:
        res = s.execute(
            delete(DropObject)
            .where(col(DropObject.bucket) == bucket)
            .where(col(DropObject.job_id).is_(None))
            .where(col(DropObject.error).is_(None))
            .where(col(DropObject.created_at) < utcnow() - STALE_CLAIM)
        )
        s.commit()
        return int(res.rowcount or 0)  # type: ignore[attr-defined]


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
