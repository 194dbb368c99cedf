"""The drop folder's outbox: where a dropped recording's documents (or the reason it has none) go.

A recording at ``<inbox>/<dir>/<name>.<ext>`` gets its documents under ``<outbox>/<dir>/<name>.<ext>/``
(``document.md``, ``document.json``, ``transcript.txt`` and any other rendering of the job), or
``<outbox>/<dir>/<name>/error.json`` when it cannot become a document. The outbox is any storage
URL (``s3://bucket/outbox/`` or ``file:///dir``); the inbox is only ever read. Deleting the job
(``DELETE /v1/jobs/{id}``, its collection's deletion, retention) removes what it wrote to the
outbox (``remove_delivered``).
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from jobs.documents import DOCUMENT_NAMES
from jobs.errors import InputError, TransientError
from jobs.models import JobStatus, utcnow
from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.storage import Storage
from jobs.storage_urls import open_storage, parse_s3_url
from workers.drop_ledger import drop_object_for_job

log = logging.getLogger(__name__)

ERROR_NAME = "error.json"


@dataclass(frozen=True)
class DropFolder:
    """The inbox (a bucket and a key prefix) and the outbox it delivers to."""

    bucket: str
    prefix: str  # "" or ends with "/"
    outbox_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> DropFolder:
        if not settings.drop_url:
            raise InputError("VOXBATCH_DROP_URL is not set (e.g. s3://bucket/inbox/)")
        if not settings.outbox_url:
            raise InputError("VOXBATCH_OUTBOX_URL is not set (e.g. s3://bucket/outbox/)")
        bucket, prefix = parse_s3_url(settings.drop_url)
        prefix = prefix.strip("/")
        return cls(bucket=bucket, prefix=prefix + "/" if prefix else "", outbox_url=settings.outbox_url)

    def contains(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and key.startswith(self.prefix)

    def relative(self, key: str) -> str:
        return key[len(self.prefix) :] if key.startswith(self.prefix) else key

    def source_url(self, key: str) -> str:
        # parse_s3_url unquotes, so quoting keeps spaces, '%', '+', '#' and unicode intact.
        return f"s3://{self.bucket}/{quote(key, safe='/')}"

    def output_dir(self, key: str) -> str:
        """``track b/Panel.wav`` → ``track b/Panel.wav``: the recording's folder in the outbox.

        One folder per key and one key per folder (injective): the extension is kept, so
        ``Panel.mp3`` and ``Panel.wav`` differ; ``%`` and control characters are %-escaped; an
        empty, ``.`` or ``..`` segment (``dup//Panel.mp3``, ``dup/./Panel.mp3``) becomes ``%``,
        ``%2E`` or ``%2E%2E``, never a folder that is not there or one that climbs out.
        """
        return "/".join(_segment(p) for p in self.relative(key).split("/"))


def _segment(part: str) -> str:
    if part == "":
        return "%"
    if part in (".", ".."):
        return "%2E" * len(part)
    return "".join(_escape(ch) for ch in part)


def _escape(ch: str) -> str:
    if ch == "%" or unicodedata.category(ch).startswith("C"):
        return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return ch


def printable(text: str, limit: int = 300) -> str:
    """``text`` for a log line: control characters escaped (a key cannot forge a line), cut short."""
    return "".join(
        ch if not unicodedata.category(ch).startswith("C") else ascii(ch)[1:-1] for ch in text[:limit]
    )


def open_outbox(folder: DropFolder, settings: Settings) -> Storage:
    return open_storage(folder.outbox_url, settings.s3_endpoint_url)


def write_error(
    outbox: Storage,
    folder: DropFolder,
    key: str,
    reason: str,
    *,
    etag: str | None = None,
    job_id: str | None = None,
) -> str:
    """Write ``<outbox>/<name>/error.json`` with the reason; returns its key in the outbox."""
    dest = f"{folder.output_dir(key)}/{ERROR_NAME}"
    body = {
        "source": folder.source_url(key),
        "key": key,
        "etag": etag,
        "job_id": job_id,
        "reason": reason,
        "at": utcnow().isoformat().replace("+00:00", "Z"),
    }
    outbox.put_bytes(dest, json.dumps(body, ensure_ascii=False, indent=2).encode() + b"\n")
    log.info("drop %s: rejected: %s", printable(key), printable(reason))
    return dest


def deliver(rt: Runtime, job_id: str) -> bool:
    """Copy a finished drop-folder job's documents to the outbox, or write its error.json.

    Returns False (and does nothing) when the job did not come from the drop folder or has not
    finished. Safe to run twice: the same objects are written to the same keys.
    """
    row = drop_object_for_job(rt.db, job_id)
    if row is None:
        return False
    job = rt.store.get(job_id)
    if not JobStatus(job.status).finished:
        return False
    folder = DropFolder.from_settings(rt.settings)
    outbox = open_outbox(folder, rt.settings)
    dest = folder.output_dir(row.key)
    if job.status == JobStatus.succeeded:
        names = []
        # Every document a job has, by name: listing a local store would walk all of it.
        for name in DOCUMENT_NAMES:
            key = job.output_prefix + name
            if rt.storage.exists(key):
                outbox.put_bytes(f"{dest}/{name}", rt.storage.get_bytes(key))
                names.append(name)
        log.info("job %s: delivered %s to %s/%s", job_id, ", ".join(sorted(names)), outbox.url, dest)
    else:
        reason = job.error or f"the job was {job.status}"
        write_error(outbox, folder, row.key, reason, etag=row.etag, job_id=job_id)
    return True


def remove_delivered(rt: Runtime, job_id: str) -> list[str]:
    """A deleted drop-folder job's copies in the outbox: the documents or the error.json ``deliver``
    wrote into the recording's folder there, by name (anything else in that folder is not ours);
    returns the keys removed. The recording in the inbox is never touched: a key that would lie
    inside the inbox (an outbox configured within it) is left alone. A Runtime ``on_job_deleted``
    hook (``jobs.retention``); raises when the outbox cannot be reached, so the job stays to be
    deleted again."""
    row = drop_object_for_job(rt.db, job_id)
    if row is None or not rt.settings.outbox_url:
        return []
    folder = DropFolder.from_settings(rt.settings)
    outbox = open_outbox(folder, rt.settings)
    dest = folder.output_dir(row.key)
    removed = []
    for name in (*DOCUMENT_NAMES, ERROR_NAME):
        key = f"{dest}/{name}"
        if _inside_inbox(folder, key):
            log.warning("job %s: outbox key %s lies inside the inbox; left alone", job_id, printable(key))
            continue
        if outbox.exists(key):
            outbox.delete(key)
            removed.append(key)
    if removed:
        log.info("job %s: removed %d document(s) from %s/%s", job_id, len(removed), outbox.url, dest)
    return removed


def _inside_inbox(folder: DropFolder, key: str) -> bool:
    if not folder.outbox_url.startswith("s3://"):
        return False
    bucket, prefix = parse_s3_url(folder.outbox_url)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    return folder.contains(bucket, prefix + key)


DELIVERY_ATTEMPTS = 4


def deliver_quietly(rt: Runtime, job_id: str) -> bool:
    """``deliver`` for the Celery layer: retries storage trouble a few times, never raises. True when
    delivered (or nothing to deliver); False when it could not be made now: the job's announce step
    stays in the outbox and is sent again (``announce_resend_s``).

    The job's own outcome is already recorded; a delivery that cannot be made is logged (the
    documents stay under ``jobs/<id>/output/``, where ``voxbatch fetch`` finds them).
    """
    for attempt in range(1, DELIVERY_ATTEMPTS + 1):
        try:
            deliver(rt, job_id)
            return True
        except TransientError as exc:
            if attempt == DELIVERY_ATTEMPTS:
                log.error("job %s: could not deliver to the outbox (tried again later): %s", job_id, exc)
                return False
            time.sleep(2.0**attempt)
        except Exception:
            log.exception("job %s: could not deliver to the outbox (tried again later)", job_id)
            return False
    return False
