"""job.proceedings_at: when a build of its collection's proceedings last listed the job

Revision ID: 0008_proceedings
Revises: 0007_live
Create Date: 2026-12-06 02:30:00

A succeeded job of a collection with no ``proceedings_at`` has its proceedings step due; the sweep
sends it again when its message was lost. The partial index holds only such rows. Jobs that
succeeded before this revision were built by the step they had: they count as listed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0008_proceedings"
down_revision: str | None = "0007_live"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As jobs.models.PROCEEDINGS_DUE reads at this revision.
PROCEEDINGS_DUE = "collection_id IS NOT NULL AND proceedings_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("proceedings_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.execute(
        "UPDATE job SET proceedings_at = finished_at WHERE collection_id IS NOT NULL AND status = 'succeeded'"
    )
    op.create_index(
        "ix_job_proceedings_due",
        "job",
        ["updated_at"],
        unique=False,
        postgresql_where=sa.text(PROCEEDINGS_DUE),
        sqlite_where=sa.text(PROCEEDINGS_DUE),
    )


def downgrade() -> None:
    op.drop_index("ix_job_proceedings_due", table_name="job")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("proceedings_at")
