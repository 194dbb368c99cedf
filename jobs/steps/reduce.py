"""The reduce: stitch the windows, write the overall summary, render and store the documents.

Runs once per job, after the barrier (``JobStore.claim_reduce``) let exactly one caller through;
running it again rewrites the same documents.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jobs.documents import RENDERERS, Document
from jobs.models import Job
from jobs.presets import get_preset
from jobs.runtime import Runtime
from jobs.steps.ending import ensure_running, succeed
from jobs.stitching import WindowResult, check_tiling
from jobs.summarizing import overall_summary
from jobs.timecodes import span

log = logging.getLogger(__name__)

OFFLINE_NOTE = (
    "No summaries: this document was made by the offline engine (pocketsphinx), which only "
    "transcribes. Point VOXBATCH_VLLM_URL at a vLLM server running Voxtral for summaries that "
    "follow your instructions."
)
NO_SPEECH_NOTE = "No speech was detected in this recording."


def reduce_job(rt: Runtime, job_id: str) -> Job:
    job = rt.store.get(job_id)
    ensure_running(job)
    windows = rt.store.windows(job_id)
    results = [WindowResult.from_json(rt.storage.get_bytes(w.result_key)) for w in windows]
    results.sort(key=lambda r: r.index)
    check_tiling(results, job.duration_s)
    engine = rt.engine
    notes: list[str] = []
    summary: str | None = None
    if engine.can_summarize:
        items = [(span(r.start_s, r.end_s), r.summary) for r in results if r.summary]
        summary = overall_summary(engine.complete, get_preset(job.preset), job.instructions, items)
    else:
        notes.append(OFFLINE_NOTE)
    if not any(r.transcript.strip() for r in results):
        notes.append(NO_SPEECH_NOTE)
    notes += [note for r in results for note in r.notes]
    doc = Document(
        job_id=job.id,
        source=job.source,
        title=Path(job.source_name).stem or job.source_name or job.id,
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
    succeed(rt, job_id, engine.name, engine.model)
    return rt.store.get(job_id)
