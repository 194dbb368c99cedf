"""The narrow seams between the pipeline and the outside: an audio language model and ffmpeg.

The pipeline's steps (``jobs.steps``) only see these protocols; ``workers.engines`` and
``workers.audio`` implement them. Paths are local files (16 kHz mono FLAC windows).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from jobs.profiles import ModelProfile


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, in one record the steps read instead of probing attributes
    (docs/models.md has them per engine)."""

    summaries: bool = True  # summarize_audio and complete answer; else the document says why not
    timestamps: bool = False  # a TimedEngine: it times its own transcripts (the whole window is sent)
    speakers: bool = False  # labels speakers when Hints.speakers asks
    vocabulary: bool = False  # transcriptions use the job's vocabulary (else only summary prompts do)
    # Runs on this machine's CPU: this many requests at once, not a batching server's number.
    local_workers: int | None = None
    # The vLLM-served model's sizes (jobs/profiles.py): window and segment lengths, summary source.
    profile: ModelProfile | None = None
    # What a document made without summaries says about it.
    no_summaries_note: str = "No summaries: this engine only transcribes."


class Engine(Protocol):
    """An audio language model: transcribe a window, answer a prompt about it, answer text."""

    name: str  # "vllm", "mistral", "offline"
    model: str
    capabilities: Capabilities

    def max_audio_s(self) -> float | None:
        """The longest audio one request may carry, if known (configured or learned from a refusal)."""
        ...

    def transcribe(self, audio: Path, language: str | None, vocabulary: tuple[str, ...] = ()) -> str:
        """Verbatim transcript of the audio file; ``vocabulary`` is used where
        ``capabilities.vocabulary`` says so, ignored elsewhere.

        Raises WindowTooLarge (split and retry), EngineRejected (permanent),
        EngineUnavailable (after the client's own retries).
        """
        ...

    def summarize_audio(self, audio: Path, prompt: str) -> str:
        """Answer ``prompt`` about the audio (the prompt carries the user's instructions)."""
        ...

    def complete(self, prompt: str) -> str:
        """Answer a text-only prompt (used to reduce window summaries into one)."""
        ...


@dataclass(frozen=True)
class TimedPiece:
    """A stretch of a transcript as an engine timed it, on the clock of the audio it was sent."""

    start_s: float
    end_s: float
    text: str
    speaker: str | None = None  # the engine's label ("speaker_1"), consistent within one request


@dataclass(frozen=True)
class Hints:
    """What a job tells the engine besides the audio: names and terms, and whether to tell speakers
    apart."""

    language: str | None = None
    vocabulary: tuple[str, ...] = ()
    speakers: bool = False


@runtime_checkable
class TimedEngine(Engine, Protocol):
    """An engine whose transcripts carry their own times (and speakers, when asked): the window
    step sends it the whole window (cut to ``max_audio_s()``) instead of our speech segments."""

    def transcribe_timed(self, audio: Path, hints: Hints) -> list[TimedPiece]: ...


def timed_engine(engine: Engine) -> TimedEngine | None:
    """The engine as a TimedEngine when its capabilities say it times its transcripts."""
    if engine.capabilities.timestamps and isinstance(engine, TimedEngine):
        return engine
    return None


Samples = npt.NDArray[np.int16]  # 16 kHz mono audio, as windows are cut and segments sent


@dataclass(frozen=True)
class SourceInfo:
    """What ffprobe says about a recording."""

    duration_s: float
    format_name: str
    codec: str
    sample_rate: int
    channels: int
    size_bytes: int | None


@dataclass(frozen=True)
class WindowAudio:
    """One window cut from a recording: ``[start_s, end_s)`` in the source's time."""

    index: int
    start_s: float
    end_s: float
    path: Path
    # The window's 16 kHz mono samples, when the split was asked to keep them: a caller that
    # transcribes the window in the same process need not decode its FLAC again.
    samples: Samples | None = field(default=None, compare=False, repr=False)


class AudioTool(Protocol):
    def probe(self, source: str) -> SourceInfo:
        """Probe a local path or an http(s) URL. Raises InputError naming what is wrong."""
        ...

    def read_samples(self, path: Path) -> Samples:
        """A window file's samples: 16 kHz mono int16 (a 30-minute window is 57.6 MB)."""
        ...

    def split(
        self,
        source: str,
        out_dir: Path,
        max_window_s: float,
        keep_samples: bool = False,
        skip_windows: int = 0,
    ) -> Iterator[WindowAudio]:
        """Cut the source into 16 kHz mono FLAC windows of at most ``max_window_s`` in one decode
        pass, each ending in silence (or at the quietest point near the limit). Windows are
        yielded as soon as each is complete; together they cover the source in order, no gap.
        With ``keep_samples`` each window also carries its samples (memory: one window). The
        first ``skip_windows`` are cut as before but not stored or yielded (a resumed split)."""
        ...
