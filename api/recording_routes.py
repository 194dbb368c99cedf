"""A job's source recording for the web page's player: HTTP Range requests, streamed, and the
short-lived signed links that let an ``<audio>``/``<video>`` element (which sends no
``Authorization`` header) fetch it.

``GET|HEAD /v1/jobs/{id}/recording``
    The recording as it was uploaded, never read whole into memory: local storage seeks into the
    file, S3 storage asks GetObject for the range. ``Accept-Ranges: bytes``; one ``Range: bytes=a-b``,
    ``a-`` or ``-n`` answers 206 with ``Content-Range``; a range starting past the end answers 416
    with ``Content-Range: bytes */SIZE``; a malformed ``Range``, several ranges at once, or any
    ``If-Range`` get the whole file (200), as RFC 9110 allows. The media type comes from the file's
    extension (``audio/mpeg`` for .mp3 ...; ``application/octet-stream`` for anything that is not
    a known audio or video type), with ``nosniff``.

    Where the recording is: uploads (the API, ``voxbatch submit FILE``) are in our storage under the
    job's ``source_key``; an ``s3://bucket/key`` source is read from its bucket (ranged GetObject) if
    that bucket is the storage bucket, one of ``VOXBATCH_SOURCE_BUCKETS`` or the drop folder's, the
    buckets a job may be created from. Anything else (a local path given to ``voxbatch run``, a bucket
    no longer listed) is 404, as is a job of another tenant.

``POST /v1/jobs/{id}/recording/link``
    With ``Authorization: Bearer KEY``: a link to the recording and to its captions
    (``transcript.vtt``) that works without the header for ``LINK_TTL_S`` (an hour):
    ``?expires=<unix seconds>&sig=<hex>``, the HMAC-SHA256 of ``"<job id>\\n<expires>"`` under a key
    derived from the job's tenant's server-held secret (the one that signs its webhooks) with a
    context string, so a link names one job, cannot be extended or moved to another job, works on
    every API replica with no new setting, and dies when the tenant's secret is rotated. A link that
    does not verify answers 404 (the same as a job that does not exist); one that verifies but has
    expired answers 403, and the page asks for a new one. The web page never holds the recording as
    a blob: the browser streams it with Range requests like any media URL.

``GET /v1/jobs/{id}/recording/captions.vtt``
    The finished job's ``transcript.vtt`` (``text/vtt``) under the same rules (Bearer or a signed
    link), for the player's ``<track>`` element, which cannot send headers either.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field

from api.auth import RuntimeDep, TenantDep, bearer, current_tenant
from api.job_routes import DocumentNotReady
from api.schemas import Problem
from api.staging import source_buckets
from jobs.errors import NotFound
from jobs.models import Job, JobStatus
from jobs.runtime import Runtime
from jobs.storage import RangedReads
from jobs.storage_urls import open_storage, parse_s3_url
from jobs.tenants import tenant_secret
from workers import submission

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

LINK_TTL_S = 3600
CAPTIONS = "transcript.vtt"
_CONTEXT = b"voxbatch media link v1"

# Only these become a media type; anything else is served as octet-stream (never text/html).
MEDIA_TYPES = {
    ".aac": "audio/aac",
    ".aif": "audio/aiff",
    ".aiff": "audio/aiff",
    ".flac": "audio/flac",
    ".m4a": "audio/mp4",
    ".mp3": "audio/mpeg",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mkv": "video/x-matroska",
    ".mka": "audio/x-matroska",
    ".mov": "video/quicktime",
    ".oga": "audio/ogg",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".wav": "audio/wav",
    ".weba": "audio/webm",
    ".webm": "video/webm",
    ".wma": "audio/x-ms-wma",
}

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no API key and no signed link"},
    404: {"model": Problem, "description": "no such job for this key or link, or no stored recording"},
}


class RecordingLink(BaseModel):
    recording_url: str = Field(description="path of the recording, signed; resolve against the API's origin")
    captions_url: str | None = Field(description="path of transcript.vtt, signed; null until it succeeded")
    media_type: str
    kind: str = Field(description="audio or video: which element plays it")
    size: int = Field(description="bytes")
    expires_at: datetime


class Unsatisfiable(Exception):
    """A Range starting at or past the end of the file (HTTP 416)."""


# --- signed links --------------------------------------------------------------------------------


def signature(secret: str, job_id: str, expires: int) -> str:
    key = hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest()
    return hmac.new(key, f"{job_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_query(secret: str, job_id: str, expires: int) -> str:
    return f"expires={expires}&sig={signature(secret, job_id, expires)}"


def media_access(
    job_id: str,
    rt: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    expires: Annotated[int | None, Query(ge=0, le=2**40, description="from a signed link")] = None,
    sig: Annotated[str | None, Query(max_length=128, description="from a signed link")] = None,
) -> Job:
    """The job, for a caller with a key of its tenant or a valid signed link."""
    if sig is None and expires is None:
        return rt.store.get(job_id, current_tenant(rt, credentials))
    job = rt.store.find(job_id)
    secret = tenant_secret(rt.db, job.tenant) if job else None
    if job is None or secret is None or expires is None or sig is None:
        raise NotFound(f"no job {job_id[:64]}")
    if not hmac.compare_digest(sig.lower(), signature(secret, job.id, expires)):
        raise NotFound(f"no job {job_id[:64]}")
    if expires < time.time():
        raise HTTPException(403, "this link has expired; ask POST /v1/jobs/{id}/recording/link for a new one")
    return job


MediaJob = Annotated[Job, Depends(media_access)]


# --- where the recording is ----------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    storage: RangedReads
    key: str

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(PurePosixPath(self.key).suffix.lower(), "application/octet-stream")


@lru_cache(maxsize=16)
def _bucket(bucket: str, endpoint_url: str | None) -> Any:
    return open_storage(f"s3://{bucket}", endpoint_url)


def locate(rt: Runtime, job: Job) -> Stored:
    """Where the job's recording can be read with ranges; NotFound when not in reach."""
    if job.source_key and isinstance(rt.storage, RangedReads):
        return Stored(rt.storage, job.source_key)
    if not job.source_key and job.source.startswith("s3://"):
        bucket, key = parse_s3_url(job.source)
        if bucket in source_buckets(rt, drop_folder=True) and key:
            store = _bucket(bucket, rt.settings.s3_endpoint_url)
            if isinstance(store, RangedReads):
                return Stored(store, key)
    raise NotFound(f"the recording of job {job.id} is not in this server's storage")


