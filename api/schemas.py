"""What the HTTP API reads and answers: pydantic models that become the OpenAPI schema."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from jobs.documents import DOCUMENT_NAMES
from jobs.limits import (
    MAX_COLLECTION_NAME_CHARS,
    MAX_INSTRUCTIONS_CHARS,
    MAX_TITLE_CHARS,
    MAX_WINDOW_MINUTES,
    MIN_WINDOW_MINUTES,
)
from jobs.models import Job, JobStatus, Priority
from jobs.options import JOB_DONE, parse_vocabulary, webhook_events_of
from jobs.presets import PRESETS
from jobs.timings import job_timings


class Progress(BaseModel):
    windows_done: int = Field(description="windows transcribed and summarised so far")
    windows_total: int | None = Field(description="windows the recording was cut into (null until split)")
    segments_done: int = Field(default=0, description="speech segments transcribed so far")
    segments_total: int | None = Field(
        default=None, description="speech segments found so far (grows as windows are cut into segments)"
    )


class Timings(BaseModel):
    """Seconds each stage took; null for a stage that has not run (yet)."""

    queued: float | None = None
    split: float | None = None
    windows: float | None = None
    reduce: float | None = None
    total: float | None = None


class Links(BaseModel):
    self: str
    documents: dict[str, str] = Field(
        default_factory=dict, description="document name → URL; present once the job succeeded"
    )
    flower: str | None = Field(default=None, description="this job's tasks in Flower (search by job id)")


class WebhookAttempt(BaseModel):
    at: str
    status: str = Field(description="queued, delivered, failed (will retry) or gave_up")
    delivery: int | None = Field(default=None, description="1 for the first POST, 2 for its first retry...")
    status_code: int | None = None
    error: str | None = None
    job_status: str | None = Field(default=None, description="the job's state the webhook reported")
    job_attempt: int | None = Field(default=None, description="the job's attempt (retries count up)")
    event: str | None = Field(default=None, description="job.finished or window.done")
    event_id: str | None = Field(default=None, description="the same on every delivery of one event")
    window: int | None = Field(default=None, description="the window of a window.done event")


class JobOut(BaseModel):
    id: str
    status: JobStatus
    source_name: str
    preset: str
    language: str | None
    instructions: str | None
    window_minutes: float
    vocabulary: list[str] = Field(default_factory=list, description="names and terms for the engines")
    priority: Priority = Field(
        default=Priority.interactive, description="interactive work is served before batch work"
    )
    duration_s: float | None
    error: str | None = Field(description="why the job failed, in one sentence")
    engine: str | None
    model: str | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    timings_s: Timings
    webhook_url: str | None
    webhook_events: list[str] = Field(
        default_factory=lambda: [JOB_DONE], description="what the webhook is sent for: window.done, job.done"
    )
    webhook_attempts: list[WebhookAttempt]
    collection_id: str | None = Field(default=None, description="the collection the job belongs to")
    title: str | None = Field(default=None, description="the title given at submission")
    links: Links


class JobList(BaseModel):
    jobs: list[JobOut]
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="URL of the next page, null on the last one")


class JobFromSource(BaseModel):
    """Start a job on a recording already in object storage, or on a finished presigned upload."""

    source: str | None = Field(default=None, description="s3://bucket/key of an existing object")
    upload_id: str | None = Field(default=None, description="id of a completed POST /v1/uploads upload")
    instructions: str | None = Field(default=None, max_length=MAX_INSTRUCTIONS_CHARS)
    preset: str | None = Field(default=None, description="one of: " + ", ".join(PRESETS))
    language: str | None = Field(default=None, description="ISO 639-1 code; detected when absent")
    window_minutes: float | None = Field(
        default=None, description=f"longest window, {MIN_WINDOW_MINUTES}-{MAX_WINDOW_MINUTES} minutes"
    )
    webhook_url: str | None = Field(default=None, description="POSTed the job as JSON when it ends")
    webhook_events: str | list[str] | None = Field(
        default=None,
        description="window.done and/or job.done (a list, or one comma-separated string); default job.done",
    )
    vocabulary: str | list[str] | None = Field(
        default=None,
        description="names and terms said in the recording: a list, or one comma-separated string",
    )
    priority: Priority | None = Field(
        default=None,
        description="interactive (default) or batch: interactive work is served first; "
        "tenants share each class fairly",
    )
    collection: str | None = Field(
        default=None,
        max_length=200,
        description="id or name of a collection to join (its options are defaults)",
    )
    title: str | None = Field(default=None, max_length=MAX_TITLE_CHARS, description="the document's title")


class UploadCreate(BaseModel):
    filename: str = Field(min_length=1, max_length=1000)
    size: int = Field(gt=0, description="bytes the client will upload")


class UploadPart(BaseModel):
    part_number: int
    url: str


class UploadOut(BaseModel):
    upload_id: str
    part_size: int
    parts: list[UploadPart]
    complete_url: str


class CompletedPart(BaseModel):
    part_number: int = Field(ge=1, le=10_000)
    etag: str = Field(min_length=1, max_length=200)


class UploadComplete(BaseModel):
    parts: list[CompletedPart] = Field(min_length=1, max_length=10_000)


class UploadDone(BaseModel):
    upload_id: str
    size: int


class Problem(BaseModel):
    detail: str


def job_out(job: Job, base_url: str, flower_url: str | None) -> JobOut:
    base = base_url.rstrip("/")
    self_url = f"{base}/v1/jobs/{job.id}"
    documents: dict[str, str] = {}
    if job.status == JobStatus.succeeded:
        documents = {name: f"{self_url}/documents/{name}" for name in DOCUMENT_NAMES}
    flower = None
    if flower_url:
        # Every task's first argument is the job id, so Flower's search finds all of them.
        flower = f"{flower_url.rstrip('/')}/api/tasks?search={job.id}"
    attempts: list[Any] = json.loads(job.webhook_attempts) if job.webhook_attempts else []
    return JobOut(
        id=job.id,
        status=job.status,
        source_name=job.source_name,
        preset=job.preset,
        language=job.language,
        instructions=job.instructions,
        window_minutes=job.window_minutes,
        vocabulary=list(parse_vocabulary(job.vocabulary)),
        priority=Priority(job.priority or Priority.interactive),
        duration_s=job.duration_s,
        error=job.error,
        engine=job.engine,
        model=job.model,
        attempt=job.attempt,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=Progress(
            windows_done=job.windows_done,
            windows_total=job.windows_total,
            segments_done=job.segments_done,
            segments_total=job.segments_total,
        ),
        timings_s=Timings(**job_timings(job)),
        webhook_url=job.webhook_url,
        webhook_events=list(webhook_events_of(job.webhook_events)),
        webhook_attempts=[WebhookAttempt.model_validate(a) for a in attempts if isinstance(a, dict)],
        collection_id=job.collection_id,
        title=job.title,
        links=Links(self=self_url, documents=documents, flower=flower),
    )


class Retention(BaseModel):
    retention_days: int | None = Field(
        description="finished jobs are deleted this many days after they end; null: they are kept"
    )


class CollectionCreate(BaseModel):
    """A collection and the options its jobs share (a job's own options win)."""

    name: str = Field(min_length=1, max_length=MAX_COLLECTION_NAME_CHARS)
    preset: str | None = Field(default=None, description="one of: " + ", ".join(PRESETS))
    instructions: str | None = Field(default=None, max_length=MAX_INSTRUCTIONS_CHARS)
    vocabulary: str | list[str] | None = Field(default=None, description="names and terms of every talk")
    language: str | None = Field(default=None, description="ISO 639-1 code")
    priority: Priority | None = None


class CollectionOut(BaseModel):
    id: str
    name: str
    preset: str | None
    instructions: str | None
    vocabulary: list[str]
    language: str | None
    priority: str | None
    created_at: datetime
    jobs: list[JobOut] = Field(
        default_factory=list, description="its jobs, oldest first (GET of one collection)"
    )
    documents: dict[str, str] = Field(
        default_factory=dict,
        description="the proceedings (collection.md, collection.json, index.html) → URL, once built "
        "(GET of one collection)",
    )


class CollectionList(BaseModel):
    collections: list[CollectionOut]


class SearchHit(BaseModel):
    job_id: str
    segment: int = Field(description="the segment's index in document.json's segments")
    start_s: float
    end_s: float
    snippet: str = Field(description="HTML-escaped text around the match, matched words in <mark>")


class SearchResults(BaseModel):
    query: str
    hits: list[SearchHit]
    limit: int
    offset: int


class ManifestProblems(BaseModel):
    detail: str
    problems: list[str] = Field(description="one line per problem; nothing was submitted")
