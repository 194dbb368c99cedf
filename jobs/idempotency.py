"""``Idempotency-Key`` on ``POST /v1/jobs``: the same key and request of one tenant within 24 h
answer with the same job instead of making another. This module owns the ``idempotencykey`` table.

A request first *reserves* its key (one INSERT; the primary key decides between racing requests),
creates its job, then records the job on the key. A request that finds its key reserved but not
yet done gets ``IdempotencyInProgress`` (HTTP 409, retry); one whose request differs from the
first gets an InputError (422). A request that fails releases the key, so a retry can succeed.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from jobs.errors import InputError, TooBusy
from jobs.models import MAX_IDEMPOTENCY_KEY_CHARS, IdempotencyKey, utcnow

if TYPE_CHECKING:
    from jobs.db import Database

KEEP = timedelta(hours=24)
MAX_KEY_CHARS = MAX_IDEMPOTENCY_KEY_CHARS


class IdempotencyInProgress(TooBusy):
    """The first request with this key is still being handled (HTTP 409)."""


def request_hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()


def reserve(db: Database, tenant: str, key: str, digest: str) -> str | None:
    """Reserve ``key`` for a new request (None), or the job id an earlier identical request made."""
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise InputError(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable characters")
    for _ in range(3):
        with db.session() as s:
            row = s.get(IdempotencyKey, (tenant, key))
            if row is not None and _aware(row.created_at) < utcnow() - KEEP:
                s.execute(delete(IdempotencyKey).where(*_this(tenant, key)))
                s.commit()
                row = None
            if row is None:
                s.add(IdempotencyKey(tenant=tenant, key=key, request_hash=digest))
                try:
                    s.commit()
                    return None
                except IntegrityError:
                    s.rollback()
                    continue  # another request reserved it first: read what it holds
        if row.request_hash != digest:
            raise InputError("this Idempotency-Key was used with a different request in the last 24 h")
        if row.job_id is None:
            raise IdempotencyInProgress(
                "a request with this Idempotency-Key is still being handled; retry shortly", 2.0
            )
        return row.job_id
    raise IdempotencyInProgress(
        "a request with this Idempotency-Key is still being handled; retry shortly", 2.0
    )


def complete(db: Database, tenant: str, key: str, job_id: str) -> None:
    with db.session() as s:
        s.execute(update(IdempotencyKey).where(*_this(tenant, key)).values(job_id=job_id))
        s.commit()


def release(db: Database, tenant: str, key: str) -> None:
    """Forget a reservation whose request failed, so that a retry is handled afresh."""
    with db.session() as s:
        s.execute(delete(IdempotencyKey).where(*_this(tenant, key), col(IdempotencyKey.job_id).is_(None)))
        s.commit()


def _this(tenant: str, key: str) -> list[Any]:
    return [col(IdempotencyKey.tenant) == tenant, col(IdempotencyKey.key) == key]


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def forget_job(db: Database, job_id: str) -> None:
    """Drop the keys that named a job being deleted: a replay makes a new job, not a 404."""
    with db.session() as s:
        s.execute(delete(IdempotencyKey).where(col(IdempotencyKey.job_id) == job_id))
        s.commit()
