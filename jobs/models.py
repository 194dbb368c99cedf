"""Tables: a Job and its Windows. The database is the source of truth; Redis only carries messages.

Times are float seconds from the start of the recording; a window spans ``[start_s, end_s)``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Column, Index, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    # Aware: sqlmodel's datetime columns (UTCDateTime) refuse naive values.
    return datetime.now(UTC)


def new_job_id() -> str:
    # 16 hex characters: short enough to type, 64 random bits.
    return uuid.uuid4().hex[:16]


class JobStatus(StrEnum):
    queued = "queued"
    splitting = "splitting"
    transcribing = "transcribing"
    reducing = "reducing"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Priority(StrEnum):
    """Which work goes first: ``interactive`` (the API's and the CLI's default) before ``batch``
    (the drop folder's default); tenants share each class fairly (docs/architecture.md)."""

    interactive = "interactive"
    batch = "batch"


class WindowStatus(StrEnum):
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"


# The rows of the partial index ``ix_job_proceedings_due``: jobs of a collection that no build of its
# proceedings has listed yet (running ones, and succeeded ones whose proceedings step is due).
PROCEEDINGS_DUE = "collection_id IS NOT NULL AND proceedings_at IS NULL"


class Job(SQLModel, table=True):
    # The sweep's question "which succeeded jobs of a collection has no proceedings build listed"
    # reads only those rows, however many jobs the table holds.
    __table_args__ = (
        Index(
            "ix_job_proceedings_due",
            "updated_at",
            postgresql_where=text(PROCEEDINGS_DUE),
            sqlite_where=text(PROCEEDINGS_DUE),
        ),
    )

    id: str = Field(default_factory=new_job_id, primary_key=True, max_length=32)
    tenant: str | None = Field(default=None, index=True, max_length=200)
    # What the user gave: an absolute local path or an s3:// URL. Never modified or deleted.
    source: str = Field(sa_column=Column(Text, nullable=False))
    # Set when the recording was uploaded into our own storage (API, `submit FILE`).
    source_key: str | None = Field(default=None, sa_column=Column(Text))
    source_name: str = Field(default="", sa_column=Column(Text, nullable=False))
    fingerprint: str | None = Field(default=None, index=True, max_length=128)
    status: JobStatus = Field(default=JobStatus.queued, index=True, max_length=16)
    error: str | None = Field(default=None, sa_column=Column(Text))
    instructions: str | None = Field(default=None, sa_column=Column(Text))
    preset: str = Field(default="conference-talk", max_length=64)
    language: str | None = Field(default=None, max_length=16)
    # Names and terms for the engines (jobs/options.parse_vocabulary), one per line.
    vocabulary: str | None = Field(default=None, sa_column=Column(Text))
    window_minutes: float = 30.0
    engine: str | None = Field(default=None, max_length=32)
    model: str | None = Field(default=None, max_length=200)
    duration_s: float | None = None
    windows_total: int | None = None
    windows_done: int = 0
    # Speech segments of the windows that have been cut so far (the total grows as windows start).
    segments_total: int | None = None
    segments_done: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    reduce_claimed: bool = False
    attempt: int = 0
    webhook_url: str | None = Field(default=None, sa_column=Column(Text))
    # The webhook's events besides the job's end, comma-separated (jobs/options.WEBHOOK_EVENTS);
    # None: the job's end only.
    webhook_events: str | None = Field(default=None, sa_column=Column(Text))
    priority: Priority = Field(
        default=Priority.interactive, max_length=16, sa_column_kwargs={"server_default": "interactive"}
    )
    webhook_attempts: str | None = Field(default=None, sa_column=Column(Text))  # JSON list
    # The collection it belongs to (jobs/collections.py), and a title given at submission (a
    # manifest's row); the document's title is the source's name without it.
    collection_id: str | None = Field(default=None, index=True, max_length=32)
    title: str | None = Field(default=None, sa_column=Column(Text))
    # When a build of its collection's proceedings last listed it (jobs/proceedings.py). A
    # succeeded job of a collection with none: its proceedings step is still due, and the sweep
    # sends it again when its message was lost (workers/sweeper.py).
    proceedings_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = None
    split_started_at: datetime | None = None
    split_finished_at: datetime | None = None
    reduce_started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def output_prefix(self) -> str:
        return f"jobs/{self.id}/output/"


class Window(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_window_job_index"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", index=True, max_length=32)
    index: int
    start_s: float
    end_s: float
    status: WindowStatus = Field(default=WindowStatus.pending, index=True, max_length=16)
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, index=True)
    error: str | None = Field(default=None, sa_column=Column(Text))
    segments_total: int | None = None
    segments_done: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    engine_s: float | None = None
    # When its message went to the gpu queue: windows are metered into the queue by fair share.
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def audio_key(self) -> str:
        return window_audio_key(self.job_id, self.index)

    @property
    def result_key(self) -> str:
        return window_result_key(self.job_id, self.index)


def window_audio_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/windows/{index:04d}.flac"


def window_result_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/windows/{index:04d}.json"


