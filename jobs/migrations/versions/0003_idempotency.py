"""idempotency keys of POST /v1/jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotencykey",
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("request_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "key"),
    )
    op.create_index(op.f("ix_idempotencykey_created_at"), "idempotencykey", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotencykey_created_at"), table_name="idempotencykey")
    op.drop_table("idempotencykey")
