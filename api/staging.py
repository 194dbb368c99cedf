"""Uploads on their way to becoming jobs: where they are stored, how they are checked, and the
presigned S3 multipart flow.

Every upload lands under ``uploads/<tenant tag>/<upload id>/<safe name>`` in the configured
storage. The tenant tag (a hash of the tenant's name) in the key is what ties an upload to its
tenant, so the flow needs no table: another tenant's upload id finds nothing under its own prefix.
Before a job is created the stored object is probed with ffprobe: what is not audio is deleted
and refused with the reason (HTTP 422), so no job is left behind for it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import uuid
from typing import IO, Any

from api.upload_stream import UploadTooLarge
from jobs import manifest
from jobs.collections import with_collection
from jobs.errors import InputError, NotFound
from jobs.manifest import ManifestRow
from jobs.models import Job
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.create import create_job
from jobs.storage import MultipartUploads, Storage
from jobs.storage_urls import parse_s3_url
from workers import submission, webhooks

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART = 8 * MIB
MAX_PARTS = 10_000
PART_URL_EXPIRES_S = 24 * 3600
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def tenant_tag(tenant: str) -> str:
    return hashlib.sha256(tenant.encode()).hexdigest()[:16]


def new_upload_id() -> str:
    return uuid.uuid4().hex


def upload_prefix(tenant: str, upload_id: str) -> str:
    if not _UPLOAD_ID.match(upload_id):
        raise NotFound(f"no upload {upload_id[:100]}")
    return f"uploads/{tenant_tag(tenant)}/{upload_id}/"


def upload_key(tenant: str, upload_id: str, name: str) -> str:
    return upload_prefix(tenant, upload_id) + submission.safe_name(name)


def max_upload_bytes(rt: Runtime) -> int:
    return int(rt.settings.max_upload_mb * MIB)


def store(rt: Runtime, key: str, stream: IO[bytes]) -> int:
    """Write ``stream`` to ``key``; on any error nothing is left behind."""
    try:
        return rt.storage.put_stream(key, stream)
    except BaseException:
        discard(rt.storage, key)
        raise


def discard(storage: Storage, key: str) -> None:
    """Delete an upload that will not become a job."""
    try:
        storage.delete(key)
    except Exception:
        log.warning("could not delete the refused upload %s", key, exc_info=True)


def check_options(rt: Runtime, options: JobOptions, tenant: str | None) -> JobOptions:
    """Everything about the options that can be checked before a byte is stored (the collection's
    shared options filled in first)."""
    options = with_collection(rt.db, tenant, options).validated(rt.settings)
    if options.webhook_url:
        webhooks.check_url(options.webhook_url, rt.settings.webhook_allow_private)
    return options


def job_from_upload(rt: Runtime, key: str, name: str, options: JobOptions, tenant: str) -> Job:
    """Probe the stored upload, then create its job with its split in the outbox, and relay it (as
    `submit` does).

    Whatever refuses it (options, webhook address, not audio, too long, the tenant's limits), the
    stored upload is deleted: no file is left behind without a job.
    """
    try:
        options = check_options(rt, options, tenant)
        info = rt.audio.probe(rt.storage.readable_url(key, expires_s=3600))
        log.info("upload %s: %.1f s of %s audio", key, info.duration_s, info.codec)
        job = create_job(
            rt,
            name,
            options,
            source_name=name,
            source_key=key,
            tenant=tenant,
            duration_s=info.duration_s,
            enqueue=True,
        )
    except InputError as exc:
        discard(rt.storage, key)
        # ffprobe names the file by its safe storage name; the user knows it by theirs.
        raise InputError(str(exc).replace(key.rsplit("/", 1)[-1], name, 1)) from exc
    except BaseException:
        discard(rt.storage, key)
        raise
    submission.relay_now(rt, job.id)
    return job


def _reserved_prefixes(rt: Runtime, bucket: str) -> list[str]:
    """Key prefixes of ``bucket`` that no tenant may name as a source: the drop folder's inbox and
    outbox (other teams' recordings and documents)."""
    prefixes = []
    for url in (rt.settings.drop_url, rt.settings.outbox_url):
        if url and url.startswith("s3://"):
            b, prefix = parse_s3_url(url)
            if b == bucket:
                prefixes.append(prefix)
    return prefixes


def source_buckets(rt: Runtime, *, drop_folder: bool = False) -> set[str]:
    """The buckets recordings are read from: VOXBATCH_SOURCE_BUCKETS and the storage's own bucket
    (those a tenant may name, ``job_from_source``), and with ``drop_folder`` the drop folder's bucket
    too, whose jobs the watcher made (their recordings are served: api/recording_routes.py)."""
    buckets = {b.strip() for b in rt.settings.source_buckets.split(",") if b.strip()}
    own_bucket, _ = _own_bucket(rt.storage)
    if own_bucket:
        buckets.add(own_bucket)
    drop = rt.settings.drop_url or ""
    if drop_folder and drop.startswith("s3://"):
        buckets.add(parse_s3_url(drop)[0])
    return buckets


def job_from_source(rt: Runtime, source: str, options: JobOptions, tenant: str) -> Job:
    """A job on an object already in S3 (``s3://bucket/key``).

    In the storage bucket only the tenant's own uploads are reachable, and nowhere the drop
    folder's inbox or outbox; a key a tenant may not read answers exactly as a missing one.
    """
    # Options first: a bad option is the same answer whatever the source.
    options = check_options(rt, options, tenant)
    check_source(rt, source, tenant)
    return submission.submit(rt, source, options, tenant=tenant)


def check_source(rt: Runtime, source: str, tenant: str) -> None:
    """InputError unless ``source`` is an ``s3://`` object this tenant may name (a key it may not
    read answers exactly as a missing one)."""
    if not source.startswith("s3://"):
        raise InputError("source must be an s3://bucket/key URL")
    storage = rt.storage
    bucket, key = parse_s3_url(source)
    own_bucket, own = _own_bucket(storage)
    if bucket not in source_buckets(rt):
        raise InputError(
            f"bucket {bucket} is not one this server takes sources from; "
            "the operator lists those in VOXBATCH_SOURCE_BUCKETS"
        )
    # Our own bucket holds every tenant's uploads and documents, and often the drop folder.
    mine = own + f"uploads/{tenant_tag(tenant)}/"
    if (bucket == own_bucket and not key.startswith(mine)) or any(
        key.startswith(p) for p in _reserved_prefixes(rt, bucket)
    ):
        raise submission.unreadable(source)


def manifest_jobs(rt: Runtime, tenant: str, collection: str, data: bytes, name: str) -> list[Job]:
    """A manifest sent to the API: each row's source is an ``s3://`` object the tenant may name or
    the id of one of its completed uploads (POST /v1/uploads); checked whole, then submitted."""

    def upload(row: ManifestRow) -> str | None:
        return find_upload(rt, tenant, row.source) if _UPLOAD_ID.match(row.source) else None

    def probe(row: ManifestRow) -> float:
        if row.source.startswith("s3://"):
            check_source(rt, row.source, tenant)
            return submission.probe_s3(rt, row.source)
        key = upload(row)
        if key is None:
            raise InputError("a source is s3://bucket/key or the id of a completed upload")
        return rt.audio.probe(rt.storage.readable_url(key, expires_s=3600)).duration_s

    def submit_one(row: ManifestRow, options: JobOptions) -> Job:
        if row.source.startswith("s3://"):
            return submission.submit(rt, row.source, options, tenant=tenant)
        key = upload(row)
        assert key is not None  # probed above
        return job_from_upload(rt, key, key.rsplit("/", 1)[-1], options, tenant)

    rows = manifest.parse(data, name)
    return submission.submit_manifest(rt, tenant, collection, rows, probe, submit_one)


def find_upload(rt: Runtime, tenant: str, upload_id: str) -> str:
    """The key of a completed upload of this tenant."""
    prefix = upload_prefix(tenant, upload_id)
    for key in rt.storage.list(prefix):
        return key
    raise NotFound(f"no completed upload {upload_id}")


# --- presigned S3 multipart ---------------------------------------------------------------------


def _own_bucket(storage: Storage) -> tuple[str | None, str]:
    """The storage's bucket and key prefix ("" or ending in "/"), or (None, "") for local storage."""
    if not storage.url.startswith("s3://"):
        return None, ""
    bucket, prefix = parse_s3_url(storage.url)
    return bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""


def _multipart(rt: Runtime) -> MultipartUploads:
    if not isinstance(rt.storage, MultipartUploads):
        raise InputError(
            "presigned uploads need S3 storage (VOXBATCH_STORAGE_URL=s3://bucket/prefix); "
            "this server stores files locally: send the file to POST /v1/jobs instead"
        )
    return rt.storage


def part_size_for(size: int) -> int:
    return max(MIN_PART, math.ceil(size / MAX_PARTS / MIB) * MIB)


def _too_large(rt: Runtime) -> UploadTooLarge:
    return UploadTooLarge(f"the recording is larger than the {rt.settings.max_upload_mb:g} MB upload limit")


def start_upload(rt: Runtime, tenant: str, filename: str, size: int) -> dict[str, Any]:
    s3 = _multipart(rt)
    if size > max_upload_bytes(rt):
        raise _too_large(rt)
    upload_id = new_upload_id()
    key = upload_key(tenant, upload_id, filename)
    s3_upload = s3.start_multipart(key)
    part_size = part_size_for(size)
    count = max(1, math.ceil(size / part_size))
    parts = [
        {"part_number": n, "url": s3.part_url(key, s3_upload, n, PART_URL_EXPIRES_S)}
        for n in range(1, count + 1)
    ]
    log.info("upload %s: %d part(s) of %d bytes for %s", upload_id, count, part_size, tenant)
    return {"upload_id": upload_id, "part_size": part_size, "parts": parts}


def complete_upload(rt: Runtime, tenant: str, upload_id: str, parts: list[tuple[int, str]]) -> int:
    s3 = _multipart(rt)
    key, s3_upload = s3.find_multipart(upload_prefix(tenant, upload_id))
    size = s3.complete_multipart(key, s3_upload, parts)
    if size > max_upload_bytes(rt):
        discard(rt.storage, key)
        raise _too_large(rt)
    return size


def abort_upload(rt: Runtime, tenant: str, upload_id: str) -> None:
    s3 = _multipart(rt)
    key, s3_upload = s3.find_multipart(upload_prefix(tenant, upload_id))
    s3.abort_multipart(key, s3_upload)
