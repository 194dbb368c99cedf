"""Test recordings built from generated speech (espeak-ng), silences, marker tones and loops.

A recording is described as a list of parts; ``build_recording`` renders it with numpy at 16 kHz,
then lets ffmpeg write any container/codec, and returns where each marker sits so a test knows
which window must carry it. Long recordings (3 h, 10 h) come from ``loop_to``, which repeats a
short file with ``-stream_loop`` and stream copy (seconds, not minutes, to build).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tests.markers import SAMPLE_RATE, loop_trigger_samples, marker_samples

DEFAULT_VOICE = "en-us"
DEFAULT_SPEED = 175  # espeak-ng words per minute

PARAGRAPHS = [
    "Good morning everyone, and thank you for coming. Today I want to talk about batch systems "
    "that process very long recordings.",
    "The first problem is size. A ten hour recording does not fit in memory once it is decoded, "
    "so every step has to stream.",
    "The second problem is the model. It accepts about thirty minutes of audio at a time, so we "
    "cut the recording into windows.",
    "Where should a window end? In a pause, between two sentences, so that no word is cut in half.",
    "We measured the latency of the scheduler on three clusters. In the first one, tail latency "
    "dropped by half.",
    "The second cluster told a different story. The queue was full of small jobs, and the large ones waited.",
    "So we added a separate queue for the graphics cards. Splitting and stitching stay on the "
    "ordinary processors.",
    "Let me summarize. Stream everything, cut in silence, and keep the database as the source of truth.",
]


@dataclass(frozen=True)
class Speech:
    text: str
    voice: str = DEFAULT_VOICE
    speed: int = DEFAULT_SPEED


@dataclass(frozen=True)
class Silence:
    seconds: float


@dataclass(frozen=True)
class Marker:
    k: int


@dataclass(frozen=True)
class LoopTrigger:
    seconds: float = 2.0


@dataclass(frozen=True)
class Tone:
    """A steady sine (no silence anywhere in it), optionally with white noise on top."""

    hz: float
    seconds: float
    amplitude: float = 0.3
    noise: float = 0.0


Part = Speech | Silence | Marker | LoopTrigger | Tone


class MarkerSpan(NamedTuple):
    k: int
    start_s: float
    end_s: float


class Recording(NamedTuple):
    path: Path
    markers: list[MarkerSpan]


def speak(text: str, path: Path, voice: str = DEFAULT_VOICE, speed: int = DEFAULT_SPEED) -> Path:
    """Write ``text`` spoken by espeak-ng to a WAV file (22.05 kHz mono, espeak's own format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    return path


@functools.lru_cache(maxsize=256)
def _speech_samples(text: str, voice: str, speed: int, sample_rate: int) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    return decode(wav, sample_rate)


def speech_samples(
    text: str,
    voice: str = DEFAULT_VOICE,
    speed: int = DEFAULT_SPEED,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """float32 mono samples of ``text`` spoken by espeak-ng."""
    return _speech_samples(text, voice, speed, sample_rate).copy()


def decode(data: bytes | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any audio (bytes or a file) to float32 mono samples with ffmpeg."""
    source = str(data) if isinstance(data, Path) else "pipe:0"
    done = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-nostdin",
            "-i",
            source,
            "-ac",
            "1",
            "-ar",
            str(sample_rate),
            "-f",
            "f32le",
            "pipe:1",
        ],
        input=None if isinstance(data, Path) else data,
        capture_output=True,
        check=True,
    )
    return np.frombuffer(done.stdout, dtype="<f4").astype(np.float32)


def render(parts: Sequence[Part], sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, list[MarkerSpan]]:
    """Samples of ``parts`` played one after the other, and where each marker tone sits."""
    chunks: list[np.ndarray] = []
    markers: list[MarkerSpan] = []
    position = 0
    rng = np.random.default_rng(7)
    for part in parts:
        if isinstance(part, Speech):
            chunk = speech_samples(part.text, part.voice, part.speed, sample_rate)
        elif isinstance(part, Silence):
            chunk = np.zeros(round(part.seconds * sample_rate), dtype=np.float32)
        elif isinstance(part, Marker):
            chunk = marker_samples(part.k, sample_rate)
            markers.append(MarkerSpan(part.k, position / sample_rate, (position + len(chunk)) / sample_rate))
        elif isinstance(part, LoopTrigger):
            chunk = loop_trigger_samples(part.seconds, sample_rate)
        else:
            n = round(part.seconds * sample_rate)
            t = np.arange(n) / sample_rate
            tone = part.amplitude * np.sin(2 * np.pi * part.hz * t)
            if part.noise:
                tone = tone + rng.normal(0.0, part.noise, n)
            chunk = tone.astype(np.float32)
        chunks.append(chunk)
        position += len(chunk)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return samples, markers


def write_audio(
    samples: np.ndarray,
    path: Path,
    sample_rate: int = SAMPLE_RATE,
    out_rate: int | None = None,
    channels: int = 1,
    codec_args: Sequence[str] = (),
) -> Path:
    """Encode float32 mono samples to ``path``; the extension picks the container, ``codec_args``
    the codec (e.g. ``["-c:a", "libopus", "-b:a", "32k"]``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "f32le",
            "-ar",
            str(sample_rate),
            "-ac",
            "1",
            "-i",
            "pipe:0",
            "-ac",
            str(channels),
            "-ar",
            str(out_rate or sample_rate),
            *codec_args,
            str(path),
        ],
        input=np.asarray(samples, dtype="<f4").tobytes(),
        capture_output=True,
        check=True,
    )
    return path


def build_recording(
    parts: Sequence[Part],
    path: Path,
    out_rate: int | None = None,
    channels: int = 1,
    codec_args: Sequence[str] = (),
) -> Recording:
    """Render ``parts`` into ``path`` (any container ffmpeg writes) and return marker positions."""
    samples, markers = render(parts)
    write_audio(samples, path, out_rate=out_rate, channels=channels, codec_args=codec_args)
    return Recording(path, markers)


def marker_talk(markers: Sequence[int], pause_s: float = 0.8) -> list[Part]:
    """Speech paragraphs interleaved with markers ``markers``, each marker between two pauses."""
    parts: list[Part] = []
    for i, k in enumerate(markers):
        parts += [
            Speech(PARAGRAPHS[i % len(PARAGRAPHS)]),
            Silence(pause_s),
            Marker(k),
            Silence(pause_s),
        ]
    parts.append(Speech(PARAGRAPHS[len(markers) % len(PARAGRAPHS)]))
    return parts


def loop_to(source: Path, path: Path, seconds: float) -> Path:
    """Repeat ``source`` until it lasts ``seconds``, without re-encoding (stream copy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-nostdin",
            "-y",
            "-stream_loop",
            "-1",
            "-i",
            str(source),
            "-t",
            f"{seconds:.3f}",
            "-map",
            "0:a",
            "-c",
            "copy",
            str(path),
        ],
        capture_output=True,
        check=True,
    )
    return path


def duration_s(path: Path) -> float:
    """Duration ffprobe reports for ``path``."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        capture_output=True,
        check=True,
    )
    return float(json.loads(done.stdout)["format"]["duration"])


def have_tools() -> bool:
    return all(shutil.which(tool) for tool in ("espeak-ng", "ffmpeg", "ffprobe"))
