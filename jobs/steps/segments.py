"""A window's speech segments, transcribed in parallel and stored one by one.

The window's 16 kHz samples are cut into segments of at most 30 s that start and end in pauses
(``jobs.segmenting``); each segment goes to the engine as its own request, up to
``VOXBATCH_SEGMENT_CONCURRENCY`` at once per window, into the process's request scheduler, which
keeps ``VOXBATCH_MAX_INFLIGHT`` of all windows' requests at the server, so a vLLM server batches
them (continuous batching decodes hundreds of short sequences in the time one long transcript
takes). Voxtral pads every audio to a multiple of 30 s, so segments of up to 30 s cost no more
audio tokens than the window.

Each segment's result is stored under ``jobs/<id>/windows/<w>/segments/<s>.json`` before the window
is marked done: a retry or a redelivered window redoes only the segments that are missing, and a
re-run writes the same bytes. A segment the server refuses as too long or too large, or whose
transcript loops (``WindowTooLarge``, ``RepetitionLoop``), is tried once more in two halves cut at its
quietest pause; refused again, it is named in the document's notes without failing the job. Any
other refusal (unknown model, bad language) is about the job, not the audio, and fails the window.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import wave
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jobs.engine import Hints, Samples
from jobs.errors import TranscriptCut, WindowTooLarge
from jobs.runtime import Runtime
from jobs.segmenting import SAMPLE_RATE, Segment
from jobs.shares import UNCHARGED, Share, charged_to
from jobs.timecodes import span

log = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    """One segment's transcript, on the recording's clock; stored as JSON."""

    index: int  # within the window
    start_s: float
    end_s: float
    text: str
    speech: list[tuple[float, float]] = field(default_factory=list)
    note: str | None = None  # why the text is missing, when the server refused the segment

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SegmentResult:
        raw = json.loads(data)
        raw["speech"] = [tuple(run) for run in raw.get("speech", [])]
        return cls(**raw)


def segments_prefix(job_id: str, window_index: int) -> str:
    return f"jobs/{job_id}/windows/{window_index:04d}/segments/"


def segment_key(job_id: str, window_index: int, segment_index: int) -> str:
    return f"{segments_prefix(job_id, window_index)}{segment_index:04d}.json"


def wav_bytes(samples: Samples) -> bytes:
    """16 kHz mono PCM WAV: what a segment is sent as (30 s is under 1 MB, far below any cap)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


class SegmentWork:
    """Transcribes the segments of one window, in parallel, skipping those already stored."""

    def __init__(
        self,
        rt: Runtime,
        job_id: str,
        window_index: int,
        window_start_s: float,
        samples: Samples,
        tmp: Path,
        hints: Hints,
        share: Share = UNCHARGED,
    ) -> None:
        self.rt = rt
        self.job_id = job_id
        self.window_index = window_index
        self.offset = window_start_s
        self.samples = samples
        self.tmp = tmp
        self.hints = hints  # the language, and the vocabulary for engines that use it
        self.share = share  # pool threads do not inherit the caller's context: each sets it
        self._stored: set[str] = set()

    def run(
        self, segments: list[Segment], pool: ThreadPoolExecutor, on_done: Callable[[int], None]
    ) -> list[Future[SegmentResult]]:
        # One listing of what is stored, not a HEAD request per segment (dozens per window on S3).
        self._stored = set(self.rt.storage.list(segments_prefix(self.job_id, self.window_index)))
        return [pool.submit(self._one, segment, on_done) for segment in segments]

    def _one(self, segment: Segment, on_done: Callable[[int], None]) -> SegmentResult:
        key = segment_key(self.job_id, self.window_index, segment.index)
        stored = SegmentResult.from_json(self.rt.storage.get_bytes(key)) if key in self._stored else None
        # A segment the server refused last time is asked again: the server may have changed.
        if stored is not None and (stored.note is None or stored.text):
            result = stored
        else:
            with charged_to(self.share):
                result = self._transcribe(segment)
            self.rt.storage.put_bytes(key, result.to_json())
        on_done(segment.index)
        return result

    def _transcribe(self, segment: Segment) -> SegmentResult:
        shifted = segment.shifted(self.offset)
        base = SegmentResult(
            segment.index, shifted.start_s, shifted.end_s, "", [(a, b) for a, b in shifted.speech]
        )
        try:
            base.text = self._engine_text(segment.start_s, segment.end_s, f"{segment.index}")
            return base
        except WindowTooLarge as first:
            if segment.end_s - segment.start_s < 2.0:
                return self._refused(base, first)
            where = span(shifted.start_s, shifted.end_s)
            why = "was cut at its token cap" if isinstance(first, TranscriptCut) else f"was refused ({first})"
            log.info("job %s: segment %s %s; trying it in two halves", self.job_id, where, why)
        middle = self._quietest_point(segment)
        texts: list[str] = []
        for start, end, name in ((segment.start_s, middle, "a"), (middle, segment.end_s, "b")):
            try:
                texts.append(self._engine_text(start, end, f"{segment.index}{name}"))
            except WindowTooLarge as second:
                if not isinstance(second, TranscriptCut):
                    return self._refused(base, second)
                # Still at the cap in half the audio: keep what was said, and say it may be cut.
                texts.append(second.text)
                base.note = (
                    f"the transcript of {span(base.start_s, base.end_s)} reached the model's token cap"
                )
        base.text = " ".join(t.strip() for t in texts if t.strip())
        return base

    def _refused(self, base: SegmentResult, exc: Exception) -> SegmentResult:
        if isinstance(exc, TranscriptCut):
            base.text = exc.text.strip()
            base.note = f"the transcript of {span(base.start_s, base.end_s)} reached the model's token cap"
            return base
        base.note = f"the model server refused the segment {span(base.start_s, base.end_s)}: {exc}"
        log.warning("job %s: %s", self.job_id, base.note)
        return base

    def _engine_text(self, start_s: float, end_s: float, name: str) -> str:
        piece = self.samples[round(start_s * SAMPLE_RATE) : round(end_s * SAMPLE_RATE)]
        path = self.tmp / f"segment-{self.window_index:04d}-{name}.wav"
        path.write_bytes(wav_bytes(piece))
        try:
            return self.rt.engine.transcribe(path, self.hints.language, self.hints.vocabulary).strip()
        finally:
            path.unlink(missing_ok=True)

    def _quietest_point(self, segment: Segment) -> float:
        """The middle of the longest pause inside the segment, else its middle."""
        gaps = [(b[0] - a[1], (a[1] + b[0]) / 2) for a, b in itertools.pairwise(segment.speech)]
        if gaps:
            return max(gaps)[1]
        return (segment.start_s + segment.end_s) / 2
