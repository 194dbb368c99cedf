"""A finished job made by hand for the recording routes and the web page's player: the recording in
storage, and documents in the shape of the timed-transcript contract (``document.json`` with
``segments``, ``transcript.vtt``), without running the pipeline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jobs.models import Job, JobStatus, utcnow
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.create import create_job


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str
    window: int = 0


def stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def vtt(segments: list[Segment]) -> str:
    cues = [f"{i + 1}\n{stamp(g.start_s)} --> {stamp(g.end_s)}\n{g.text}\n" for i, g in enumerate(segments)]
    return "WEBVTT\n\n" + "\n".join(cues)


def document_json(job: Job, segments: list[Segment], duration_s: float) -> dict[str, object]:
    text = " ".join(g.text for g in segments)
    return {
        "job_id": job.id,
        "source": job.source_name,
        "duration_s": duration_s,
        "language": "en",
        "engine": "fake",
        "model": "fake-model",
        "instructions": None,
        "summary": "A test recording.",
        "transcript": text,
        "windows": [{"index": 0, "start_s": 0.0, "end_s": duration_s, "transcript": text, "summary": "All."}],
        "segments": [
            {"index": i, "window": g.window, "start_s": round(g.start_s, 3), "end_s": round(g.end_s, 3),
             "text": g.text}
            for i, g in enumerate(segments)
        ],
    }  # fmt: skip


def finished_job(
    rt: Runtime,
    tenant: str,
    recording: Path,
    segments: list[Segment],
    *,
    duration_s: float,
    captions: str | None = None,
    name: str | None = None,
) -> Job:
    """A succeeded job of ``tenant`` whose source is ``recording`` (copied into storage)."""
    name = name or recording.name
    job = create_job(rt, name, JobOptions(), source_name=name, tenant=tenant)
    key = f"jobs/{job.id}/source/{recording.name}"
    with recording.open("rb") as f:
        rt.storage.put_stream(key, f)
    out = job.output_prefix
    rt.storage.put_bytes(out + "document.json", json.dumps(document_json(job, segments, duration_s)).encode())
    rt.storage.put_bytes(
        out + "transcript.vtt", (captions if captions is not None else vtt(segments)).encode()
    )
    md = "# " + name + "\n\n" + "\n\n".join(f"[{stamp(g.start_s)[:8]}] {g.text}" for g in segments) + "\n"
    rt.storage.put_bytes(out + "document.md", md.encode())
    rt.storage.put_bytes(out + "transcript.txt", "\n".join(g.text for g in segments).encode())
    with rt.db.session() as s:
        row = s.get(Job, job.id)
        assert row is not None
        row.source_key = key
        row.status = JobStatus.succeeded
        row.duration_s = duration_s
        row.windows_total = row.windows_done = 1
        row.finished_at = utcnow()
        s.add(row)
        s.commit()
    return rt.store.get(job.id)
