"""Audio as a request carries it: the format name and MIME type of a file, and a window cut into
equal items for models that hear at most so many seconds per audio item."""

from __future__ import annotations

import itertools
from pathlib import Path

from jobs.segmenting import SAMPLE_RATE
from jobs.steps.segments import wav_bytes


def audio_format(audio: Path) -> str:
    return audio.suffix.lower().lstrip(".") or "flac"


def audio_mime(audio: Path) -> str:
    fmt = audio_format(audio)
    return {"mp3": "audio/mpeg", "ogg": "audio/ogg", "wav": "audio/wav"}.get(fmt, f"audio/{fmt}")


def cut_items(audio: Path, count: int) -> list[tuple[bytes, float]]:
    """The audio as ``count`` equal consecutive WAV files (16 kHz mono s16), with their seconds."""
    from workers.audio import FfmpegAudio  # ffmpeg, only for models that take several items

    samples = FfmpegAudio().read_samples(audio)
    bounds = [round(i * len(samples) / count) for i in range(count + 1)]
    return [(wav_bytes(samples[a:b]), (b - a) / SAMPLE_RATE) for a, b in itertools.pairwise(bounds)]
