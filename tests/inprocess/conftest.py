"""The in-process tier: the pipeline's steps called directly, on SQLite, local storage, real ffmpeg
on short generated tones, and a fake engine that hears the marker tones (tests/markers.py).

No broker, no server, no subprocess of ours: fast enough to run before every commit (``make fast``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from jobs.db import Database
from jobs.engine import Capabilities
from jobs.errors import EngineRejected, TranscriptCut, WindowTooLarge
from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.steps.next import Step
from jobs.storage import LocalStorage
from tests.markers import detect, words
from tests.speech import Marker, Recording, Silence, build_recording, decode
from workers.audio import FfmpegAudio

# Six markers, 25 s apart: 150 s of tones in silence, three windows of at most one minute.
MARKERS = [1, 2, 3, 4, 5, 6]


class FakeEngine:
    """Hears the marker tones in the audio it is sent; refuses what its rules say it refuses."""

    name = "fake"
    model = "fake-model"
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.max_s: float | None = None  # refuse longer audio the way vLLM does (WindowTooLarge)
        self.reject_markers: set[int] = set()  # permanent refusal of audio holding these markers
        self.cut_markers: set[int] = set()  # transcripts of audio holding these reach the token cap
        self.calls: list[tuple[str, list[int]]] = []
        self.summary_prompts: list[str] = []
        self.completions = 0  # text-only calls (the overall summary, merges)
        self._lock = threading.Lock()
        self._decoded: dict[tuple[str, int], np.ndarray] = {}

    def max_audio_s(self) -> float | None:
        return None  # learned from refusals only, as against a server with unknown caps

    def _hear(self, op: str, audio: Path) -> list[int]:
        # The summary pass hears the same file as the transcript pass: decode it once.
        key = (str(audio), audio.stat().st_mtime_ns)
        if key not in self._decoded:
            self._decoded[key] = decode(audio)
        samples = self._decoded[key]
        seconds = len(samples) / 16_000
        if self.max_s is not None and seconds > self.max_s + 0.5:
            raise WindowTooLarge(f"{seconds:.0f} s is over {self.max_s:.0f} s", max_duration_s=self.max_s)
        heard, _ = detect(samples)
        with self._lock:
            self.calls.append((op, heard))
        if self.reject_markers & set(heard):
            raise EngineRejected("the fake server refuses this audio")
        return heard

    def transcribe(self, audio: Path, language: str | None, vocabulary: tuple[str, ...] = ()) -> str:
        heard = self._hear("transcribe", audio)
        if self.cut_markers & set(heard):
            raise TranscriptCut("the transcript reached its cap of 512 tokens", words(heard))
        return words(heard)

    def summarize_audio(self, audio: Path, prompt: str) -> str:
        with self._lock:
            self.summary_prompts.append(prompt)
        return "summary of " + words(self._hear("summarize", audio))

    def complete(self, prompt: str) -> str:
        with self._lock:
            self.completions += 1
        return "overall summary"

    def transcribed(self) -> list[int]:
        return [k for op, heard in self.calls if op == "transcribe" for k in heard]


@dataclass
class RecordingDispatcher:
    """Stands in for ``workers.dispatch.Dispatcher``: keeps the steps instead of sending them."""

    broker_url: str = "redis://unused"
    sent: list[Step] = field(default_factory=list)

    def send(self, step: Step, retry: bool = True, priority: int = 0) -> None:
        self.sent.append(step)

    def send_all(self, steps: list[Step]) -> None:
        self.sent.extend(steps)

    def send_sweep(self, expires_s: float) -> None:
        pass


@pytest.fixture(scope="session")
def tones(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    parts: list[Marker | Silence] = [Silence(4.0)]
    for k in MARKERS:
        parts += [Marker(k), Silence(24.0)]
    return build_recording(parts, tmp_path_factory.mktemp("inprocess") / "tones.flac")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_runtime(tmp_path: Path, engine: FakeEngine) -> Callable[..., Runtime]:
    def make(**settings: object) -> Runtime:
        s = Settings(data_dir=tmp_path / "data", window_minutes=1, lease_seconds=30, **settings)  # type: ignore[arg-type]
        db = Database(s.resolved_database_url())
        db.migrate()
        return Runtime(
            db=db,
            storage=LocalStorage(tmp_path / "store"),
            audio=FfmpegAudio(),
            settings=s,
            engine_factory=lambda: engine,
        )

    return make


@pytest.fixture
def rt(make_runtime: Callable[..., Runtime]) -> Runtime:
    return make_runtime()
