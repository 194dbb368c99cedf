"""The ``tenant`` table's one owner: a tenant is made with its webhook secret when its first API key
is created (api/keys.py), and the secret is read back to sign its webhooks (workers/webhooks.py) and
its media links (api/recording_routes.py); a drop-folder sidecar may name one that exists
(workers/drop_tenant.py). Its retention setting (``voxbatch keys retention``, or the tenant's own
``PUT /v1/tenant/retention``) is read by the sweep (jobs/retention.py)."""

from __future__ import annotations

import secrets

from sqlalchemy import update
from sqlmodel import Session, col, select

from jobs.db import Database
from jobs.limits import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS
from jobs.models import Tenant


def ensure_tenant(session: Session, name: str) -> None:
    """Add tenant ``name`` with a new secret unless it exists, in the caller's transaction."""
    if session.get(Tenant, name) is None:
        session.add(Tenant(name=name, webhook_secret=secrets.token_hex(32)))
        session.flush()


def tenant_exists(db: Database, name: str) -> bool:
    with db.session() as s:
        return s.get(Tenant, name[:200]) is not None


def tenant_secret(db: Database, name: str | None) -> str | None:
    """The webhook secret of tenant ``name``; None without a tenant or for an unknown one."""
    if not name:
        return None
    with db.session() as s:
        row = s.get(Tenant, name)
        return row.webhook_secret if row else None


def retention_problem(days: object) -> str | None:
    """Why ``days`` is no retention setting (one line), or None: a whole number of days in
    ``MIN_RETENTION_DAYS..MAX_RETENTION_DAYS``, or None to keep finished jobs."""
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int):
        return f"retention_days must be a whole number of days or null, not {str(days)[:40]!r}"
    if not MIN_RETENTION_DAYS <= days <= MAX_RETENTION_DAYS:
        return (
            f"retention_days must be from {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS} "
            f"(null keeps finished jobs), not {days}"
        )
    return None


def get_retention(db: Database, name: str) -> int | None:
    """The tenant's retention in days; None when it keeps finished jobs (or is unknown)."""
    with db.session() as s:
        row = s.get(Tenant, name[:200])
        return row.retention_days if row else None


def set_retention(db: Database, name: str, days: int | None) -> bool:
    """Delete the tenant's finished jobs after ``days`` days (None: keep them); False for an
    unknown tenant. ValueError (one line) for days out of range."""
    problem = retention_problem(days)
    if problem:
        raise ValueError(problem)
    with db.session() as s:
        res = s.execute(update(Tenant).where(col(Tenant.name) == name).values(retention_days=days))
        s.commit()
    return int(res.rowcount) == 1  # type: ignore[attr-defined]


def retention_days(db: Database) -> dict[str, int]:
    """Tenants with a retention setting, and its days."""
    with db.session() as s:
        rows = s.exec(
            select(Tenant.name, Tenant.retention_days).where(col(Tenant.retention_days).is_not(None))
        )
        return {name: int(days) for name, days in rows if days}
