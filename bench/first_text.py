"""Time to first text: how soon a long upload's transcript starts to arrive, against the whole job.

    .venv/bin/python -m bench.first_text [--hours 3] [--gpu-time-scale 1.0]

Starts a real redis-server, the stand-in vLLM server in its GPU mode (in this process: every
answer is held until a modelled H100 with continuous batching would have finished it,
tests/standins/gpu_model.py), one cpu worker, one gpu worker and the API (``voxbatch api``), then
uploads the generated marker talk looped to ``--hours`` (44.1 kHz stereo MP3) through ``POST /v1/jobs``
and reads ``GET /v1/jobs/{id}/events`` from the moment the upload is answered 202:

* first text: seconds from the 202 to the first ``segment`` event;
* whole job: seconds from the 202 to the ``document`` event;
* the ratio of the two, measured in the same run (goal: ≤ 5 %, and the first text within 15 s).

The first text can come before the split has decoded the whole file only because the split
registers each window as it is cut (jobs/steps/split.py) and the meter sends it at once; the
split's own duration is printed beside the figures to show it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.split import CACHE

VOXBATCH = str(Path(sys.executable).with_name("voxbatch"))


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "event" in fields:
                yield fields["event"], json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":") and ": " in line:
            name, value = line.split(": ", 1)
            fields[name] = value


def marker_talk_mp3(hours: float) -> Path:
    """The generated marker talk (speech and marker tones the stand-in transcribes) as 44.1 kHz
    stereo MP3, looped to ``hours`` without re-encoding."""
    from tests.speech import build_recording, loop_to, marker_talk

    path = CACHE / f"marker-talk-{hours:g}h.mp3"
    if not path.exists():
        base = CACHE / "marker-talk.mp3"
        if not base.exists():
            build_recording(
                marker_talk(list(range(12))),
                base,
                out_rate=44_100,
                channels=2,
                codec_args=["-c:a", "libmp3lame", "-b:a", "96k"],
            )
        partial = path.with_suffix(".part.mp3")
        loop_to(base, partial, hours * 3600)
        partial.rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument(
        "--gpu-time-scale", type=float, default=1.0, help="modelled GPU seconds per wall second"
    )
    parser.add_argument("--gpu-concurrency", type=int, default=16, help="windows the gpu worker runs at once")
    args = parser.parse_args()

    from tests.fixtures.services import RedisServer, free_port, wait_until
    from tests.standins.vllm_server import StandInVLLM
    from workers.runtime import build_runtime

    recording = marker_talk_mp3(args.hours)
    with tempfile.TemporaryDirectory(prefix="voxbatch-first-text-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "redis").mkdir()
        redis = RedisServer(tmp / "redis", free_port())
        redis.start()
        standin = StandInVLLM(gpu=True, gpu_time_scale=args.gpu_time_scale)
        try:
            standin.__enter__()
        except BaseException:
            redis.stop()
            raise
        vllm_url = standin.url
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
        env.update(
            VOXBATCH_DATA_DIR=str(tmp / "data"),
            VOXBATCH_BROKER_URL=redis.url,
            VOXBATCH_ENGINE="vllm",
            VOXBATCH_VLLM_URL=vllm_url,
            VOXBATCH_MAX_UPLOAD_MB="2000",
        )
        procs: list[subprocess.Popen[bytes]] = []
        try:
            key = subprocess.run(
                [VOXBATCH, "keys", "create", "bench"],
                env=env,
                cwd=tmp,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
            logs: list[Path] = []
            for queues, conc in (("cpu", 1), ("gpu", args.gpu_concurrency)):
                log = tmp / f"{queues}.log"
                logs.append(log)
                with log.open("wb") as out:
                    procs.append(
                        subprocess.Popen(
                            [VOXBATCH, "worker", "--queues", queues, "--concurrency", str(conc)],
                            env=env,
                            cwd=tmp,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            port = free_port()
            with (tmp / "api.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [VOXBATCH, "api", "--port", str(port)],
                        env=env,
                        cwd=tmp,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                try:
                    api_ok = httpx.get(url + "/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    api_ok = False
                return api_ok and all(" ready." in log.read_text(errors="replace") for log in logs)

            wait_until(up, 120, "the API and the workers", 0.2)
            size_mb = recording.stat().st_size / 1e6
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=None
            ) as client:
                posted = time.monotonic()
                with recording.open("rb") as f:
                    answer = client.post("/v1/jobs", files={"file": (recording.name, f, "audio/mpeg")})
                accepted = time.monotonic()
                if answer.status_code != 202:
                    sys.exit(f"upload refused: {answer.status_code} {answer.text[:300]}")
                job_id = answer.json()["id"]
                first: float | None = None
                done: float | None = None
                segments = 0
                with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
                    for kind, data in events(stream):
                        if kind == "segment":
                            segments += 1
                            if first is None:
                                first = time.monotonic() - accepted
                        elif kind == "document":
                            done = time.monotonic() - accepted
                            break
                        elif kind == "error":
                            sys.exit(f"job {job_id} {data['status']}: {data.get('reason')}")
            if done is None:
                tail = (tmp / "api.log").read_text()[-3000:]
                sys.exit(f"the event stream ended early; the API's log ends:\n{tail}")
            settings_env = {
                k[len("VOXBATCH_") :].lower(): v for k, v in env.items() if k.startswith("VOXBATCH_")
            }
            from jobs.settings import Settings

            rt = build_runtime(Settings(**settings_env))  # type: ignore[arg-type]
            job = rt.store.get(job_id)
            windows = rt.store.windows(job_id)
            split_s = (
                (job.split_finished_at - job.split_started_at).total_seconds()
                if job.split_finished_at and job.split_started_at
                else float("nan")
            )
            first_window = min(
                ((w.finished_at - job.created_at).total_seconds() for w in windows if w.finished_at),
                default=float("nan"),
            )
            # Where the first text's seconds went, from the rows and the stored files' times.
            w0 = windows[0]
            store = tmp / "data" / "store"
            first_file = min(
                (p.stat().st_mtime for p in store.glob(f"jobs/{job_id}/windows/0000/segments/*.json")),
                default=float("nan"),
            )
            made = job.created_at.timestamp()
            steps = {
                "split started": job.split_started_at,
                "window 0 sent to the gpu queue": w0.dispatched_at,
                "window 0 taken by the gpu worker": w0.started_at,
            }
            breakdown = [(k, v.timestamp() - made) for k, v in steps.items() if v is not None]
            breakdown.append(("first segment stored", first_file - made))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
            standin.__exit__(None, None, None)
            redis.stop()

    if first is None or done is None:
        sys.exit("no segment had any text: nothing to measure")
    ratio = first / done
    print(f"recording: {args.hours:g} h, {size_mb:.0f} MB MP3, {len(windows)} windows, {segments} segments")
    print(f"upload (POST until 202): {accepted - posted:.2f} s")
    print(f"first text (202 -> first segment event): {first:.2f} s (goal <= 15 s)")
    print(
        f"whole job (202 -> document event): {done:.2f} s; split {split_s:.2f} s, "
        f"first window done {first_window:.2f} s after the job was made"
    )
    print(f"time to first text / whole job: {ratio * 100:.2f} % (goal <= 5 %)")
    print("first text, step by step (seconds after the job row was made):")
    for what, at in breakdown:
        print(f"  {what}: {at:.2f} s")


if __name__ == "__main__":
    main()
