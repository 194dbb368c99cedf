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
import shutil
import uuid
from typing import IO, Any

from api.upload_stream import UploadTooLarge
from jobs import pipeline
from jobs.errors import InputError, NotFound, StorageUnavailable
from jobs.models import Job
from jobs.storage import LocalStorage, S3Storage, Storage, parse_s3_url
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


def too_large(rt: pipeline.Runtime) -> str:
    return f"the recording is larger than the {rt.settings.max_upload_mb:g} MB upload limit"


def max_upload_bytes(rt: pipeline.Runtime) -> int:
    return int(rt.settings.max_upload_mb * MIB)


def store(rt: pipeline.Runtime, key: str, stream: IO[bytes]) -> int:
    """Write ``stream`` to ``key``; on any error nothing is left behind."""
    try:
        return rt.storage.put_stream(key, stream)
    except BaseException:
        discard(rt.storage, key)
        raise


def discard(storage: Storage, key: str) -> None:
    """Delete an upload that will not become a job (the Storage protocol has no delete)."""
    try:
        if isinstance(storage, LocalStorage):
            # The upload's own directory, including a half-written temporary file.
            shutil.rmtree(storage.root / key.rsplit("/", 1)[0], ignore_errors=True)
        elif isinstance(storage, S3Storage):
            storage.client.delete_object(Bucket=storage.bucket, Key=full_key(storage, key))
    except Exception:
        log.warning("could not delete the refused upload %s", key, exc_info=True)


def full_key(storage: S3Storage, key: str) -> str:
    return f"{storage.prefix}/{key}" if storage.prefix else key


def job_from_upload(
    rt: pipeline.Runtime, key: str, name: str, options: pipeline.JobOptions, tenant: str
) -> Job:
    """Probe the stored upload, then create its job and enqueue the split (as `submit` does)."""
    try:
        options = options.validated(rt.settings)
        if options.webhook_url:
            webhooks.check_url(options.webhook_url, rt.settings.webhook_allow_private)
        local = rt.storage.local_path(key)
        src = str(local) if local is not None else rt.storage.presigned_url(key, expires_s=3600)
        if src is None:
            raise StorageUnavailable(f"storage cannot serve {key}")
        info = rt.audio.probe(src)
    except InputError as exc:
        discard(rt.storage, key)
        # ffprobe names the file by its safe storage name; the user knows it by theirs.
        raise InputError(str(exc).replace(key.rsplit("/", 1)[-1], name, 1)) from exc
    log.info("upload %s: %.1f s of %s audio", key, info.duration_s, info.codec)
    job = pipeline.create_job(rt, name, options, source_name=name, source_key=key, tenant=tenant)
    submission.enqueue_missing(rt, job)
    return job


def job_from_source(rt: pipeline.Runtime, source: str, options: pipeline.JobOptions, tenant: str) -> Job:
    """A job on an object already in S3 (``s3://bucket/key``)."""
    if not source.startswith("s3://"):
        raise InputError("source must be an s3://bucket/key URL")
    storage = rt.storage
    bucket, key = parse_s3_url(source)
    allowed = {b.strip() for b in rt.settings.source_buckets.split(",") if b.strip()}
    if isinstance(storage, S3Storage):
        allowed.add(storage.bucket)
    if bucket not in allowed:
        raise InputError(
            f"bucket {bucket} is not one this server takes sources from; "
            "the operator lists those in VOXBATCH_SOURCE_BUCKETS"
        )
    if isinstance(storage, S3Storage):
        own = full_key(storage, "")
        # Our own bucket holds every tenant's uploads and documents: only yours are reachable.
        if (
            bucket == storage.bucket
            and key.startswith(own)
            and not key.startswith(own + f"uploads/{tenant_tag(tenant)}/")
        ):
            raise NotFound(f"{source} does not exist or is not readable")
    options = options.validated(rt.settings)
    if options.webhook_url:
        webhooks.check_url(options.webhook_url, rt.settings.webhook_allow_private)
    return submission.submit(rt, source, options, tenant=tenant)


