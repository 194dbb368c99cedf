"""/v1/jobs: create (upload or existing object), list, show, documents, cancel, retry."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

import anyio
import anyio.lowlevel
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from api import staging
from api.auth import RuntimeDep, TenantDep
from api.limits import UploadSlots, chunks_with_timeout, read_json_body
from api.schemas import JobFromSource, JobList, JobOut, Problem, job_out
from api.upload_stream import FILE_FIELD, StreamingForm, UploadTooLarge
from jobs import idempotency, retention
from jobs.documents import DOCUMENT_NAMES, RENDERERS
from jobs.errors import InputError, NotFound, PermanentError
from jobs.limits import MAX_INSTRUCTIONS_CHARS, MAX_TITLE_CHARS, MAX_WINDOW_MINUTES, MIN_WINDOW_MINUTES
from jobs.live import partial_document
from jobs.models import Job, JobStatus, Priority
from jobs.options import JobOptions
from jobs.presets import PRESETS
from jobs.runtime import Runtime
from jobs.steps.ending import cancel
from workers import submission

log = logging.getLogger(__name__)


class DocumentNotReady(PermanentError):
    """A document was asked for before the job succeeded (HTTP 409)."""


router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MEDIA_TYPES = {
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".srt": "application/x-subrip; charset=utf-8",
    ".vtt": "text/vtt; charset=utf-8",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no API key, or an unknown one"},
    404: {"model": Problem, "description": "no such job for this API key"},
}
_OPTION_FIELDS = (
    "instructions",
    "preset",
    "language",
    "window_minutes",
    "webhook_url",
    "vocabulary",
    "priority",
    "collection",
    "title",
    "webhook_events",
)

_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary", "description": "the recording"},
                        "instructions": {"type": "string", "maxLength": MAX_INSTRUCTIONS_CHARS},
                        "preset": {"type": "string", "enum": list(PRESETS)},
                        "language": {"type": "string", "description": "ISO 639-1 code"},
                        "window_minutes": {
                            "type": "number",
                            "minimum": MIN_WINDOW_MINUTES,
                            "maximum": MAX_WINDOW_MINUTES,
                        },
                        "webhook_url": {"type": "string", "format": "uri"},
                        "webhook_events": {
                            "type": "string",
                            "description": "window.done and/or job.done, comma-separated (default job.done)",
                        },
                        "vocabulary": {"type": "string", "description": "names and terms, comma-separated"},
                        "priority": {
                            "type": "string",
                            "enum": [p.value for p in Priority],
                            "description": "interactive (default) or batch",
                        },
                        "collection": {
                            "type": "string",
                            "maxLength": 200,
                            "description": "id or name of a collection to join (its options are defaults)",
                        },
                        "title": {"type": "string", "maxLength": MAX_TITLE_CHARS},
                    },
                },
                "encoding": {FILE_FIELD: {"contentType": "application/octet-stream"}},
            },
            "application/json": {"schema": JobFromSource.model_json_schema()},
        },
    }
}


def _base_url(request: Request) -> str:
    return str(request.base_url)


def _out(request: Request, rt: Runtime, job: Job) -> JobOut:
    return job_out(job, _base_url(request), rt.settings.flower_url)


def _options(fields: dict[str, Any]) -> JobOptions:
    minutes = fields.get("window_minutes")
    if isinstance(minutes, str):
        minutes = minutes.strip() or None
    if minutes is not None:
        try:
            minutes = float(minutes)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"window_minutes must be a number of minutes, not {str(minutes)[:50]!r}"
            ) from exc
    if isinstance(fields.get("vocabulary"), list):  # JSON may send the terms as a list
        fields = {**fields, "vocabulary": "\n".join(str(term) for term in fields["vocabulary"])}
    if isinstance(fields.get("webhook_events"), list):
        fields = {**fields, "webhook_events": ",".join(str(e) for e in fields["webhook_events"])}
    text = {
        k: (str(fields[k]).strip() or None) if fields.get(k) is not None else None for k in _OPTION_FIELDS
    }
    return JobOptions(
        instructions=text["instructions"],
        preset=text["preset"],
        language=text["language"],
        window_minutes=minutes,
        webhook_url=text["webhook_url"],
        vocabulary=text["vocabulary"],
        priority=text["priority"],
        collection=text["collection"],
        title=text["title"],
        webhook_events=text["webhook_events"],
    )


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    openapi_extra=_CREATE_BODY,
    responses={
        **ERRORS,
        413: {"model": Problem, "description": "the upload is over the size limit"},
        415: {"model": Problem, "description": "neither multipart/form-data nor JSON"},
        422: {"model": Problem, "description": "not audio, or bad options"},
    },
)
async def create_job(request: Request, rt: RuntimeDep, tenant: TenantDep) -> JobOut:
    """Start a job: upload a recording (multipart `file`) or name one already in storage (JSON).

    With an `Idempotency-Key` header, the same key and request within 24 h answer with the job the
    first one made (409 while that first request is still running).
    """
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        create = _create_from_form
    elif ctype.startswith("application/json"):
        create = _create_from_json
    else:
        return Response(  # type: ignore[return-value]
            json.dumps({"detail": "send multipart/form-data with a 'file' field, or JSON with 'source'"}),
            status_code=415,
            media_type="application/json",
        )
    key = request.headers.get("idempotency-key")
    if key is None:
        return _out(request, rt, await create(request, rt, tenant, None))
    digest_of: list[str] = []  # set once this request holds the reservation

    def reserve(digest: str) -> Job | None:
        job_id = idempotency.reserve(rt.db, tenant, key, digest)
        if job_id:
            return rt.store.get(job_id, tenant)
        digest_of.append(digest)
        return None

    try:
        job = await create(request, rt, tenant, reserve)
    except _Earlier as earlier:
        return _out(request, rt, earlier.job)
    except BaseException:
        if digest_of:
            await anyio.to_thread.run_sync(lambda: idempotency.release(rt.db, tenant, key))
        raise
    if digest_of:
        await anyio.to_thread.run_sync(lambda: idempotency.complete(rt.db, tenant, key, job.id))
    return _out(request, rt, job)


# Called with the request's digest before any work; an earlier job for the same key, or None.
Reserve = Callable[[str], "Job | None"] | None


async def _create_from_json(request: Request, rt: Runtime, tenant: str, reserve: Reserve) -> Job:
    raw = await read_json_body(request, rt.settings)
    if reserve is not None:
        earlier = await anyio.to_thread.run_sync(lambda: reserve(idempotency.request_hash(b"json", raw)))
        if earlier is not None:
            raise _Earlier(earlier)
    try:
        body = JobFromSource.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InputError(f"{where}: {str(first.get('msg', 'invalid'))[:200]}") from exc
    options = _options(body.model_dump())
    if bool(body.source) == bool(body.upload_id):
        raise InputError("give exactly one of 'source' (s3://bucket/key) or 'upload_id'")
    if body.upload_id:
        upload_id = body.upload_id

        def from_upload() -> Job:
            key = staging.find_upload(rt, tenant, upload_id)
            name = key.rsplit("/", 1)[-1]
            return staging.job_from_upload(rt, key, name, options, tenant)

        return await anyio.to_thread.run_sync(from_upload)
    source = body.source or ""
    return await anyio.to_thread.run_sync(lambda: staging.job_from_source(rt, source, options, tenant))


class _Earlier(Exception):
    """Carries the job an earlier request with the same Idempotency-Key made."""

    def __init__(self, job: Job) -> None:
        self.job = job


async def _create_from_form(request: Request, rt: Runtime, tenant: str, reserve: Reserve) -> Job:
    limit = staging.max_upload_bytes(rt)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 1024 * 1024:
        raise UploadTooLarge(
            f"the request is larger than the {rt.settings.max_upload_mb:g} MB upload limit; "
            "use POST /v1/uploads (presigned S3 multipart) or raise VOXBATCH_MAX_UPLOAD_MB"
        )
    boundary = _boundary(request.headers.get("content-type", ""))
    if reserve is not None:
        # An upload is known by its size: the body is not read twice to compare it.
        digest = idempotency.request_hash(b"multipart", (length or "").encode())
        earlier = await anyio.to_thread.run_sync(lambda: reserve(digest))
        if earlier is not None:
            raise _Earlier(earlier)
    slots: UploadSlots = request.app.state.upload_slots
    chunks = chunks_with_timeout(request, rt.settings.request_read_timeout_s).__aiter__()

    async def next_chunk() -> bytes:
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return b""

    # S3 uploads read the stream from s3transfer's own threads: name the event loop explicitly.
    token = anyio.lowlevel.current_token()

    def work() -> Job:
        form = StreamingForm(boundary, lambda: anyio.from_thread.run(next_chunk, token=token), limit)
        if not form.to_file():
            raise InputError(f"the form has no '{FILE_FIELD}' field with a recording")
        # Options sent before the file are checked before a byte is stored (the webhook address too).
        staging.check_options(rt, _options(form.fields), tenant)
        name = form.filename or "recording"
        key = staging.upload_key(tenant, staging.new_upload_id(), name)
        staging.store(rt, key, form)  # type: ignore[arg-type]
        try:
            form.drain()
            if form.file_bytes == 0:
                raise InputError(f"{name} is empty")
            options = _options(form.fields)
        except BaseException:
            staging.discard(rt.storage, key)
            raise
        log.info("upload %s: %d bytes stored for %s", key, form.file_bytes, tenant)
        return staging.job_from_upload(rt, key, name, options, tenant)

    with slots.take(tenant):
        # Uploads have their own thread limiter: stalled ones never hold the threads that serve
        # the other routes.
        return await anyio.to_thread.run_sync(work, limiter=slots.limiter)


def _boundary(content_type: str) -> bytes:
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise InputError("multipart/form-data without a boundary")
    return boundary


@router.get("", response_model=JobList, responses=ERRORS)
def list_jobs(
    request: Request,
    rt: RuntimeDep,
    tenant: TenantDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobList:
    """Your jobs, newest first."""
    rows, total = rt.store.list_jobs(tenant=tenant, status=status, limit=limit, offset=offset)
    nxt = None
    if offset + len(rows) < total:
        nxt = str(request.url.include_query_params(offset=offset + limit, limit=limit))
    return JobList(
        jobs=[_out(request, rt, j) for j in rows], total=total, limit=limit, offset=offset, next=nxt
    )


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
def show_job(request: Request, job_id: str, rt: RuntimeDep, tenant: TenantDep) -> JobOut:
    """One job: status, progress, timings, failure reason, links to documents and Flower."""
    return _out(request, rt, rt.store.get(job_id, tenant))


@router.get(
    "/{job_id}/documents/{name}",
    responses={
        **ERRORS,
        200: {"content": {"text/markdown": {}, "application/json": {}, "text/plain": {}}},
        409: {"model": Problem, "description": "the job has not succeeded (yet)"},
    },
    response_class=Response,
)
def get_document(
    job_id: str,
    name: str,
    rt: RuntimeDep,
    tenant: TenantDep,
    partial: Annotated[
        bool, Query(description="while the job runs: what is done so far, marked as partial")
    ] = False,
) -> Response:
    """A job's document: document.md, document.json, transcript.txt, .srt or .vtt. Once the job
    has succeeded, the final one; before, 409, or with `partial=true` what is done so far, rendered
    the same way and marked as partial (a line at the top of document.md, `"partial": true` in
    document.json)."""
    job = rt.store.get(job_id, tenant)
    if name not in DOCUMENT_NAMES:
        raise NotFound(f"no document {name[:100]!r}; there are {', '.join(DOCUMENT_NAMES)}")
    media = MEDIA_TYPES.get("." + name.rsplit(".", 1)[-1], "application/octet-stream")
    stem = job.source_name.rsplit(".", 1)[0] if "." in job.source_name else job.source_name
    download = submission.safe_name(f"{stem}-{name}")
    headers = {"Content-Disposition": f'inline; filename="{download}"'}
    if job.status != JobStatus.succeeded:
        if not partial:
            raise DocumentNotReady(
                f"job {job_id} is {job.status}; its documents exist once it has succeeded "
                "(add ?partial=true for what is done so far)"
            )
        body = RENDERERS[name](partial_document(rt, job))
        return Response(body, media_type=media, headers={**headers, "Cache-Control": "no-store"})
    # Documents are text of at most a few MB, even for a 10-hour recording.
    return Response(rt.storage.get_bytes(job.output_prefix + name), media_type=media, headers=headers)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=ERRORS)
def cancel_job(request: Request, job_id: str, rt: RuntimeDep, tenant: TenantDep) -> JobOut:
    """Cancel a job; running steps stop at their next check, finished work is kept."""
    cancel(rt, job_id, tenant)
    return _out(request, rt, rt.store.get(job_id, tenant))


@router.post(
    "/{job_id}/retry",
    response_model=JobOut,
    status_code=202,
    responses={**ERRORS, 422: {"model": Problem, "description": "the job is not failed or cancelled"}},
)
def retry_job(request: Request, job_id: str, rt: RuntimeDep, tenant: TenantDep) -> JobOut:
    """Retry a failed or cancelled job: windows already done are kept, the rest is enqueued."""
    return _out(request, rt, submission.resume(rt, job_id, tenant))


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses={**ERRORS, 409: {"model": Problem, "description": "the job is still running: cancel it first"}},
)
def delete_job(job_id: str, rt: RuntimeDep, tenant: TenantDep) -> Response:
    """Delete a job that has ended: its documents, segments, search index rows and the recording
    stored for it (an upload). A recording it was given as s3:// or from the drop folder is kept."""
    retention.delete_job(rt, job_id, tenant)
    return Response(status_code=204)
