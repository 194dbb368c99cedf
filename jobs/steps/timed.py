"""A window transcribed by an engine that times its own transcript (and tells speakers apart).

Hosted transcription APIs (Mistral's Voxtral Mini Transcribe, OpenAI's whisper-1 and diarizing
models, Gemini asked for timed JSON) return segments with times, and speaker labels when asked.
For them the window step sends the whole window, cut to the engine's cap (``max_audio_s()``, then
its refusals, through the Recutter), instead of our own speech segments: one request hears the
longest stretch the vendor allows, so its speaker labels hold across that stretch.

Speaker labels are renamed in order of first appearance: ``Speaker 1``, ``Speaker 2``, ... within
one request. When a window needs more than one request, the labels of the later requests carry the
part (``Speaker 1 (part 2)``): the vendors label each request on its own, so the same label in two
requests is not claimed to be the same person. Across windows, labels are never linked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jobs.engine import Hints, TimedEngine, TimedPiece
from jobs.models import Job
from jobs.options import parse_vocabulary
from jobs.runtime import Runtime
from jobs.steps.recut import Recutter

# Segments in documents are at most this long (captions and paragraphs rely on it).
MAX_SEGMENT_S = 30.0
# Presets that mean several people speak: speaker labels are asked for under VOXBATCH_DIARIZE=auto.
MANY_SPEAKERS = frozenset({"panel", "meeting"})


def hints_for(rt: Runtime, job: Job) -> Hints:
    """The job's language, vocabulary and whether to ask for speaker labels."""
    diarize = rt.settings.diarize
    return Hints(
        language=job.language,
        vocabulary=parse_vocabulary(job.vocabulary),
        speakers=diarize == "on" or (diarize == "auto" and job.preset in MANY_SPEAKERS),
    )


def timed_segments(
    rt: Runtime,
    engine: TimedEngine,
    job_id: str,
    window_start_s: float,
    audio: Path,
    duration_s: float,
    tmp: Path,
    hints: Hints,
) -> list[dict[str, Any]]:
    """The window's segments on the recording's clock: {index, start_s, end_s, text, speech, speaker}."""
    answers: list[list[TimedPiece]] = []

    def op(path: Path) -> str:
        pieces = engine.transcribe_timed(path, hints)
        answers.append(pieces)  # the Recutter calls op sequentially: one answer per part, in order
        return " ".join(p.text for p in pieces)

    own = tmp / "timed"  # the summary's Recutter cuts into tmp at the same time
    own.mkdir(exist_ok=True)
    parts = Recutter(rt, own, job_id).over(op, audio, 0.0, duration_s)
    segments: list[dict[str, Any]] = []
    for n, (part, pieces) in enumerate(zip(parts, answers, strict=True)):
        names = _speaker_names(pieces, part=n + 1 if len(parts) > 1 and n else None)
        offset = window_start_s + part.start_s
        end_of_part = window_start_s + part.end_s
        for piece in sorted(pieces, key=lambda p: p.start_s):
            text = " ".join(piece.text.split())
            if not text:
                continue
            start = min(max(offset + piece.start_s, offset), end_of_part)
            end = min(max(offset + piece.end_s, start), end_of_part)
            if segments and start < segments[-1]["end_s"]:
                start = segments[-1]["end_s"]  # vendors' segments may overlap by a few ms
                end = max(end, start)
            for a, b, words in _cut(start, end, text):
                segments.append(
                    {
                        "index": len(segments),
                        "start_s": a,
                        "end_s": b,
                        "text": words,
                        "speech": [],
                        "speaker": names.get(piece.speaker) if piece.speaker else None,
                    }
                )
    return segments


def _speaker_names(pieces: list[TimedPiece], part: int | None) -> dict[str | None, str]:
    names: dict[str | None, str] = {}
    for piece in sorted(pieces, key=lambda p: p.start_s):
        if piece.speaker and piece.speaker not in names:
            name = f"Speaker {len(names) + 1}"
            names[piece.speaker] = f"{name} (part {part})" if part else name
    return names


def _cut(start: float, end: float, text: str) -> list[tuple[float, float, str]]:
    """A piece longer than MAX_SEGMENT_S as pieces that are not, its words shared out in
    proportion to their length (times inside a vendor's segment are approximate)."""
    if end - start <= MAX_SEGMENT_S:
        return [(start, end, text)]
    count = math.ceil((end - start) / MAX_SEGMENT_S)
    words = text.split()
    total = sum(len(w) + 1 for w in words)
    out: list[tuple[float, float, str]] = []
    step = (end - start) / count
    taken = 0
    seen = 0
    for i in range(count):
        goal = total * (i + 1) / count
        chunk: list[str] = []
        while taken < len(words) and (seen < goal or i == count - 1):
            chunk.append(words[taken])
            seen += len(words[taken]) + 1
            taken += 1
        if chunk:
            out.append((start + i * step, start + (i + 1) * step, " ".join(chunk)))
    return out
