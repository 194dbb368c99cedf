"""What a running job has done so far, read from what is stored: the events of
``GET /v1/jobs/{id}/events`` (jobs/events.py), the partial documents and ``--follow`` all read it
here, so every API replica, restarted or not, sees the same thing.

A window's transcript grows one stored segment at a time (``jobs/steps/segments.py`` writes
``jobs/<id>/windows/<w>/segments/<s>.json`` as each answer arrives, in whatever order the model
answers); a done window has its result JSON, which is the truth (engines that time their own
transcripts store no segment files, only the result).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.documents import Document
from jobs.models import Job, Window, WindowStatus
from jobs.runtime import Runtime
from jobs.steps.overall import overall_key, stored_overall
from jobs.steps.segments import SegmentResult, segment_key, segments_prefix
from jobs.stitching import WindowResult


def result_of(rt: Runtime, window: Window) -> WindowResult | None:
    """A done window's stored result (None while it is not done)."""
    if window.status != WindowStatus.done:
        return None
    try:
        return WindowResult.from_json(rt.storage.get_bytes(window.result_key))
    except (FileNotFoundError, KeyError):
        return None


def stored_run(rt: Runtime, job_id: str, window_index: int, first: int, limit: int) -> list[dict[str, Any]]:
    """The window's stored segments ``first, first + 1, ...`` up to the first one not stored yet
    (at most ``limit``): a segment answered early waits until those before it are stored, so
    segments always come in recording order."""
    prefix = segments_prefix(job_id, window_index)
    stored = set(rt.storage.list(prefix))
    out: list[dict[str, Any]] = []
    k = first
    while len(out) < limit and segment_key(job_id, window_index, k) in stored:
        seg = SegmentResult.from_json(rt.storage.get_bytes(segment_key(job_id, window_index, k)))
        out.append({"index": seg.index, "start_s": seg.start_s, "end_s": seg.end_s, "text": seg.text})
        k += 1
    return out


def partial_result(rt: Runtime, job_id: str, window: Window) -> WindowResult | None:
    """A window as far as it is done: its result when done, else its stored segments in order
    (no summary yet); None when nothing of it is stored."""
    done = result_of(rt, window)
    if done is not None:
        return done
    segments = stored_run(rt, job_id, window.index, 0, 1_000_000)
    if not segments:
        return None
    return WindowResult(
        index=window.index,
        start_s=window.start_s,
        end_s=window.end_s,
        transcript="\n".join(s["text"] for s in segments if s["text"].strip()),
        summary=None,
        segments=[{**s, "speech": []} for s in segments],
    )


def partial_note(job: Job, done: int, total: int | None) -> str:
    of = f"{done} of {total}" if total else f"{done}"
    return (
        f"Partial document: job {job.id} is {job.status}; {of} parts done. "
        "It grows as the job runs; the final document replaces it."
    )


def partial_document(rt: Runtime, job: Job) -> Document:
    """What is done so far, as a Document for the same renderers as the final one, marked partial.

    Windows appear in order as far as anything of them is stored; the overall summary is missing
    until the job ends (the stored one is used once it is written)."""
    windows = rt.store.windows(job.id)
    results = [r for r in (partial_result(rt, job.id, w) for w in windows) if r is not None]
    done = sum(1 for w in windows if w.status == WindowStatus.done)
    summary = None
    if len(results) == 1 and (job.windows_total or 0) == 1:
        summary = results[0].summary
    elif rt.storage.exists(overall_key(job.id)):
        summary = stored_overall(rt, job.id)
    engine = job.engine or next((r.engine for r in results if r.engine), "") or "—"
    model = job.model or next((r.model for r in results if r.model), "") or "—"
    return Document(
        job_id=job.id,
        source=job.source,
        title=Path(job.source_name).stem or job.source_name or job.id,
        duration_s=job.duration_s or (results[-1].end_s if results else 0.0),
        language=job.language,
        engine=engine,
        model=model,
        preset=job.preset,
        instructions=job.instructions,
        summary=summary,
        windows=results,
        notes=[note for r in results for note in r.notes],
        partial=partial_note(job, done, job.windows_total),
    )
