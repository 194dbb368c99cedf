"""The reduce: stitch the windows, take the overall summary, render and store the documents.

The overall summary of several windows is a model call made before, by the overall step
(``jobs/steps/overall.py``) where model requests are sent; a job of one window has it already.

Runs once per job, after the barrier (``JobStore.claim_reduce``) let exactly one caller through;
running it again rewrites the same documents.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jobs import search
from jobs.documents import RENDERERS, Document
from jobs.models import Job
from jobs.runtime import Runtime
from jobs.steps.ending import ensure_running, succeed
from jobs.steps.overall import summarize_job, window_results
from jobs.stitching import check_tiling

log = logging.getLogger(__name__)

NO_SPEECH_NOTE = "No speech was detected in this recording."


def reduce_job(rt: Runtime, job_id: str) -> Job:
    job = rt.store.get(job_id)
    ensure_running(job)
    results = window_results(rt, job_id)
    check_tiling(results, job.duration_s)
    engine = rt.engine
    notes: list[str] = []
    summary: str | None = None
    if not engine.capabilities.summaries:
        notes.append(engine.capabilities.no_summaries_note)
    elif len(results) == 1:
        summary = results[0].summary  # asked for in the overall form (jobs/steps/overall.py)
    else:
        # Normally made by the overall step on a gpu worker; asked here only in a local run.
        summary = summarize_job(rt, job_id)
    if not any(r.transcript.strip() for r in results):
        notes.append(NO_SPEECH_NOTE)
    notes += [note for r in results for note in r.notes]
    doc = Document(
        job_id=job.id,
        source=job.source,
        title=job.title or Path(job.source_name).stem or job.source_name or job.id,
        duration_s=job.duration_s or (results[-1].end_s if results else 0.0),
        language=job.language,
        engine=engine.name,
        model=engine.model,
        preset=job.preset,
        instructions=job.instructions,
        summary=summary,
        windows=results,
        notes=notes,
    )
    for name, render in RENDERERS.items():
        rt.storage.put_bytes(job.output_prefix + name, render(doc))
    # Searchable from the moment it has succeeded (replaces what a reduce run before indexed).
    search.index_job(rt.db, job.id, job.tenant, job.collection_id, job.language, doc.segments())
    succeed(rt, job_id, engine.name, engine.model)
    return rt.store.get(job_id)
