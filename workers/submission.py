"""Submitting a recording to the workers, and resuming a job: what the CLI, the API and the drop-folder
watcher share.

``submit`` validates the options before anything is written, copies a local file into object
storage under ``jobs/<id>/source/<safe name>`` (streamed, memory stays flat) or checks that an
``s3://`` source exists. The split goes into the outbox in the same transaction that makes the job
ready (the job row for an ``s3://`` source, the stored source's key for an upload), and is relayed
to the broker right after the commit (``workers.meter``): the message never names a job the
database does not have, and a crash after the commit costs the cpu workers' relay poll, seconds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO

from jobs import collections, manifest
from jobs.admission import tenant_limits
from jobs.collections import with_collection
from jobs.errors import InputError
from jobs.models import Job
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.control import retry
from jobs.steps.create import create_job
from jobs.steps.ending import fail
from jobs.steps.next import next_steps
from jobs.storage_urls import open_storage, parse_s3_url
from workers import meter

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A storage-safe file name: letters, digits, dot, dash, underscore; never empty or hidden."""
    cleaned = _UNSAFE.sub("_", Path(name).name).strip("._")
    return cleaned[:200] or "recording"


def source_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/source/{safe_name(name)}"


def submit(
    rt: Runtime,
    source: str,
    options: JobOptions,
    *,
    stream: IO[bytes] | None = None,
    source_name: str | None = None,
    tenant: str | None = None,
    fingerprint: str | None = None,
    duration_s: float | None = None,
) -> Job:
    """Create a job for ``source`` (a local path, an ``s3://`` URL, or ``stream``'s bytes) and enqueue it.

    With ``stream``, ``source`` is only the name the user knows the recording by (an upload).
    ``duration_s``: an ``s3://`` source's length, when the caller has just probed it (the watcher).
    """
    options = with_collection(rt.db, tenant, options).validated(rt.settings)
    name = source_name
    if stream is None and source.startswith("s3://"):
        key = parse_s3_url(source)[1]
        if duration_s is None:
            duration_s = probe_s3(rt, source)
        job = create_job(
            rt,
            source,
            options,
            source_name=name or key.rsplit("/", 1)[-1],
            tenant=tenant,
            fingerprint=fingerprint,
            duration_s=duration_s,
            enqueue=True,
        )
    else:
        path: Path | None = None
        if stream is None:
            path = Path(source).expanduser().absolute()
            if not path.is_file():
                raise InputError(f"{source} is not a file")
            source = str(path)
        name = name or Path(source).name
        # A stream (an upload) is probed where it is stored; a file is probed here, before any row.
        local_s = rt.audio.probe(str(path)).duration_s if path is not None else None
        job = create_job(
            rt,
            source,
            options,
            source_name=name,
            tenant=tenant,
            fingerprint=fingerprint,
            duration_s=local_s,
        )
        key = source_key(job.id, name)
        try:
            if stream is not None:
                rt.storage.put_stream(key, stream)
            else:
                assert path is not None
                with path.open("rb") as f:
                    rt.storage.put_stream(key, f)
        except Exception as exc:
            fail(rt, job.id, f"the upload into storage failed: {exc}")
            raise
        rt.store.make_ready(job.id, source_key=key)
        job.source_key = key
    relay_now(rt, job.id)
    log.info("job %s: submitted (%s)", job.id, job.source_name)
    return job


def probe_s3(rt: Runtime, source: str) -> float:
    """The length of an ``s3://`` recording; InputError when it is missing (or a folder) or not audio."""
    bucket, key = parse_s3_url(source)
    if not key or key.endswith("/"):
        raise InputError(f"{source} names a folder, not a recording")
    bucket_storage = open_storage(f"s3://{bucket}", rt.settings.s3_endpoint_url)
    if not bucket_storage.exists(key):
        raise unreadable(source)
    return rt.audio.probe(bucket_storage.readable_url(key, expires_s=3600)).duration_s


def submit_manifest(
    rt: Runtime,
    tenant: str | None,
    collection: str,
    rows: list[manifest.ManifestRow],
    probe: Callable[[manifest.ManifestRow], float],
    submit_one: Callable[[manifest.ManifestRow, JobOptions], Job],
) -> list[Job]:
    """Check a manifest whole (``jobs.manifest.check``: every source probed, the totals against the
    tenant's limits), then submit one job per row into the collection, in the manifest's order."""
    target = collections.get(rt.db, tenant, collection)
    for row in rows:  # a row's options are checked before anything is probed
        with_collection(rt.db, tenant, row.options(target.id)).validated(rt.settings)
    limits = manifest.limits_for(
        rt.settings.max_duration_hours * 3600.0,
        rt.store.tenant_load(tenant) if tenant else (0, 0.0),
        tenant_limits(rt.settings, tenant)[:2] if tenant else None,
    )
    manifest.check(rows, probe, limits)
    jobs = [submit_one(row, row.options(target.id)) for row in rows]
    log.info("collection %s: %d job(s) submitted from a manifest", target.id, len(jobs))
    return jobs


def relay_now(rt: Runtime, job_id: str) -> None:
    """Hand the job's first step (committed in the outbox) to the broker now. If the broker is
    away the step stays in the outbox and a cpu worker sends it when it can: the job is queued."""
    meter.relay(rt)
    if any(step.job_id == job_id for step in rt.store.queued_steps()):
        log.warning(
            "job %s: queued; the broker at %s did not take its first step yet (a cpu worker sends it "
            "when the broker answers)",
            job_id,
            redacted(rt.settings.broker_url),
        )


def unreadable(source: str) -> InputError:
    """One answer for a source that is missing and one the caller may not read: no key is confirmed."""
    return InputError(f"{source[:300]} does not exist or is not readable")


def resume(rt: Runtime, job_id: str, tenant: str | None = None) -> Job:
    """Retry a failed or cancelled job: windows already done are kept, only what is missing is enqueued."""
    job = retry(rt, job_id, tenant)
    enqueue_next(rt, job.id)
    return rt.store.get(job_id)


def enqueue_next(rt: Runtime, job_id: str) -> None:
    """Enqueue everything the job still needs (``next_steps``): splits and reduces through the
    outbox, windows through the meter (``workers.meter.enqueue``)."""
    steps = next_steps(rt, job_id)
    meter.enqueue(rt, steps)
    log.info("job %s: enqueued %s", job_id, ", ".join(sorted({s.kind for s in steps})) or "nothing")


def redacted(url: str) -> str:
    """The URL without a password, for messages."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)
