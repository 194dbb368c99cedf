"""collections, job titles, per-tenant retention, and the full-text index of transcripts

Revision ID: 0007_collections
Revises: 0006
Create Date: 2026-12-06 00:00:00

PostgreSQL: ``searchsegment.tsv`` (tsvector) under a GIN index. SQLite: FTS5 tables over
``searchsegment`` (external content), one per tokenizer (``jobs.search.FTS_TABLES``); they are not
modelled, so the comparison of models and database leaves them out (``jobs.search.is_fts_table``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op
from sqlalchemy.dialects.postgresql import TSVECTOR

revision: str = "0007_collections"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept here as written (a migration does not import the code that may change after it): the
# tokenizer of each FTS5 table, as jobs.search.FTS_TABLES names them.
FTS_TABLES = {
    "searchsegment_fts_stem": "porter unicode61 remove_diacritics 2",
    "searchsegment_fts_plain": "unicode61 remove_diacritics 2",
}


def upgrade() -> None:
    op.create_table(
        "collection",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("preset", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("instructions", sa.Text(), nullable=True),
        sa.Column("vocabulary", sa.Text(), nullable=True),
        sa.Column("language", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("priority", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "name", name="uq_collection_tenant_name"),
    )
    op.create_index(op.f("ix_collection_tenant"), "collection", ["tenant"], unique=False)
    with op.batch_alter_table("job") as batch:
        batch.add_column(
            sa.Column("collection_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True)
        )
        batch.add_column(sa.Column("title", sa.Text(), nullable=True))
        batch.create_index(batch.f("ix_job_collection_id"), ["collection_id"], unique=False)
    with op.batch_alter_table("tenant") as batch:
        batch.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))
    op.create_table(
        "searchsegment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("collection_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("config", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("tsv", sa.Text().with_variant(TSVECTOR(), "postgresql"), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_searchsegment_job_id"), "searchsegment", ["job_id"], unique=False)
    op.create_index(op.f("ix_searchsegment_tenant"), "searchsegment", ["tenant"], unique=False)
    op.create_index(op.f("ix_searchsegment_collection_id"), "searchsegment", ["collection_id"], unique=False)
    op.create_index("ix_searchsegment_tsv", "searchsegment", ["tsv"], unique=False, postgresql_using="gin")
    op.create_table(
        "searchdoc",
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("collection_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("config", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("segments", sa.Integer(), nullable=False),
        sa.Column("chars", sa.Integer(), nullable=False),
        sa.Column("indexed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_index(op.f("ix_searchdoc_tenant"), "searchdoc", ["tenant"], unique=False)
    op.create_index(op.f("ix_searchdoc_collection_id"), "searchdoc", ["collection_id"], unique=False)
    if op.get_bind().dialect.name == "sqlite":
        for table, tokenizer in FTS_TABLES.items():
            op.execute(
                f"CREATE VIRTUAL TABLE {table} USING fts5(text, content='searchsegment', "
                f"content_rowid='id', tokenize='{tokenizer}')"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in FTS_TABLES:
            op.execute(f"DROP TABLE IF EXISTS {table}")
    op.drop_index(op.f("ix_searchdoc_collection_id"), table_name="searchdoc")
    op.drop_index(op.f("ix_searchdoc_tenant"), table_name="searchdoc")
    op.drop_table("searchdoc")
    op.drop_index("ix_searchsegment_tsv", table_name="searchsegment")
    op.drop_index(op.f("ix_searchsegment_collection_id"), table_name="searchsegment")
    op.drop_index(op.f("ix_searchsegment_tenant"), table_name="searchsegment")
    op.drop_index(op.f("ix_searchsegment_job_id"), table_name="searchsegment")
    op.drop_table("searchsegment")
    with op.batch_alter_table("tenant") as batch:
        batch.drop_column("retention_days")
    with op.batch_alter_table("job") as batch:
        batch.drop_index(batch.f("ix_job_collection_id"))
        batch.drop_column("title")
        batch.drop_column("collection_id")
    op.drop_index(op.f("ix_collection_tenant"), table_name="collection")
    op.drop_table("collection")
