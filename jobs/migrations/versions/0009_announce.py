"""queuedstep.sent_at: an announce step stays in the outbox, marked sent, until a cpu worker did it

Revision ID: 0009_announce
Revises: 0008_proceedings
Create Date: 2026-12-06 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0009_announce"
down_revision: str | None = "0008_proceedings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("queuedstep") as batch:
        batch.add_column(sa.Column("sent_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("queuedstep") as batch:
        batch.drop_column("sent_at")
