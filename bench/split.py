"""Split benchmark: FfmpegAudio.split against one bare ffmpeg decode of the same file.

    .venv/bin/python -m bench.split [--hours 3] [--memory-hours 3,10] [--window-minutes 30]

Builds (and caches under bench/.cache/) a 44.1 kHz stereo 128 kbps MP3 of N hours by looping a
few minutes of generated speech, then:

1. the physical limit: one bare ``ffmpeg -i FILE -f null -`` decode of it (best of two);
2. ``FfmpegAudio.split`` with 30-min windows (one decode pass plus the FLAC encoding), and the
   ratio split / bare decode (goal ≤ 1.3);
3. for each ``--memory-hours`` length, the peak RSS of the whole splitting process tree (python
   plus its ffmpeg children), polled from /proc while a child process splits (goal: flat, under
   300 MB).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def base_talk() -> Path:
    """A few minutes of generated speech as 44.1 kHz stereo MP3 (the unit that gets looped)."""
    from tests.data.make_sample import talk_parts
    from tests.speech import PARAGRAPHS, Silence, Speech, build_recording

    path = CACHE / "talk-base.mp3"
    if not path.exists():
        parts = talk_parts() + [p for text in PARAGRAPHS for p in (Speech(text), Silence(1.0))]
        build_recording(
            parts * 2,
            path,
            out_rate=44_100,
            channels=2,
            codec_args=["-c:a", "libmp3lame", "-b:a", "128k"],
        )
    return path


def long_talk(hours: float) -> Path:
    from tests.speech import loop_to

    path = CACHE / f"talk-{hours:g}h.mp3"
    if not path.exists():
        print(f"building {path.name} ...", flush=True)
        partial = path.with_suffix(".part.mp3")
        loop_to(base_talk(), partial, hours * 3600)
        partial.rename(path)
    return path


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_decode(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one bare ``ffmpeg -i FILE -f null -`` decode."""
    cpu, start = _children_cpu_s(), time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-f", "null", "-"], check=True)
    return time.perf_counter() - start, _children_cpu_s() - cpu


def split_once(path: Path, window_s: float) -> tuple[float, float, int]:
    """Wall and CPU seconds (python and ffmpeg children) of one split, and the window count."""
    from tests.tiling import check_coverage
    from workers.audio import FfmpegAudio

    with tempfile.TemporaryDirectory(dir=CACHE) as out:
        cpu = _children_cpu_s() + _self_cpu_s()
        start = time.perf_counter()
        windows = list(FfmpegAudio().split(str(path), Path(out), window_s))
        elapsed = time.perf_counter() - start
        cpu = _children_cpu_s() + _self_cpu_s() - cpu
        check_coverage([(w.start_s, w.end_s) for w in windows], window_s)
    return elapsed, cpu, len(windows)


def _tree_memory(root: int) -> tuple[int, int]:
    """RSS and PSS bytes of ``root`` and all its descendants, from /proc.

    RSS counts shared libraries once per process (the ffmpeg processes share most of theirs), so
    the PSS sum, which splits shared pages between the processes using them, is the fairer total.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def peak_tree_memory(cmd: list[str]) -> tuple[int, int, float]:
    """Peak RSS and PSS (bytes) of the process tree running ``cmd``, and how long it took."""
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1])
    peak_rss = peak_pss = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak_rss, peak_pss
        while not done.is_set():
            rss, pss = _tree_memory(proc.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    start = time.perf_counter()
    watcher.start()
    rc = proc.wait()
    elapsed = time.perf_counter() - start
    done.set()
    watcher.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed with status {rc}")
    return peak_rss, peak_pss, elapsed


def long_input_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options of the benchmarks that run on long looped recordings."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--memory-hours", default="3,10")
    parser.add_argument("--window-minutes", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = long_input_arguments(__doc__).parse_args()
    window_s = args.window_minutes * 60
    CACHE.mkdir(exist_ok=True)
    if args.child:
        split_once(Path(args.child), window_s)
        return

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ffmpeg_version = subprocess.run(
        ["ffmpeg", "-version"], capture_output=True, text=True, check=True
    ).stdout.split("\n")[0]
    print(f"date: {datetime.date.today()}  machine: {cpu}, {os.cpu_count()} cores")
    print(f"{ffmpeg_version}; python {platform.python_version()}")

    path = long_talk(args.hours)
    size_mb = path.stat().st_size / 1e6
    print(f"input: {path.name}, {args.hours:g} h, 44.1 kHz stereo MP3 128 kbps, {size_mb:.0f} MB")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    # Alternate the two so that a burst of load elsewhere on the machine hits both alike.
    bare, split, count = (float("inf"), 0.0), (float("inf"), 0.0), 0
    for _ in range(args.rounds):
        bare = min(bare, bare_decode(path))
        wall, split_cpu, count = split_once(path, window_s)
        split = min(split, (wall, split_cpu))
    print(
        f"bare decode (ffmpeg -i FILE -f null -), best of {args.rounds}: "
        f"{bare[0]:.1f} s wall, {bare[1]:.1f} s CPU"
    )
    print(
        f"FfmpegAudio.split, {args.window_minutes:g}-min windows, best of {args.rounds}: "
        f"{split[0]:.1f} s wall, {split[1]:.1f} s CPU (all processes), {count} windows"
    )
    print(
        f"ratio split / bare decode: {split[0] / bare[0]:.2f} wall (goal <= 1.30), "
        f"{split[1] / bare[1]:.2f} CPU"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    for hours in (float(h) for h in args.memory_hours.split(",") if h):
        child = [sys.executable, "-m", "bench.split", "--child", str(long_talk(hours))]
        rss, pss, elapsed = peak_tree_memory([*child, "--window-minutes", str(args.window_minutes)])
        print(
            f"peak memory of the splitting process tree, {hours:g} h input: "
            f"RSS {rss / 2**20:.0f} MiB, PSS {pss / 2**20:.0f} MiB "
            f"(split took {elapsed:.1f} s)  (goal: flat, < 300 MB)"
        )
    free = shutil.disk_usage(CACHE).free / 1e9
    print(f"(cache: {CACHE}, {free:.0f} GB free)")


if __name__ == "__main__":
    main()
