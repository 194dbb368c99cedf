"""Fan-out benchmark: N windows on a gpu worker of concurrency C against a stand-in engine of fixed latency.

    .venv/bin/python -m bench.fanout [--windows 16] [--concurrency 4] [--latency 1.0]

Starts a real redis-server, the stand-in vLLM server (every request sleeps ``--latency`` s), one
cpu worker and one gpu worker (threads pool, ``--concurrency`` C) as ``voxbatch worker`` processes,
and submits one job of N one-minute windows (the marker talk looped to N minutes). Then:

1. the physical limit, measured in the same run: L, the time one window takes when the engine is
   called directly for it, alone (transcription + summary, two requests);
2. the window phase's wall time (first window started → last window done, from the job's rows)
   against the ideal ceil(N/C)·L: efficiency = ideal / wall (goal ≥ 0.9);
3. orchestration overhead per window: (wall − ideal) / ceil(N/C), in ms (queueing, leases,
   database writes, storage, fan-in).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOXBATCH = str(Path(sys.executable).with_name("voxbatch"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per engine request")
    args = parser.parse_args()

    from jobs.settings import Settings
    from tests.fixtures.services import RedisServer, free_port, wait_until
    from tests.speech import build_recording, loop_to, marker_talk
    from tests.standins.vllm_server import StandInVLLM
    from workers.runtime import build_runtime

    with tempfile.TemporaryDirectory(prefix="voxbatch-fanout-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "redis").mkdir()
        redis = RedisServer(tmp / "redis", free_port())
        redis.start()
        base = build_recording(marker_talk(list(range(12))), tmp / "talk.wav").path
        recording = loop_to(base, tmp / "long.wav", args.windows * 60.0 - 5.0)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            with StandInVLLM(latency_s=args.latency) as vllm:
                env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
                env.update(
                    VOXBATCH_DATA_DIR=str(tmp / "data"),
                    VOXBATCH_BROKER_URL=redis.url,
                    VOXBATCH_ENGINE="vllm",
                    VOXBATCH_VLLM_URL=vllm.url,
                )
                settings = Settings(
                    data_dir=tmp / "data", broker_url=redis.url, engine="vllm", vllm_url=vllm.url
                )
                rt = build_runtime(settings)
                logs = []
                for queues, conc in (("cpu", 1), ("gpu", args.concurrency)):
                    log = (tmp / f"{queues}.log").open("wb")
                    logs.append(tmp / f"{queues}.log")
                    procs.append(
                        subprocess.Popen(
                            [
                                VOXBATCH,
                                "worker",
                                "--queues",
                                queues,
                                "--concurrency",
                                str(conc),
                                "--loglevel",
                                "WARNING",
                            ],
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                time.sleep(1.0)
                submitted = subprocess.run(
                    [VOXBATCH, "submit", str(recording), "--window-minutes", "1"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                job_id = submitted.stdout.strip().splitlines()[-1]
                wait_until(
                    lambda: str(rt.store.get(job_id).status) in ("succeeded", "failed"), 600, "the job", 0.5
                )
                job = rt.store.get(job_id)
                if job.status != "succeeded":
                    sys.exit(f"job failed: {job.error}")
                windows = rt.store.windows(job_id)

                # The physical limit: one window, alone, straight to the engine.
                engine = rt.engine
                audio = tmp / "w0.flac"
                rt.storage.download(windows[0].audio_key, audio)
                singles = []
                for _ in range(2):
                    t0 = time.monotonic()
                    engine.transcribe(audio, None)
                    engine.summarize_audio(audio, "Summarize.")
                    singles.append(time.monotonic() - t0)
                single = min(singles)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
            redis.stop()

    n, c = len(windows), args.concurrency
    starts = [w.started_at for w in windows if w.started_at]
    ends = [w.finished_at for w in windows if w.finished_at]
    wall = (max(ends) - min(starts)).total_seconds()
    waves = math.ceil(n / c)
    ideal = waves * single
    print(f"windows N={n}, gpu concurrency C={c}, engine latency {args.latency:.2f} s/request")
    print(f"physical limit L (one window alone, 2 requests): {single:.3f} s")
    print(f"window phase wall time: {wall:.2f} s; ideal ceil(N/C)·L = {waves}·{single:.3f} = {ideal:.2f} s")
    print(f"efficiency ideal/wall: {ideal / wall:.3f} (goal >= 0.9)")
    print(f"orchestration overhead per window: {(wall - ideal) / waves * 1000:.0f} ms")
    total = (job.finished_at - job.created_at).total_seconds() if job.finished_at else float("nan")
    print(
        f"whole job (submit → documents): {total:.2f} s, of which split "
        f"{(job.split_finished_at - job.split_started_at).total_seconds():.2f} s"
    )


if __name__ == "__main__":
    main()
