"""Speech segments: modelled GPU time, the client's CPU per segment, and how full it keeps a server.

    .venv/bin/python -m bench.segments [--minutes 30] [--hours 3]

1. Modelled GPU time for a talk of ``--hours`` (the generated talk looped; each 30-minute window
   like the one measured), with the figures in tests/standins/gpu_model.py (one H100, Voxtral-Small
   shapes): one transcription request per window vs one per speech segment. Goal: ≥ 5x less.
2. voxbatch's own CPU per segment: finding the segments, writing each one's WAV and sending it
   through the real vLLM client to a stand-in that answers at once (a separate process, so its
   CPU is not counted); ours includes the client's children. Goal: < 20 ms per segment.
3. Efficiency against the modelled GPU: the same segments sent to the stand-in in GPU mode (it
   holds each answer until the model says the batch would finish it); the ideal is the model's
   time for the same requests arriving at once. Efficiency = ideal / achieved wall time.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.split import CACHE, long_talk


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _window(minutes: float) -> Path:
    """One window of the generated talk: 16 kHz mono FLAC, as the splitter writes them."""
    path = CACHE / f"window-{minutes:g}min.flac"
    if not path.exists():
        source = long_talk(max(1.0, minutes / 60))
        subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(source), "-t", str(minutes * 60),
             "-ac", "1", "-ar", "16000", "-c:a", "flac", str(path)],
            check=True,
        )  # fmt: skip
    return path


def _standin(gpu: bool, scale: float = 1.0) -> tuple[subprocess.Popen[bytes], str]:
    from tests.fixtures.s3 import free_port

    port = free_port()
    args = [sys.executable, "-m", "tests.standins.vllm_server", "--port", str(port)]
    if gpu:
        args += ["--gpu", "--gpu-time-scale", str(scale)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                return proc, f"{url}/v1"
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the stand-in did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the measured window")
    parser.add_argument("--hours", type=float, default=3.0, help="length of the modelled talk")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--gpu-time-scale",
        type=float,
        default=1.0,
        help="slow the modelled GPU down (the stand-in decodes every request on this machine's CPU)",
    )
    args = parser.parse_args()

    from jobs.segmenting import SAMPLE_RATE, segment_samples
    from jobs.settings import Settings
    from jobs.steps.segments import wav_bytes
    from tests.standins.gpu_model import GpuModel, GpuRequest, compare_windows_and_segments
    from workers.audio import FfmpegAudio
    from workers.engines.vllm import VLLMEngine

    window = _window(args.minutes)
    samples = FfmpegAudio().read_samples(window)
    cpu0 = _cpu_s()
    segments = segment_samples(samples, SAMPLE_RATE)
    find_ms = (_cpu_s() - cpu0) * 1000
    window_s = len(samples) / SAMPLE_RATE
    speech_s = sum(s.speech_s for s in segments)
    print(f"window: {window_s / 60:.1f} min, {len(segments)} segments, {speech_s / window_s:.0%} speech, "
          f"segmenting took {find_ms:.0f} ms CPU")  # fmt: skip

    # 1. Modelled GPU time for the whole talk.
    per_talk = args.hours * 3600 / window_s
    windows = [GpuRequest(window_s, speech_s)] * round(per_talk)
    segs = [GpuRequest(s.duration_s, s.speech_s) for s in segments] * round(per_talk)
    modelled = compare_windows_and_segments(windows, segs)
    print(
        f"modelled GPU time for {args.hours:g} h: one request per window {modelled['windows_s']:.0f} s, "
        f"per segment {modelled['segments_s']:.0f} s: {modelled['speedup']:.1f}x less (goal ≥ 5x)"
    )

    def send_all(url: str) -> tuple[float, float]:
        engine = VLLMEngine(Settings(engine="vllm", vllm_url=url))
        with tempfile.TemporaryDirectory() as tmp:

            def one(n: int) -> str:
                seg = segments[n]
                path = Path(tmp) / f"{n}.wav"
                path.write_bytes(
                    wav_bytes(samples[round(seg.start_s * SAMPLE_RATE) : round(seg.end_s * SAMPLE_RATE)])
                )
                return engine.transcribe(path, None)

            cpu, start = _cpu_s(), time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(one, range(len(segments))))
            return time.perf_counter() - start, _cpu_s() - cpu

    # 2. CPU per segment against an instant server.
    proc, url = _standin(gpu=False)
    try:
        wall, cpu = send_all(url)
    finally:
        proc.terminate()
        proc.wait()
    per_segment_ms = (cpu * 1000 + find_ms) / len(segments)
    print(f"voxbatch CPU per segment: {per_segment_ms:.1f} ms (goal < 20 ms); "
          f"{len(segments)} segments in {wall:.1f} s wall")  # fmt: skip

    # 3. Efficiency against the modelled GPU.
    proc, url = _standin(gpu=True, scale=args.gpu_time_scale)
    try:
        wall, _ = send_all(url)
        stats = httpx.get(url.removesuffix("/v1") + "/stats", timeout=10).json().get("gpu", {})
    finally:
        proc.terminate()
        proc.wait()
    ideal = GpuModel().ideal_s([GpuRequest(s.duration_s, s.speech_s) for s in segments]) * args.gpu_time_scale
    print(
        f"one window's segments on the modelled GPU (time x{args.gpu_time_scale:g}): "
        f"achieved {wall:.1f} s, ideal {ideal:.1f} s: "
        f"efficiency {ideal / wall:.2f} (goal ≥ 0.9); most in flight: {stats.get('max_active')}"
    )


if __name__ == "__main__":
    main()