def find_upload(rt: pipeline.Runtime, tenant: str, upload_id: str) -> str:
    """The key of a completed upload of this tenant."""
    prefix = upload_prefix(tenant, upload_id)
    for key in rt.storage.list(prefix):
        return key
    raise NotFound(f"no completed upload {upload_id}")


# --- presigned S3 multipart ---------------------------------------------------------------------


def _s3(rt: pipeline.Runtime) -> S3Storage:
    if not isinstance(rt.storage, S3Storage):
        raise InputError(
            "presigned uploads need S3 storage (VOXBATCH_STORAGE_URL=s3://bucket/prefix); "
            "this server stores files locally: send the file to POST /v1/jobs instead"
        )
    return rt.storage


def _s3_call(what: str, fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"NoSuchUpload", "NoSuchKey", "404"}:
            raise NotFound(f"no upload in progress for {what}") from exc
        if code in {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "InvalidArgument"}:
            raise InputError(
                f"S3 refused to complete the upload ({code}): check the parts and ETags"
            ) from exc
        raise StorageUnavailable(f"S3 {code or 'error'} on {what}") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"S3 did not answer for {what}: {exc}") from exc


def part_size_for(size: int) -> int:
    return max(MIN_PART, math.ceil(size / MAX_PARTS / MIB) * MIB)


def start_upload(rt: pipeline.Runtime, tenant: str, filename: str, size: int) -> dict[str, Any]:
    s3 = _s3(rt)
    if size > max_upload_bytes(rt):
        raise UploadTooLarge(
            f"the recording is larger than the {rt.settings.max_upload_mb:g} MB upload limit"
        )
    upload_id = new_upload_id()
    key = full_key(s3, upload_key(tenant, upload_id, filename))
    created = _s3_call(key, s3.client.create_multipart_upload, Bucket=s3.bucket, Key=key)
    part_size = part_size_for(size)
    count = max(1, math.ceil(size / part_size))
    parts = [
        {
            "part_number": n,
            "url": s3.client.generate_presigned_url(
                "upload_part",
                Params={"Bucket": s3.bucket, "Key": key, "UploadId": created["UploadId"], "PartNumber": n},
                ExpiresIn=PART_URL_EXPIRES_S,
            ),
        }
        for n in range(1, count + 1)
    ]
    log.info("upload %s: %d part(s) of %d bytes for %s", upload_id, count, part_size, tenant)
    return {"upload_id": upload_id, "part_size": part_size, "parts": parts}


def _in_progress(s3: S3Storage, prefix: str) -> tuple[str, str]:
    listing = _s3_call(prefix, s3.client.list_multipart_uploads, Bucket=s3.bucket, Prefix=prefix)
    for upload in listing.get("Uploads", []):
        return str(upload["Key"]), str(upload["UploadId"])
    raise NotFound(f"no upload in progress under this id ({prefix.rstrip('/').rsplit('/', 1)[-1]})")


def complete_upload(rt: pipeline.Runtime, tenant: str, upload_id: str, parts: list[tuple[int, str]]) -> int:
    s3 = _s3(rt)
    key, s3_upload = _in_progress(s3, full_key(s3, upload_prefix(tenant, upload_id)))
    _s3_call(
        key,
        s3.client.complete_multipart_upload,
        Bucket=s3.bucket,
        Key=key,
        UploadId=s3_upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]},
    )
    head = _s3_call(key, s3.client.head_object, Bucket=s3.bucket, Key=key)
    size = int(head.get("ContentLength", 0))
    if size > max_upload_bytes(rt):
        s3.client.delete_object(Bucket=s3.bucket, Key=key)
        raise UploadTooLarge(
            f"the recording is larger than the {rt.settings.max_upload_mb:g} MB upload limit"
        )
    return size


def abort_upload(rt: pipeline.Runtime, tenant: str, upload_id: str) -> None:
    s3 = _s3(rt)
    key, s3_upload = _in_progress(s3, full_key(s3, upload_prefix(tenant, upload_id)))
    _s3_call(key, s3.client.abort_multipart_upload, Bucket=s3.bucket, Key=key, UploadId=s3_upload)
