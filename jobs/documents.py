"""Rendering a finished job: document.md (for people), document.json, transcript.txt, and the
captions transcript.srt and transcript.vtt.

Caption and paragraph times are exact at speech-segment edges; inside a segment, cue times are
spread over the segment's speech (not its pauses) in proportion to the length of the text: they
are not word alignment.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from jobs.captions import TimedText, build_cues, render_srt, render_vtt, stamped, timed_paragraphs
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
    # Set while the job runs (``?partial=true``, jobs/live.py): what is done so far, and this note
    # says so at the top of document.md; document.json gets ``"partial": true``.
    partial: str | None = None

    @property
    def transcript(self) -> str:
        return stitch(self.windows)

    def segments(self) -> list[dict[str, Any]]:
        """Every speech segment in time order, numbered across the recording. Segments the model
        heard no words in (music, noise) are left out: there is nothing to show or caption."""
        ordered = [
            (w.index, seg)
            for w in sorted(self.windows, key=lambda w: w.start_s)
            for seg in w.segments
            if clean(seg["text"])
        ]
        return [
            {
                "index": n,
                "window": window,
                "start_s": round(seg["start_s"], 3),
                "end_s": round(seg["end_s"], 3),
                "text": clean(seg["text"]).replace("\n", " "),
                # Only from engines that label speakers (per window: jobs/steps/timed.py).
                **({"speaker": seg["speaker"]} if seg.get("speaker") else {}),
            }
            for n, (window, seg) in enumerate(ordered)
        ]

    def timed(self, window: WindowResult | None = None) -> list[TimedText]:
        windows = [window] if window is not None else sorted(self.windows, key=lambda w: w.start_s)
        return [
            TimedText(
                seg["start_s"],
                seg["end_s"],
                clean(seg["text"]).replace("\n", " "),
                tuple(map(tuple, seg.get("speech") or ())),
                seg.get("speaker") or None,
            )
            for w in windows
            for seg in w.segments
            if seg["text"].strip()
        ]

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
            "segments": self.segments(),
            "notes": self.notes,
            **({"partial": True, "partial_note": self.partial} if self.partial else {}),
        }


def render_json(doc: Document) -> bytes:
    return (json.dumps(doc.to_dict(), ensure_ascii=False, indent=2) + "\n").encode()


def render_text(doc: Document) -> bytes:
    text = doc.transcript
    return (text + "\n").encode() if text else b""


def _md(text: str) -> str:
    """Raw HTML from file names, instructions and model output shown as text in any Markdown viewer."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_markdown(doc: Document) -> bytes:
    out: list[str] = [f"> **{_md(doc.partial)}**", ""] if doc.partial else []
    out += [f"# {_md(doc.title)}", ""]
    meta = [f"Duration {hms(doc.duration_s)}", f"engine {doc.engine} ({doc.model})"]
    if doc.language:
        meta.append(f"language {doc.language}")
    meta.append(f"preset {doc.preset}")
    out += ["_" + " · ".join(meta) + "_", ""]
    if doc.instructions:
        out += [f"> Instructions: {_md(doc.instructions.strip())}", ""]
    for note in doc.notes:
        out += [f"> **Note:** {_md(note)}", ""]
    out += ["## Summary", "", _md(doc.summary.strip()) if doc.summary else "_No summary._", ""]
    for w in doc.windows:
        out += [f"## {span(w.start_s, w.end_s)}", ""]
        # A job of one window: its summary is the overall one, written once above.
        if w.summary and not (len(doc.windows) == 1 and w.summary == doc.summary):
            out += ["### Summary", "", _md(w.summary.strip()), ""]
        out += ["### Transcript", ""]
        paragraphs = _paragraphs(doc.timed(w))
        if not paragraphs and clean(w.transcript):
            paragraphs = [stamped(w.start_s, clean(w.transcript))]  # a result stored before segments
        out += [_md("\n\n".join(paragraphs)) if paragraphs else "_No speech detected in this part._", ""]
    return ("\n".join(out).rstrip() + "\n").encode()


def _paragraphs(timed: list[TimedText]) -> list[str]:
    """Timestamped paragraphs; with speaker labels, a new paragraph whenever the speaker changes,
    led by the speaker's name in bold."""
    if not any(t.speaker for t in timed):
        return [stamped(start, text) for start, text in timed_paragraphs(timed)]
    out: list[str] = []
    for speaker, run in itertools.groupby(timed, key=lambda t: t.speaker):
        who = f"**{speaker}:** " if speaker else ""
        out += [stamped(start, who + text) for start, text in timed_paragraphs(list(run))]
    return out


def render_srt_file(doc: Document) -> bytes:
    return render_srt(build_cues(doc.timed())).encode()


def render_vtt_file(doc: Document) -> bytes:
    return render_vtt(build_cues(doc.timed())).encode()


RENDERERS = {
    "document.md": render_markdown,
    "document.json": render_json,
    "transcript.txt": render_text,
    "transcript.srt": render_srt_file,
    "transcript.vtt": render_vtt_file,
}
# The documents of a finished job, in the order people look for them.
DOCUMENT_NAMES = tuple(RENDERERS)
