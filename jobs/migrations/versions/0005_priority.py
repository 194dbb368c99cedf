"""job priority (interactive | batch) and when a window's message was sent (fair metering)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 23:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


PRIORITY = sa.Enum("interactive", "batch", name="priority")


def upgrade() -> None:
    PRIORITY.create(op.get_bind(), checkfirst=True)  # PostgreSQL's enum type; nothing on SQLite
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("priority", PRIORITY, nullable=False, server_default="interactive"))
    with op.batch_alter_table("window") as batch:
        batch.add_column(sa.Column("dispatched_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("window") as batch:
        batch.drop_column("dispatched_at")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("priority")
    PRIORITY.drop(op.get_bind(), checkfirst=True)