# --- ranges --------------------------------------------------------------------------------------


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, stop)`` of the one range asked for, or None for the whole file."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # another unit, or several ranges: the whole file is a valid answer
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # "-n": the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored, as RFC 9110 says
    if start >= size:
        raise Unsatisfiable
    stop = min(int(last) + 1, size) if last else size
    return start, stop


def _headers(stored: Stored, job: Job) -> dict[str, str]:
    name = submission.safe_name(job.source_name or stored.key.rsplit("/", 1)[-1])
    return {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'inline; filename="{name}"',
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, max-age=3600",
    }


@router.api_route(
    "/{job_id}/recording",
    methods=["GET", "HEAD"],
    response_class=Response,
    responses={
        **ERRORS,
        200: {"content": {"audio/*": {}, "video/*": {}}, "description": "the whole recording"},
        206: {"description": "the range asked for, with Content-Range"},
        403: {"model": Problem, "description": "the signed link has expired"},
        416: {"model": Problem, "description": "the range starts past the end"},
    },
)
def get_recording(request: Request, job: MediaJob, rt: RuntimeDep) -> Response:
    """The job's source recording, streamed, with Range requests; see the module's docstring."""
    stored = locate(rt, job)
    size = stored.storage.size(stored.key)
    headers = _headers(stored, job)
    try:
        wanted = None if "if-range" in request.headers else parse_range(request.headers.get("range"), size)
    except Unsatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        return Response(
            b'{"detail":"the range starts past the end of the recording"}',
            status_code=416,
            media_type="application/json",
            headers=headers,
        )
    start, stop = wanted or (0, size)
    status = 206 if wanted else 200
    if wanted:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    if request.method == "HEAD":
        return Response(status_code=status, media_type=stored.media_type, headers=headers)
    body: Iterator[bytes] = stored.storage.read_range(stored.key, start, stop)
    return StreamingResponse(body, status_code=status, media_type=stored.media_type, headers=headers)


@router.post(
    "/{job_id}/recording/link",
    response_model=RecordingLink,
    responses={**ERRORS, 401: {"model": Problem, "description": "no API key, or an unknown one"}},
)
def link_recording(job_id: str, rt: RuntimeDep, tenant: TenantDep) -> RecordingLink:
    """Signed links (one hour) to the recording and its captions, for `<audio>`/`<video>` and
    `<track>`, which send no Authorization header."""
    job = rt.store.get(job_id, tenant)
    stored = locate(rt, job)
    size = stored.storage.size(stored.key)
    secret = tenant_secret(rt.db, job.tenant)
    if secret is None:
        raise NotFound(f"no job {job_id[:64]}")
    expires = int(time.time()) + LINK_TTL_S
    query = signed_query(secret, job.id, expires)
    captions = None
    if job.status == JobStatus.succeeded:
        captions = f"/v1/jobs/{job.id}/recording/captions.vtt?{query}"
    media = stored.media_type
    return RecordingLink(
        recording_url=f"/v1/jobs/{job.id}/recording?{query}",
        captions_url=captions,
        media_type=media,
        kind="video" if media.startswith("video/") else "audio",
        size=size,
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


@router.get(
    "/{job_id}/recording/captions.vtt",
    response_class=Response,
    responses={
        **ERRORS,
        200: {"content": {"text/vtt": {}}},
        403: {"model": Problem, "description": "the signed link has expired"},
        409: {"model": Problem, "description": "the job has not succeeded (yet)"},
    },
)
def get_captions(job: MediaJob, rt: RuntimeDep) -> Response:
    """The finished job's transcript.vtt, for the player's caption track."""
    if job.status != JobStatus.succeeded:
        raise DocumentNotReady(f"job {job.id} is {job.status}; its captions exist once it has succeeded")
    # Captions are text: a few MB at most, even for a 10-hour recording.
    data = rt.storage.get_bytes(job.output_prefix + CAPTIONS)
    return Response(
        data,
        media_type="text/vtt; charset=utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
    )
