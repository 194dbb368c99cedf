"""The narrow seams between the pipeline and the outside: an audio language model and ffmpeg.

The pipeline's steps (``jobs.steps``) only see these protocols; ``workers.engines`` and
``workers.audio`` implement them. Paths are local files (16 kHz mono FLAC windows).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt


class Engine(Protocol):
    """An audio language model: transcribe a window, answer a prompt about it, answer text."""

    name: str  # "vllm", "mistral", "offline"
    model: str
    can_summarize: bool  # False for engines that only transcribe (the document says so)

    def max_audio_s(self) -> float | None:
        """The longest audio one request may carry, if known (configured or learned from a refusal)."""
        ...

    def transcribe(self, audio: Path, language: str | None) -> str:
        """Verbatim transcript of the audio file.

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


class AudioTool(Protocol):
    def probe(self, source: str) -> SourceInfo:
        """Probe a local path or an http(s) URL. Raises InputError naming what is wrong."""
        ...

    def read_samples(self, path: Path) -> npt.NDArray[np.int16]:
        """A window file's samples: 16 kHz mono int16 (a 30-minute window is 57.6 MB)."""
        ...

    def split(self, source: str, out_dir: Path, max_window_s: float) -> Iterator[WindowAudio]:
        """Cut the source into 16 kHz mono FLAC windows of at most ``max_window_s`` in one decode
        pass, each ending in silence (or at the quietest point near the limit). Windows are
        yielded as soon as each is complete; together they cover the source in order, no gap."""
        ...
