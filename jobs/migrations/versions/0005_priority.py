"""job priority (interactive | batch) and when a window's message was sent (fair metering)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 23:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(
            sa.Column("priority", sa.String(length=16), nullable=False, server_default="interactive")
        )
    with op.batch_alter_table("window") as batch:
        batch.add_column(sa.Column("dispatched_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("window") as batch:
        batch.drop_column("dispatched_at")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("priority")
