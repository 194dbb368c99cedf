"""The S3 drop folder: every recording put under the inbox becomes one job, exactly once.

Identity is ``(bucket, key, ETag)`` in the ``DropObject`` ledger. A recording is taken by inserting
its row; the database's unique constraint decides between scans, restarts and several watchers,
and whoever loses the insert does nothing. The row is this watcher's claim, on a lease it renews
while it probes and submits; the job is created in the same transaction that writes its id on the
row, and only while the claim is still ours (``workers.drop_ledger``). A watcher killed at any
point leaves either a lapsed claim (any watcher takes the recording at its next scan or event) or
a job the ledger names. A new ETag (the object overwritten) is a new job.
Never a LastModified watermark: on AWS a multipart upload's LastModified is when it *started*,
so "everything since T" misses long uploads.

A scan lists the whole inbox page by page (ListObjectsV2, 1000 keys a page), looks each page up in
the ledger with one query, and touches S3 again only for the recordings it has not seen: listing
plus the new objects. Event mode adds S3 ``ObjectCreated`` notifications through SQS for latency;
both paths feed the same ``ingest``, and the periodic scan stays on to reconcile lost events.

What is not a recording: keys ending in ``/`` (the zero-byte "folders" consoles create) and
sidecars (``*.json``). In-progress multipart uploads are invisible to listings until completed.

Sidecars: ``<name>.json`` next to ``<name>.<ext>`` sets ``instructions``, ``preset``, ``language``,
``vocabulary`` (comma-separated names and terms), ``webhook_url``, ``webhook_events``
(``window.done``, ``job.done``: a comma-separated string or a list, checked as the API checks it),
``window_minutes``, ``priority`` (``batch`` unless it says ``interactive``) and
``tenant`` (an existing tenant; default ``VOXBATCH_DROP_TENANT``, see ``workers.drop_tenant``).
It is read when its recording is ingested; a sidecar that
arrives later does not change a job already submitted (upload the sidecar first, or upload the
recording again: new content, new ETag, new job). The sidecar's preset wins over the prefix's.
A recording under ``inbox/<name>/…`` joins the collection ``<name>`` of its tenant when there is
one (``jobs.collections``): the collection's options fill what the sidecar leaves unset.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any, Protocol

from jobs import collections
from jobs.db import Database
from jobs.engine import AudioTool
from jobs.errors import InputError, NotFound, PermanentError, StorageUnavailable, VoxbatchError
from jobs.options import JobOptions
from jobs.s3 import s3_errors
from jobs.settings import Settings
from jobs.storage import Storage
from jobs.store import ClaimLost, joined
from workers.drop_events import events_in, make_client, sqs_client
from workers.drop_ledger import (
    DropItem,
    claim,
    claim_kept,
    job_check,
    known_versions,
    normalize_etag,
    record_error,
    record_job,
    release,
)
from workers.drop_tenant import drop_tenant
from workers.outbox import DropFolder, open_outbox, printable, write_error

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"
SIDECAR_FIELDS = (
    "instructions",
    "preset",
    "language",
    "webhook_url",
    "webhook_events",
    "window_minutes",
    "vocabulary",
    "priority",
    "tenant",
)
MAX_SIDECAR_BYTES = 64 * 1024
PAGE_SIZE = 1000
TAG_KEY = "voxbatch"
# SQS long poll: up to 20 s is allowed; shorter so that a stopping watcher exits soon.
EVENT_WAIT_S = 10.0


class Submit(Protocol):
    """Create a job for an ``s3://`` source and enqueue it; returns the job id.

    Raises InputError (or another PermanentError) when the recording cannot become a document.
    ``duration_s`` is the length the watcher's own probe found, so the recording is not probed twice.
    The job must be created through ``JobStore.add`` in the caller's context: the watcher joins
    its claim to that transaction (``jobs.store.joined``).
    """

    def __call__(
        self,
        source: str,
        options: JobOptions,
        source_name: str,
        tenant: str | None = None,
        duration_s: float | None = None,
    ) -> str: ...


# What became of one new recording: ("submitted", job id), ("rejected", key), ("deferred", key)
# or ("raced", key).
Outcome = tuple[str, str]


@dataclass
class ScanReport:
    listed: int = 0  # objects the listing (or the events) named
    recordings: int = 0  # of them, recordings: not folders, not sidecars, inside the inbox
    new: int = 0  # recordings the ledger had not seen
    submitted: list[str] = field(default_factory=list)  # job ids this watcher created
    rejected: list[str] = field(default_factory=list)  # keys that got error.json
    raced: int = 0  # new recordings another watcher took first
    deferred: list[str] = field(default_factory=list)  # keys left for a later scan (S3/broker down)
    ledger_queries: int = 0  # bulk lookups made (one per listing page)
    messages: int = 0  # SQS messages received (event mode)

    def add(self, outcome: Outcome) -> None:
        kind, value = outcome
        if kind == "submitted":
            self.submitted.append(value)
        elif kind == "rejected":
            self.rejected.append(value)
        elif kind == "deferred":
            self.deferred.append(value)
        else:
            self.raced += 1


def is_recording(key: str) -> bool:
    return not key.endswith("/") and not key.lower().endswith(SIDECAR_SUFFIX)


def sidecar_key(key: str) -> str:
    """``inbox/a/Panel.mp3`` → ``inbox/a/Panel.json``."""
    path = PurePosixPath(key)
    return str(path.with_name(path.stem + SIDECAR_SUFFIX))


# --- the watcher --------------------------------------------------------------------------------


class Watcher:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        submit: Submit,
        *,
        outbox: Storage | None = None,
        s3: Any = None,
        sqs: Any = None,
        audio: AudioTool | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.submit = submit
        self.folder = DropFolder.from_settings(settings)
        # Names this watcher's claims in the ledger: unique per process and per Watcher.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.outbox = outbox or open_outbox(self.folder, settings)
        self.s3 = s3 or make_client("s3", settings.s3_endpoint_url)
        self.queue_url = settings.drop_sqs_queue_url
        self.sqs = sqs or (sqs_client(self.queue_url) if self.queue_url else None)
        self.event_wait_s = EVENT_WAIT_S
        if audio is None:
            from workers.audio import FfmpegAudio

            audio = FfmpegAudio()
        self.audio = audio
        # Longest prefix first, so "talks/panels/" wins over "talks/".
        self.presets = sorted(settings.drop_presets.items(), key=lambda kv: -len(kv[0].lstrip("/")))

    # -- scanning

    def pages(self) -> Iterator[list[dict[str, Any]]]:
        paginator = self.s3.get_paginator("list_objects_v2")
        what = f"listing s3://{self.folder.bucket}/{self.folder.prefix}"
        with s3_errors(what):
            for page in paginator.paginate(
                Bucket=self.folder.bucket,
                Prefix=self.folder.prefix,
                PaginationConfig={"PageSize": PAGE_SIZE},
            ):
                yield list(page.get("Contents", []))

    def scan(self) -> ScanReport:
        """One pass over the whole inbox. Raises when the listing itself fails."""
        report = ScanReport()
        for page in self.pages():
            report.listed += len(page)
            items = [
                DropItem(
                    self.folder.bucket, o["Key"], normalize_etag(o.get("ETag", "")), int(o.get("Size", 0))
                )
                for o in page
                if is_recording(o["Key"])
            ]
            report.recordings += len(items)
            seen = known_versions(self.db, self.folder.bucket, [i.key for i in items])
            report.ledger_queries += 1
            self._ingest_all([i for i in items if (i.key, i.etag) not in seen], report)
        log.info(
            "drop: scan listed %d objects, %d recordings, %d new, %d submitted, %d rejected, %d deferred",
            report.listed,
            report.recordings,
            report.new,
            len(report.submitted),
            len(report.rejected),
            len(report.deferred),
        )
        return report

    def ingest(self, item: DropItem, report: ScanReport | None = None) -> ScanReport:
        """Take one object version if nobody has: the shared path of scans and events."""
        return self.ingest_many([item], report)

    def ingest_many(self, items: list[DropItem], report: ScanReport | None = None) -> ScanReport:
        """Take the object versions nobody has, ``drop_ingest_threads`` at a time (an event batch)."""
        report = report or ScanReport()
        report.listed += len(items)
        wanted = [i for i in items if self.folder.contains(i.bucket, i.key) and is_recording(i.key)]
        report.recordings += len(wanted)
        wanted = list(dict.fromkeys(wanted))  # SQS delivers at least once: one record twice
        new: list[DropItem] = []
        for bucket in sorted({i.bucket for i in wanted}):
            here = [i for i in wanted if i.bucket == bucket]
            seen = known_versions(self.db, bucket, [i.key for i in here])
            new += [i for i in here if (i.key, i.etag) not in seen]
        self._ingest_all(new, report)
        return report

    def _ingest_all(self, items: list[DropItem], report: ScanReport) -> None:
        """Take a page's new recordings, ``drop_ingest_threads`` at a time.

        One recording costs a sidecar read, an ffprobe over its presigned URL and the job's
        transaction: mostly waiting on S3 and the database. One at a time, 120 recordings dropped
        together reached the workers over 50 s (bench/storm.py). Claims are per recording, so
        threads keep exactly once as several watchers do; the report is filled here, in one thread.
        """
        report.new += len(items)
        threads = min(self.settings.drop_ingest_threads, len(items))
        if threads <= 1:
            for item in items:
                report.add(self._take(item))
            return
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="voxbatch-drop-ingest") as pool:
            for outcome in pool.map(self._take, items):
                report.add(outcome)

    def _take(self, item: DropItem) -> Outcome:
        """Claim one new recording and make its job, or its error.json."""
        lease_s = self.settings.drop_claim_lease_s
        row_id = claim(self.db, item, self.owner, lease_s)
        if row_id is None:
            return ("raced", item.key)
        confirmed: list[str] = []
        try:
            with claim_kept(self.db, row_id, self.owner, lease_s):
                if item.size == 0:
                    raise InputError(f"{PurePosixPath(item.key).name} is empty (0 bytes)")
                options, tenant = self.options_for(item.key)
                duration_s = self.probe(item.key)
                with joined(job_check(row_id, self.owner, confirmed)):
                    job_id = self.submit(
                        self.folder.source_url(item.key),
                        options,
                        source_name=PurePosixPath(item.key).name,
                        tenant=tenant,
                        duration_s=duration_s,
                    )
        except ClaimLost:
            # Our claim lapsed (this watcher stalled past its lease) and another watcher took the
            # recording over: no job was made here.
            log.warning("drop %s: taken over by another watcher; not submitted here", printable(item.key))
            return ("raced", item.key)
        except PermanentError as exc:
            reason = str(exc)
            record_error(self.db, row_id, reason)
            self._safely(lambda: write_error(self.outbox, self.folder, item.key, reason, etag=item.etag))
            self._tag(item, "rejected")
            return ("rejected", item.key)
        except Exception as exc:
            # Database or S3 trouble: nothing was decided about this recording.
            release(self.db, row_id, self.owner)
            log.warning(
                "drop %s: not submitted this time, will retry: %s", printable(item.key), exc, exc_info=True
            )
            return ("deferred", item.key)
        if not confirmed:  # a submitter that did not create the job through JobStore.add
            record_job(self.db, row_id, job_id)
        self._tag(item, job_id)
        log.info("drop %s: job %s", printable(item.key), job_id)
        return ("submitted", job_id)

    def probe(self, key: str) -> float:
        """Garbage gets its error.json now, instead of a job that fails on a worker later.
        Returns the recording's length in seconds."""
        try:
            return self.audio.probe(self.presigned_url(key)).duration_s
        except InputError as exc:
            # ffprobe got a 4xx for it (the object deleted or replaced since the listing; a 5xx
            # or a refused connection is StorageUnavailable already, workers/ffmpeg_input.py):
            # nothing is known about the recording itself, so the next scan decides.
            if "could not be fetched" in str(exc):
                raise StorageUnavailable(str(exc)) from exc
            raise

    def presigned_url(self, key: str) -> str:
        with s3_errors(f"presigning {key}"):
            return str(
                self.s3.generate_presigned_url(
                    "get_object", Params={"Bucket": self.folder.bucket, "Key": key}, ExpiresIn=3600
                )
            )

    def options_for(self, key: str) -> tuple[JobOptions, str]:
        """The job's options and its tenant, from the prefix and the sidecar."""
        rel = self.folder.relative(key)
        preset = next((p for prefix, p in self.presets if rel.startswith(prefix.lstrip("/"))), None)
        fields = self.read_sidecar(key)
        options = JobOptions(
            instructions=fields.get("instructions"),
            preset=fields.get("preset") or preset,
            language=fields.get("language"),
            window_minutes=fields.get("window_minutes"),
            webhook_url=fields.get("webhook_url"),
            webhook_events=fields.get("webhook_events"),
            vocabulary=fields.get("vocabulary"),
            priority=fields.get("priority") or "batch",
        )
        sidecar = f"the sidecar {PurePosixPath(sidecar_key(key)).name}"
        tenant = drop_tenant(self.settings, self.db, fields.get("tenant"), sidecar)
        # inbox/<collection>/...: the first folder joins the tenant's collection of that name, if any.
        folder = rel.split("/", 1)[0] if "/" in rel else ""
        target = collections.find(self.db, tenant, folder) if folder else None
        if target is not None and target.name == folder:
            options = replace(options, collection=target.id)
        return options, tenant

    def read_sidecar(self, key: str) -> dict[str, Any]:
        side = sidecar_key(key)
        name = PurePosixPath(side).name
        try:
            with s3_errors(f"reading the sidecar {name}"):
                resp = self.s3.get_object(Bucket=self.folder.bucket, Key=side)
                raw = resp["Body"].read(MAX_SIDECAR_BYTES + 1)
        except NotFound:
            return {}
        if len(raw) > MAX_SIDECAR_BYTES:
            raise InputError(f"the sidecar {name} is larger than {MAX_SIDECAR_BYTES // 1024} KB")
        try:
            fields = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"the sidecar {name} is not valid JSON: {exc}") from exc
        if not isinstance(fields, dict):
            raise InputError(f"the sidecar {name} must hold a JSON object")
        unknown = sorted(set(fields) - set(SIDECAR_FIELDS))
        if unknown:
            raise InputError(
                f"the sidecar {name} has unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(SIDECAR_FIELDS)}"
            )
        for k, v in fields.items():
            if k == "webhook_events" and isinstance(v, list):
                # a list, as the API's JSON takes it; its names are checked with the job's options
                if not all(isinstance(e, str) for e in v):
                    raise InputError(
                        f"the sidecar {name}: webhook_events must be a string or a list of strings"
                    )
                continue
            wanted: tuple[type, ...] = (int, float) if k == "window_minutes" else (str,)
            if v is not None and (not isinstance(v, wanted) or isinstance(v, bool)):
                raise InputError(
                    f"the sidecar {name}: {k} must be a {'number' if k == 'window_minutes' else 'string'}"
                )
        return fields

    def _tag(self, item: DropItem, value: str) -> None:
        if not self.settings.drop_tag_processed:
            return

        def put() -> None:
            with s3_errors(f"tagging {item.key}"):
                tags = self.s3.get_object_tagging(Bucket=item.bucket, Key=item.key).get("TagSet", [])
                # PutObjectTagging replaces the whole set: keep the owner's tags.
                merged = [t for t in tags if t["Key"] != TAG_KEY] + [{"Key": TAG_KEY, "Value": value}]
                if len(merged) > 10:
                    log.warning("drop %s: already has 10 tags; not tagging", printable(item.key))
                    return
                self.s3.put_object_tagging(Bucket=item.bucket, Key=item.key, Tagging={"TagSet": merged})

        self._safely(put)

    def _safely(self, fn: Callable[[], object]) -> None:
        # The ledger already holds the decision; a failed side effect must not undo it.
        try:
            fn()
        except VoxbatchError as exc:
            log.warning("drop: %s", exc)

    # -- events

    def poll_events(self, wait_s: float = 20.0) -> ScanReport:
        """Receive one batch of SQS messages (long poll), ingest what they name, delete them."""
        report = ScanReport()
        if self.sqs is None or not self.queue_url:
            return report
        with s3_errors("receiving from the drop folder's SQS queue"):
            resp = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=int(max(0, min(20, wait_s)))
            )
        batch: list[tuple[dict[str, Any], list[DropItem]]] = []
        for message in resp.get("Messages", []):
            report.messages += 1
            try:
                items = events_in(message["Body"])
            except (ValueError, KeyError, TypeError) as exc:
                # Dropping it is safe: the periodic scan reconciles whatever it named.
                log.warning("drop: ignoring an SQS message that is not an S3 event: %s", exc)
                items = []
            batch.append((message, items))
        self.ingest_many([item for _, items in batch for item in items], report)
        deferred = set(report.deferred)
        for message, items in batch:
            if not any(item.key in deferred for item in items):
                with s3_errors("deleting an SQS message"):
                    self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return report

    # -- forever

    def run(self, stop: threading.Event) -> None:
        """Scan every ``watch_interval_s`` (and consume events in between) until ``stop`` is set.

        A scan or an event batch that fails because S3 or the database is away is logged and
        tried again at the next turn (``jobs.db`` turns the database's passing trouble into
        ``DatabaseUnavailable``): the watcher outlives a PostgreSQL restart (the chaos soak saw it
        exit there, and every recording dropped after it waited for good)."""
        interval = self.settings.watch_interval_s
        next_scan = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_scan:
                try:
                    self.scan()
                except VoxbatchError as exc:
                    log.error("drop: scan failed: %s", _one_line(exc))
                next_scan = time.monotonic() + interval
            left = max(0.0, next_scan - time.monotonic())
            if self.sqs is not None:
                try:
                    self.poll_events(wait_s=min(left, self.event_wait_s))
                except VoxbatchError as exc:
                    log.error("drop: receiving events failed: %s", _one_line(exc))
                    stop.wait(min(left, 5.0))
            else:
                stop.wait(left)


def _one_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def celery_submitter(settings: Settings) -> tuple[Database, Submit]:
    """The database and the submit function the CLI and the API use (``workers.submission``)."""
    from workers import submission
    from workers.runtime import build_runtime

    rt = build_runtime(settings)

    def submit(
        source: str,
        options: JobOptions,
        source_name: str,
        tenant: str | None = None,
        duration_s: float | None = None,
    ) -> str:
        job = submission.submit(
            rt, source, options, source_name=source_name, tenant=tenant, duration_s=duration_s
        )
        return job.id

    return rt.db, submit
