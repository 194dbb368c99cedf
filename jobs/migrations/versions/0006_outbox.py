"""the transactional outbox (queuedstep), the dispatch locks, and leases on drop-folder claims

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 23:40:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Claims made before leases existed keep the old rule: taken over 15 minutes after they were made.
LEGACY_CLAIM = timedelta(minutes=15)


def upgrade() -> None:
    op.create_table(
        "queuedstep",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("index", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_queuedstep_job_id"), "queuedstep", ["job_id"], unique=False)
    locks = op.create_table(
        "dispatchlock",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(locks, [{"name": "outbox", "turns": 0}, {"name": "windows", "turns": 0}])
    with op.batch_alter_table("dropobject") as batch:
        batch.add_column(
            sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch.add_column(sa.Column("lease_expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    conn = op.get_bind()
    claims = conn.execute(
        sa.text("SELECT id, created_at FROM dropobject WHERE job_id IS NULL AND error IS NULL")
    ).all()
    stamp = sa.text("UPDATE dropobject SET lease_expires_at = :t WHERE id = :id").bindparams(
        sa.bindparam("t", type_=sqlmodel.sql.sqltypes.UTCDateTime())
    )
    for row_id, created_at in claims:
        if isinstance(created_at, str):  # SQLite hands back text
            created_at = datetime.fromisoformat(created_at)
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        conn.execute(stamp, {"t": created_at + LEGACY_CLAIM, "id": row_id})


def downgrade() -> None:
    with op.batch_alter_table("dropobject") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
    op.drop_table("dispatchlock")
    op.drop_index(op.f("ix_queuedstep_job_id"), table_name="queuedstep")
    op.drop_table("queuedstep")
