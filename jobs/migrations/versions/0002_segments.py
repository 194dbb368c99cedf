"""speech segments: progress counters on windows and jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("job", "window"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("segments_total", sa.Integer(), nullable=True))
            batch.add_column(sa.Column("segments_done", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table in ("job", "window"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("segments_done")
            batch.drop_column("segments_total")
