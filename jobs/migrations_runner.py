"""Applies the schema. Replaced by Alembic migrations (jobs/migrations/) once they exist."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.db import Database


def upgrade(db: Database) -> None:
    db.create_all()
