"""The overall summary: a model step of its own, so no cpu worker slot waits on the model.

After the last window, a job whose overall summary needs the model (several windows, an engine
that summarises) runs this step where model requests are sent: on a gpu worker, through its
request scheduler, sharing the server's batch with the windows' requests, charged to the job's
tenant. It stores the summary under ``jobs/<id>/overall.json``; the reduce (stitch, render, store,
deliver) then runs on a cpu worker and only reads it. A job of one window needs no such call: its
window's summary was asked for in the preset's overall form (``profiled.is_whole_recording``).

Safe to run twice: a stored summary is not asked for again.
"""

from __future__ import annotations

import json

from jobs.models import Job
from jobs.presets import get_preset
from jobs.runtime import Runtime
from jobs.shares import charged_to, share_of
from jobs.steps.ending import ensure_running
from jobs.stitching import WindowResult
from jobs.summarizing import overall_summary
from jobs.timecodes import span


def overall_key(job_id: str) -> str:
    return f"jobs/{job_id}/overall.json"


def window_results(rt: Runtime, job_id: str) -> list[WindowResult]:
    results = [WindowResult.from_json(rt.storage.get_bytes(w.result_key)) for w in rt.store.windows(job_id)]
    return sorted(results, key=lambda r: r.index)


def needs_overall(rt: Runtime, job: Job) -> bool:
    """True while the job's overall summary is a model call still to make."""
    if not rt.engine.capabilities.summaries or (job.windows_total or 0) < 2:
        return False
    return not rt.storage.exists(overall_key(job.id))


def summarize_job(rt: Runtime, job_id: str) -> str | None:
    """Ask the model for the overall summary from the window summaries and store it."""
    job = rt.store.get(job_id)
    ensure_running(job)
    key = overall_key(job_id)
    if rt.storage.exists(key):
        return stored_overall(rt, job_id)
    results = window_results(rt, job_id)
    items = [(span(r.start_s, r.end_s), r.summary) for r in results if r.summary]
    with charged_to(share_of(job, len(results))):
        summary = overall_summary(rt.engine.complete, get_preset(job.preset), job.instructions, items)
    rt.storage.put_bytes(key, json.dumps({"summary": summary}, ensure_ascii=False).encode())
    return summary


def stored_overall(rt: Runtime, job_id: str) -> str | None:
    summary = json.loads(rt.storage.get_bytes(overall_key(job_id)))["summary"]
    return summary if isinstance(summary, str) else None