class Tenant(SQLModel, table=True):
    """Who owns jobs and keys; webhooks of its jobs are signed with its secret."""

    name: str = Field(primary_key=True, max_length=200)
    webhook_secret: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    # Finished jobs older than this many days are deleted by the sweep (jobs/retention.py); None keeps them.
    retention_days: int | None = None


class ApiKey(SQLModel, table=True):
    """An API key, stored as a SHA-256 hash; ``prefix`` identifies it in lists and logs."""

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(foreign_key="tenant.name", index=True, max_length=200)
    prefix: str = Field(index=True, max_length=32)
    key_hash: str = Field(unique=True, max_length=128)
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class DropObject(SQLModel, table=True):
    """The drop folder's ledger: one row per (bucket, key, ETag) ever seen, so ingestion is
    exactly-once across scans, restarts and several watchers; new content (new ETag) is a new row."""

    __table_args__ = (UniqueConstraint("bucket", "key", "etag", name="uq_drop_bucket_key_etag"),)

    id: int | None = Field(default=None, primary_key=True)
    bucket: str = Field(max_length=255)
    key: str = Field(sa_column=Column(Text, nullable=False))
    etag: str = Field(max_length=200)
    size: int | None = None
    job_id: str | None = Field(default=None, index=True, max_length=32)
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    # A claim (no job, no error yet) belongs to the watcher that renews this lease; once it has
    # expired any watcher may take the recording over (workers/drop_ledger.py).
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = None


class QueuedStep(SQLModel, table=True):
    """The transactional outbox: a step written in the same transaction as the change that makes
    it due (a new job row), deleted in the transaction that hands it to the broker
    (``workers.meter.relay``). Owned by ``jobs.store``.

    An ``announce`` step (a job's end: webhook, drop-folder outbox) is not deleted when sent: it is
    marked ``sent_at`` and deleted by the cpu worker that did it (``JobStore.announced``); one whose
    message was lost (Redis without its data) or whose work failed (S3 away) is sent again
    ``announce_resend_s`` after it was sent. Nothing else knows a job still has to be announced."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(index=True, max_length=32)
    kind: str = Field(max_length=16)
    index: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class DispatchLock(SQLModel, table=True):
    """One row per thing that is dispatched under a lock (``outbox``, ``windows``): a transaction
    that updates the row holds it (PostgreSQL's row lock; SQLite's write lock) until it commits,
    so relays and meters in several processes take turns."""

    name: str = Field(primary_key=True, max_length=32)
    turns: int = 0


MAX_IDEMPOTENCY_KEY_CHARS = 200


class IdempotencyKey(SQLModel, table=True):
    """A POST /v1/jobs Idempotency-Key and the job it made (owned by ``jobs.idempotency``)."""

    tenant: str = Field(primary_key=True, max_length=200)
    key: str = Field(primary_key=True, max_length=MAX_IDEMPOTENCY_KEY_CHARS)
    request_hash: str = Field(max_length=64)
    job_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Collection(SQLModel, table=True):
    """Recordings that belong together (a conference, a quarter's meetings), with options its jobs
    share; owned by ``jobs.collections``. Jobs point at it with ``Job.collection_id``."""

    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_collection_tenant_name"),)

    id: str = Field(default_factory=new_job_id, primary_key=True, max_length=32)
    tenant: str | None = Field(default=None, index=True, max_length=200)
    name: str = Field(max_length=200)
    preset: str | None = Field(default=None, max_length=64)
    instructions: str | None = Field(default=None, sa_column=Column(Text))
    vocabulary: str | None = Field(default=None, sa_column=Column(Text))
    language: str | None = Field(default=None, max_length=16)
    priority: str | None = Field(default=None, max_length=16)
    created_at: datetime = Field(default_factory=utcnow)


class SearchSegment(SQLModel, table=True):
    """One speech segment of a finished job, in the full-text index (owned by ``jobs.search``).

    PostgreSQL: ``tsv`` holds ``to_tsvector(config, text)`` under a GIN index. SQLite: ``tsv`` stays
    empty; FTS5 tables (``searchsegment_fts_<tokenizer>``, made by migration 0007, not modelled)
    index ``text`` with this table as their external content."""

    __table_args__ = (Index("ix_searchsegment_tsv", "tsv", postgresql_using="gin"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(index=True, max_length=32)
    tenant: str | None = Field(default=None, index=True, max_length=200)
    collection_id: str | None = Field(default=None, index=True, max_length=32)
    segment: int
    start_s: float
    end_s: float
    text: str = Field(sa_column=Column(Text, nullable=False))
    # The text-search configuration of the job's language (jobs/search.REGCONFIG, 'simple' otherwise).
    config: str = Field(max_length=32)
    tsv: str | None = Field(
        default=None, sa_column=Column(Text().with_variant(TSVECTOR(), "postgresql"), nullable=True)
    )


class SearchDoc(SQLModel, table=True):
    """One row per job in the full-text index: whose it is, its configuration and sizes (owned by
    ``jobs.search``)."""

    job_id: str = Field(primary_key=True, max_length=32)
    tenant: str | None = Field(default=None, index=True, max_length=200)
    collection_id: str | None = Field(default=None, index=True, max_length=32)
    config: str = Field(max_length=32)
    segments: int = 0
    chars: int = 0
    indexed_at: datetime = Field(default_factory=utcnow)
