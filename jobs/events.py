"""A job's events (``GET /v1/jobs/{id}/events``, ``voxbatch wait --follow``), derived from what is
stored, so any process reading the same database and storage, restarted or not, derives the same
events with the same ids.

The events of a job are one sequence in recording order: window 0's segments in order, window 0
(its summary), window 1's segments, window 1, ..., then ``document`` (succeeded) or ``error``
(failed or cancelled). A segment is sent once it and every segment before it in its window are
stored, so segments come in recording order even when the model answers out of order; a window's
events follow the window before it. ``status`` events (state and progress) come whenever the job
row's state or progress differs from the last one sent; each is the state as it is then, so a
client that missed several gets the latest.

An event's id is the cursor after it: ``window:position:status:attempt:windows_done:segments_done:end``
(position: the next segment of that window). A client that sends it back as ``Last-Event-ID``
gets exactly the events after it, in order; nothing is kept in any process's memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from jobs.errors import InputError
from jobs.live import result_of, stored_run
from jobs.models import Job, JobStatus
from jobs.runtime import Runtime
from jobs.stitching import clean

# Events derived in one call at most: a long finished job is replayed in several calls.
BATCH = 200

_ID = re.compile(r"^(\d{1,6}):(\d{1,6}):([a-z]{1,16}):(\d{1,6}):(\d{1,7}):(\d{1,9}):([-de])$")


@dataclass(frozen=True)
class Cursor:
    """Where a client is in a job's events."""

    window: int = 0  # the window whose events come next
    position: int = 0  # the next segment of that window
    status: str = ""  # the last status event sent: state, attempt, windows and segments done
    attempt: int = 0
    windows_done: int = 0
    segments_done: int = 0
    end: str = "-"  # "d": the document event was sent, "e": the error event, for that status

    def __str__(self) -> str:
        return (
            f"{self.window}:{self.position}:{self.status or 'none'}:{self.attempt}:"
            f"{self.windows_done}:{self.segments_done}:{self.end}"
        )

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """The cursor in a ``Last-Event-ID``; the start for none; InputError for one we never sent."""
        if not text:
            return cls()
        m = _ID.match(text.strip())
        if m is None or (m[3] != "none" and m[3] not in JobStatus.__members__):
            raise InputError(f"Last-Event-ID {text[:60]!r} is not an event id of this API")
        status = "" if m[3] == "none" else m[3]
        return cls(int(m[1]), int(m[2]), status, int(m[4]), int(m[5]), int(m[6]), m[7])

    def same_status(self, job: Job) -> bool:
        return (self.status, self.attempt, self.windows_done, self.segments_done) == (
            str(job.status),
            job.attempt,
            job.windows_done,
            job.segments_done or 0,
        )


@dataclass(frozen=True)
class Event:
    kind: str  # status, segment, window, document, error
    id: str
    data: dict[str, Any]


def status_data(job: Job) -> dict[str, Any]:
    data: dict[str, Any] = {
        "status": str(job.status),
        "windows_done": job.windows_done,
        "windows_total": job.windows_total,
        "segments_done": job.segments_done or 0,
        "segments_total": job.segments_total,
        "duration_s": job.duration_s,
    }
    if job.error:
        data["error"] = job.error
    return data


def next_events(
    rt: Runtime, job: Job, cursor: Cursor, limit: int = BATCH
) -> tuple[list[Event], Cursor, bool]:
    """The events after ``cursor`` as far as they are stored (at most ``limit``), the cursor after
    them, and True when the stream is over (the job ended and its last event was sent)."""
    events: list[Event] = []
    status = JobStatus(job.status)
    if not cursor.same_status(job):
        cursor = replace(
            cursor,
            status=str(status),
            attempt=job.attempt,
            windows_done=job.windows_done,
            segments_done=job.segments_done or 0,
            end="-",
        )
        events.append(Event("status", str(cursor), status_data(job)))
    windows = {w.index: w for w in rt.store.windows(job.id)}
    while len(events) < limit:
        window = windows.get(cursor.window)
        if window is None:
            break  # not cut yet, or past the last window
        result = result_of(rt, window)
        if result is not None:
            # A done window: its result is the truth (it holds the speakers of engines that
            # label them, and the segments of engines that store none one by one).
            rest = result.segments[cursor.position :][: limit - len(events)]
        else:
            rest = stored_run(rt, job.id, window.index, cursor.position, limit - len(events))
        for seg in rest:
            cursor = replace(cursor, position=cursor.position + 1)
            text = clean(str(seg.get("text") or "")).replace("\n", " ")  # as in document.json
            if not text:
                continue  # music, noise: nothing to show (as in document.json)
            data = {
                "window": window.index,
                "index": int(seg.get("index", cursor.position - 1)),
                "start_s": round(float(seg["start_s"]), 3),
                "end_s": round(float(seg["end_s"]), 3),
                "text": text,
                **({"speaker": seg["speaker"]} if seg.get("speaker") else {}),
            }
            events.append(Event("segment", str(cursor), data))
        if result is None or cursor.position < len(result.segments) or len(events) >= limit:
            break
        cursor = replace(cursor, window=cursor.window + 1, position=0)
        data = {
            "index": result.index,
            "start_s": round(result.start_s, 3),
            "end_s": round(result.end_s, 3),
            "summary": result.summary,
        }
        events.append(Event("window", str(cursor), data))
    all_windows = job.windows_total is not None and cursor.window >= job.windows_total
    if status.finished and cursor.end == "-" and len(events) < limit:
        if status == JobStatus.succeeded and all_windows:
            cursor = replace(cursor, end="d")
            events.append(Event("document", str(cursor), {"status": str(status)}))
        elif status != JobStatus.succeeded:
            cursor = replace(cursor, end="e")
            events.append(Event("error", str(cursor), {"status": str(status), "reason": job.error}))
    return events, cursor, cursor.end != "-" and status.finished
