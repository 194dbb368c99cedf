"""The ``tenant`` table's one owner: a tenant is made with its webhook secret when its first API key
is created (api/keys.py), and the secret is read back to sign its webhooks (workers/webhooks.py) and
its media links (api/recording_routes.py); a drop-folder sidecar may name one that exists
(workers/drop_tenant.py). Its retention setting (``voxbatch keys retention``) is read by the sweep
(jobs/retention.py)."""

from __future__ import annotations

import secrets

from sqlalchemy import update
from sqlmodel import Session, col, select

from jobs.db import Database
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


def set_retention(db: Database, name: str, days: int | None) -> bool:
    """Delete the tenant's finished jobs after ``days`` days (None: keep them); False for an
    unknown tenant."""
    if days is not None and days < 1:
        raise ValueError("retention is at least one day")
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
