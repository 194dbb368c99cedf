"""Rendering a finished job as document.md (for people), document.json and transcript.txt."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jobs.stitching import WindowResult, clean, stitch
from jobs.timecodes import hms, span


@dataclass
class Document:
    job_id: str
    source: str
    title: str
    duration_s: float
    language: str | None
    engine: str
    model: str
    preset: str
    instructions: str | None
    summary: str | None
    windows: list[WindowResult]
    notes: list[str] = field(default_factory=list)

    @property
    def transcript(self) -> str:
        return stitch(self.windows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "source": self.source,
            "title": self.title,
            "duration_s": round(self.duration_s, 3),
            "language": self.language,
            "engine": self.engine,
            "model": self.model,
            "preset": self.preset,
            "instructions": self.instructions,
            "summary": self.summary,
            "transcript": self.transcript,
            "windows": [
                {
                    "index": w.index,
                    "start_s": round(w.start_s, 3),
                    "end_s": round(w.end_s, 3),
                    "transcript": clean(w.transcript),
                    "summary": w.summary,
                }
                for w in self.windows
            ],
            "notes": self.notes,
        }


def render_json(doc: Document) -> bytes:
    return (json.dumps(doc.to_dict(), ensure_ascii=False, indent=2) + "\n").encode()


def render_text(doc: Document) -> bytes:
    text = doc.transcript
    return (text + "\n").encode() if text else b""


def render_markdown(doc: Document) -> bytes:
    out: list[str] = [f"# {doc.title}", ""]
    meta = [f"Duration {hms(doc.duration_s)}", f"engine {doc.engine} ({doc.model})"]
    if doc.language:
        meta.append(f"language {doc.language}")
    meta.append(f"preset {doc.preset}")
    out += ["_" + " · ".join(meta) + "_", ""]
    if doc.instructions:
        out += [f"> Instructions: {doc.instructions.strip()}", ""]
    for note in doc.notes:
        out += [f"> **Note:** {note}", ""]
    out += ["## Summary", "", doc.summary.strip() if doc.summary else "_No summary._", ""]
    for w in doc.windows:
        out += [f"## {span(w.start_s, w.end_s)}", ""]
        if w.summary:
            out += ["### Summary", "", w.summary.strip(), ""]
        out += ["### Transcript", ""]
        text = clean(w.transcript)
        out += [text if text else "_No speech detected in this part._", ""]
    return ("\n".join(out).rstrip() + "\n").encode()


RENDERERS = {
    "document.md": render_markdown,
    "document.json": render_json,
    "transcript.txt": render_text,
}
# The documents of a finished job, in the order people look for them.
DOCUMENT_NAMES = tuple(RENDERERS)
