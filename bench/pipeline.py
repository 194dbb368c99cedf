"""Whole-pipeline benchmark: `voxbatch run`'s steps with an instant engine, against a bare decode.

    .venv/bin/python -m bench.pipeline [--hours 3] [--memory-hours 3,10]

The engine answers at once, so what is measured is everything voxbatch itself does for a
recording: probe, the single-pass split, storing windows, the database rows, finding each
window's speech segments (from the samples the split hands over, or its FLAC read back when the
model thread was busy), one WAV and one stored result per segment, window results, the reduce and
the documents. The physical limit is one
bare ``ffmpeg -i FILE -f null -`` decode of the same file in the same run (goal: ratio ≤ 1.3).
Peak memory is the RSS of the whole process tree (python and its ffmpeg children), polled from
/proc while a child process runs the pipeline on 3 h and 10 h inputs (goal: flat, under 300 MB).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from bench.split import CACHE, bare_decode, long_input_arguments, long_talk, peak_tree_memory
from jobs.engine import Capabilities


class InstantEngine:
    """Answers immediately: the benchmark measures voxbatch, not a model."""

    name = "instant"
    model = "none"
    capabilities = Capabilities()

    def max_audio_s(self) -> float | None:
        return None

    def transcribe(self, audio: Path, language: str | None, vocabulary: tuple[str, ...] = ()) -> str:
        return f"words of {audio.name}"

    def summarize_audio(self, audio: Path, prompt: str) -> str:
        return "a summary"

    def complete(self, prompt: str) -> str:
        return "the overall summary"


def run_once(path: Path, window_minutes: float) -> tuple[float, int]:
    """Wall seconds of the whole pipeline on ``path`` in fresh storage, and the window count."""
    from jobs.db import Database
    from jobs.options import JobOptions
    from jobs.runtime import Runtime
    from jobs.settings import Settings
    from jobs.steps.create import create_job
    from jobs.steps.local import run_local
    from jobs.storage import LocalStorage
    from workers.audio import FfmpegAudio

    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        settings = Settings(data_dir=Path(tmp))
        db = Database(settings.resolved_database_url())
        db.migrate()
        rt = Runtime(
            db=db,
            storage=LocalStorage(Path(tmp) / "store"),
            audio=FfmpegAudio(),
            settings=settings,
            engine_factory=InstantEngine,
        )
        start = time.perf_counter()
        job = create_job(rt, str(path), JobOptions(window_minutes=window_minutes))
        job = run_local(rt, job.id)
        elapsed = time.perf_counter() - start
        assert job.status == "succeeded", job.error
        assert rt.storage.exists(job.output_prefix + "document.md")
        return elapsed, job.windows_total or 0


def main() -> None:
    args = long_input_arguments(__doc__).parse_args()
    CACHE.mkdir(exist_ok=True)
    if args.child:
        run_once(Path(args.child), args.window_minutes)
        return

    path = long_talk(args.hours)
    print(
        f"input: {path.name}, {args.hours:g} h, 44.1 kHz stereo MP3, "
        f"{path.stat().st_size / 1e6:.0f} MB; {os.cpu_count()} cores"
    )
    bare, run, windows = float("inf"), float("inf"), 0
    for _ in range(args.rounds):
        bare = min(bare, bare_decode(path)[0])
        elapsed, windows = run_once(path, args.window_minutes)
        run = min(run, elapsed)
    print(f"bare decode, best of {args.rounds}: {bare:.1f} s")
    print(f"whole pipeline with an instant engine, best of {args.rounds}: {run:.1f} s, {windows} windows")
    print(f"ratio pipeline / bare decode: {run / bare:.2f} (goal <= 1.30)")
    for hours in (float(h) for h in args.memory_hours.split(",") if h):
        child = [sys.executable, "-m", "bench.pipeline", "--child", str(long_talk(hours))]
        rss, pss, elapsed = peak_tree_memory([*child, "--window-minutes", str(args.window_minutes)])
        print(
            f"peak memory of the pipeline's process tree, {hours:g} h input: RSS {rss / 2**20:.0f} MiB, "
            f"PSS {pss / 2**20:.0f} MiB ({elapsed:.0f} s; goal: flat, < 300 MB)"
        )


if __name__ == "__main__":
    main()
