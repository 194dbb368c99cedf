"""A hundred recordings at once in the S3 drop folder (issue 25, item 4).

    .venv/bin/python -m bench.storm [--recordings 120] [--clips 8] [--gpu-cost-scale 1]
        [--watch-interval 10] [--kill-after 30] [--timeout 1800] [--events]
    .venv/bin/python -m bench.storm --scan 10000

On the real parts: PostgreSQL, redis-server, a moto S3 server (``python -m moto.server``, as
tests/fixtures/s3.py starts it), ``voxbatch api``, one cpu worker (``--concurrency 2``), one gpu
worker (default settings), the stand-in vLLM server in GPU mode (fast: no decoding), and **two**
``voxbatch watch`` processes on one inbox. Then:

1. Alone: the API tenant posts its ``--clips`` 2-minute clips at once, nothing else running; each
   clip's time (upload start to the job's ``finished_at``) is its time alone.
2. The storm: the stand-in's counters reset; ``--recordings`` distinct 2-minute recordings
   (bench/stack.py: the looped talk, each with its own gain wobble) are copied into
   ``inbox/storm/`` at once, with the AWS CLI when it is installed (else boto3, and it says so);
   meanwhile the API tenant posts its clips again (a 429 is answered by waiting Retry-After).
   Once ``--kill-after`` seconds have passed (or a quarter of the recordings are submitted), and
   while a recording is claimed but not yet submitted, watcher 1, the one busy submitting, is
   SIGKILLed (its whole process group) and started again.
3. Every recording's ``document.json`` is waited for in the outbox (or ``--timeout``).

``--events``: the inbox also sends its ``ObjectCreated`` events to an SQS queue on the moto server,
and both watchers consume it (``VOXBATCH_DROP_SQS_QUEUE_URL``): recordings are taken as they land
instead of at the next scan, which is up to ``--watch-interval`` later.

Printed: drain time (drop to last document), throughput efficiency (the same model requests
replayed through the same GPU model, all present at t = 0, over the achieved span, as in
bench/fleet.py), the straggler gap (last document minus the 99th percentile), duplicates (jobs
beyond one per recording), lost (recordings without a document at the end), and the API tenant's
time during the storm over its time alone (median and worst clip). Goals (issue 25): efficiency
≥ 0.8, straggler gap ≤ 30 s, 0 duplicates, 0 lost, API tenant ≤ 2x alone.

``--scan N``: an inbox already holding N ingested recordings (tiny objects, their ledger rows
present in PostgreSQL): one full scan by the watcher, timed in a process of its own, and that
process's peak memory (VmHWM). Goals: 10,000 objects in under 10 s and 200 MB.

``run_storm`` is also what tests/watcher/test_storm.py calls with N = 20, K = 2 (exactly once and
nothing lost, never a time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stack import VOXBATCH, Stack, StandIn, Submitted, as_epoch, distinct_recording, free_port, scratch

AWS = shutil.which("aws") or str(Path(sys.executable).with_name("aws"))
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
CLIP_SEED = 5000
STORM_SEED = 100
RECORDING_S = 120.0


@dataclass
class StormResult:
    recordings: int
    copied_with: str
    copy_s: float
    drain_s: float | None
    documents: dict[str, float]  # key -> seconds after the drop its document.json appeared
    lost: list[str]
    jobs_per_recording: dict[str, int]
    api_alone_s: list[float]
    api_storm_s: list[float]
    api_failed: int
    gpu: dict[str, Any]
    traffic: dict[str, Any]
    killed: dict[str, Any] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return sum(max(0, n - 1) for n in self.jobs_per_recording.values())

    @property
    def straggler_s(self) -> float | None:
        times = sorted(self.documents.values())
        if len(times) < 2:
            return None
        import numpy as np

        return float(times[-1] - np.percentile(times, 99))

    @property
    def efficiency(self) -> float | None:
        return self.gpu["ideal_s"] / self.gpu["span_s"] if self.gpu.get("span_s") else None


class Moto:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **AWS_ENV},
            )
        from bench.stack import wait_http

        wait_http(f"{self.endpoint}/moto-api/", 30, "moto", self.process)

    def client(self, service: str = "s3") -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def copy_into(moto: Moto, folder: Path, bucket: str, prefix: str, config: Path) -> str:
    """Everything in ``folder`` to s3://bucket/prefix at once: the AWS CLI if installed, else boto3."""
    if Path(AWS).exists():
        env = {**os.environ, **AWS_ENV, "AWS_CONFIG_FILE": str(config)}
        subprocess.run(
            [AWS, "--endpoint-url", moto.endpoint, "s3", "cp", str(folder), f"s3://{bucket}/{prefix}",
             "--recursive", "--only-show-errors"],
            env=env,
            check=True,
            timeout=1800,
        )  # fmt: skip
        return "aws s3 cp --recursive"
    s3 = moto.client()
    files = sorted(folder.iterdir())
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda p: s3.upload_file(str(p), bucket, prefix + p.name), files))
    return "boto3 (the AWS CLI is not installed)"


def _outbox_documents(s3: Any, bucket: str, prefix: str) -> set[str]:
    found = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"outbox/{prefix}"):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/document.json"):
                found.add(key[len("outbox/") : -len("/document.json")])
    return found


def _pending_claims(stack: Stack, bucket: str) -> int:
    from sqlalchemy import text

    with stack.runtime().db.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM dropobject WHERE bucket = :b AND job_id IS NULL AND error IS NULL"
                ),
                {"b": bucket},
            ).scalar_one()
        )


def _jobs_per_source(stack: Stack, bucket: str) -> dict[str, int]:
    from sqlalchemy import text

    with stack.runtime().db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT source, count(*) FROM job WHERE source LIKE :p GROUP BY source"),
            {"p": f"s3://{bucket}/inbox/storm/%"},
        ).all()
    return {str(source): int(n) for source, n in rows}


def _post_clips(stack: Stack, clips: list[Path], tenant: str) -> list[Submitted]:
    with ThreadPoolExecutor(len(clips)) as pool:
        return list(pool.map(lambda p: stack.upload(tenant, p), clips))


def _clip_times(stack: Stack, posted: list[Submitted], timeout_s: float) -> tuple[list[float], int]:
    jobs, _ = stack.wait_ended([s.job_id for s in posted], timeout_s)
    times, failed = [], 0
    for s in posted:
        job = jobs[s.job_id]
        end = as_epoch(job.finished_at)
        if str(job.status) != "succeeded" or end is None:
            failed += 1
        else:
            times.append(end - s.posted_at)
    return times, failed


def _event_queue(moto: Moto, s3: Any, bucket: str) -> str:
    """An SQS queue on the moto server that gets the inbox's ObjectCreated events (event mode)."""
    sqs = moto.client("sqs")
    url = str(sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"])
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule = {"Key": {"FilterRules": [{"Name": "prefix", "Value": "inbox/"}]}}
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"], "Filter": rule}]
        },
    )
    return url


class Watchers:
    """``voxbatch -v watch`` processes; each in its own process group."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}  # watcher -> the log of its first process

    def start(self, i: int) -> None:
        log = self.stack.tmp / f"watch-{i}-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [VOXBATCH, "-v", "watch"],
                env=self.stack.env,
                cwd=self.stack.tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if i < len(self.procs):
            self.procs[i] = proc
        else:
            self.procs.append(proc)
        self.logs.setdefault(i, log)

    def submitted_by(self, i: int) -> int:
        """Recordings the first process of watcher ``i`` submitted (its "drop KEY: job ID" lines)."""
        return len(re.findall(r"drop .+: job [0-9a-f]+$", self.logs[i].read_text(errors="replace"), re.M))

    def kill(self, i: int) -> None:
        os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_storm(
    tmp: Path,
    recordings: int = 120,
    clips: int = 8,
    gpu_cost_scale: float = 1.0,
    watch_interval_s: float = 10.0,
    kill_after_s: float = 30.0,
    timeout_s: float = 1800.0,
    progress: bool = True,
    gpu_concurrency: int | None = None,
    events: bool = False,
    beside_clips_s: float | None = None,
) -> StormResult:
    def say(text: str) -> None:
        if progress:
            print(text, flush=True)

    say(f"building {recordings} recordings and {clips} clips of {RECORDING_S:g} s ...")
    sources = [distinct_recording(RECORDING_S, STORM_SEED + i) for i in range(recordings)]
    clip_files = [distinct_recording(RECORDING_S, CLIP_SEED + i) for i in range(clips)]
    drop = tmp / "drop"
    drop.mkdir()
    for i, source in enumerate(sources):
        os.link(source, drop / f"talk-{i:04d}.flac")
    aws_config = tmp / "aws-config"
    aws_config.write_text("[default]\nregion = us-east-1\ns3 =\n  max_concurrent_requests = 20\n")

    server = StandIn(tmp / "standin.log", cost_scale=gpu_cost_scale).start()
    moto = Moto(tmp / "moto.log")
    bucket = f"storm-{uuid.uuid4().hex[:10]}"
    s3 = moto.client()
    s3.create_bucket(Bucket=bucket)
    queue_url = _event_queue(moto, s3, bucket) if events else None
    watchers: Watchers | None = None
    try:
        env = dict(
            VOXBATCH_DROP_URL=f"s3://{bucket}/inbox/",
            VOXBATCH_OUTBOX_URL=f"s3://{bucket}/outbox/",
            VOXBATCH_S3_ENDPOINT_URL=moto.endpoint,
            VOXBATCH_WATCH_INTERVAL_S=str(watch_interval_s),
            **({"VOXBATCH_GPU_CONCURRENCY": str(gpu_concurrency)} if gpu_concurrency else {}),
            **({"VOXBATCH_DROP_SQS_QUEUE_URL": queue_url} if queue_url else {}),
            **(
                {"VOXBATCH_MAX_AUDIO_BESIDE_CLIPS_S": str(beside_clips_s)}
                if beside_clips_s is not None
                else {}
            ),
            AWS_CONFIG_FILE=str(tmp / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-config"),
            **AWS_ENV,
        )
        with Stack(tmp, server.url, **env) as stack:
            stack.start_api()
            stack.create_key("api-tenant")
            stack.cluster.start_worker("cpu", concurrency=2)
            stack.cluster.start_worker("gpu", concurrency=None)  # default: VOXBATCH_GPU_CONCURRENCY
            say(f"stack up in {tmp}; the API tenant's {clips} clips alone ...")
            alone, alone_failed = _clip_times(stack, _post_clips(stack, clip_files, "api-tenant"), timeout_s)
            say(f"alone: {', '.join(f'{t:.1f}' for t in alone)} s")

            server.reset()
            watchers = Watchers(stack)
            watchers.start(0)
            watchers.start(1)
            time.sleep(1.0)
            say("dropping the recordings ...")
            t_drop = time.time()
            storm_posts: list[Submitted] = []
            clipper = threading.Thread(
                target=lambda: storm_posts.extend(_post_clips(stack, clip_files, "api-tenant")), daemon=True
            )
            clipper.start()
            copied_with = copy_into(moto, drop, bucket, "inbox/storm/", aws_config)
            copy_s = time.time() - t_drop
            say(f"copied in {copy_s:.1f} s with {copied_with}")

            documents: dict[str, float] = {}
            killed: dict[str, Any] = {}
            expected = {f"storm/talk-{i:04d}.flac" for i in range(recordings)}
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                now = time.time()
                for key in _outbox_documents(s3, bucket, "storm/") - documents.keys():
                    documents[key] = now - t_drop
                if not killed:
                    elapsed = now - t_drop
                    busy = watchers.submitted_by(1) >= max(1, recordings // 4)
                    pending = _pending_claims(stack, bucket)
                    if (elapsed >= kill_after_s or busy) and (pending or elapsed >= kill_after_s + 30):
                        watchers.kill(1)
                        killed = {"at_s": round(time.time() - t_drop, 1), "pending_claims": pending,
                                  "submitted_by_victim": watchers.submitted_by(1)}  # fmt: skip
                        watchers.start(1)
                        say(f"SIGKILLed watcher 1 and started it again: {killed}")
                if expected <= documents.keys() and not clipper.is_alive():
                    break
                time.sleep(1.0)
            clipper.join(timeout=max(1.0, deadline - time.monotonic()))
            storm, storm_failed = _clip_times(stack, storm_posts, max(1.0, deadline - time.monotonic()))
            stats = server.stats()
            per_recording = _jobs_per_source(stack, bucket)
            if killed:
                killed["claims_left"] = _pending_claims(stack, bucket)
            watchers.stop()
            watchers = None
    finally:
        if watchers is not None:
            watchers.stop()
        server.stop()
        moto.stop()
    lost = sorted(expected - documents.keys())
    return StormResult(
        recordings=recordings,
        copied_with=copied_with,
        copy_s=copy_s,
        drain_s=max(documents.values()) if not lost and documents else None,
        documents=documents,
        lost=lost,
        jobs_per_recording=per_recording,
        api_alone_s=alone,
        api_storm_s=storm,
        api_failed=alone_failed + storm_failed + (clips - len(storm_posts)),
        gpu=stats.get("gpu", {}),
        traffic=stats["traffic"],
        killed=killed,
    )


def print_storm(result: StormResult, args: argparse.Namespace) -> None:
    def ratio(f: Any) -> str:
        if not result.api_alone_s or not result.api_storm_s:
            return "n/a"
        a, s = f(result.api_alone_s), f(result.api_storm_s)
        return f"{s:.1f} / {a:.1f} = {s / a:.2f}"

    gpu = result.gpu
    drain = f"{result.drain_s:.1f} s" if result.drain_s else "not drained"
    rows = [
        ("recordings dropped", f"{result.recordings} ({result.copied_with}, {result.copy_s:.1f} s)", ""),
        ("watcher SIGKILLed", json.dumps(result.killed), ""),
        ("drain time (drop to last document)", drain, ""),
        ("throughput efficiency ideal/achieved",
         f"{gpu.get('ideal_s', 0):.0f} s / {gpu.get('span_s', 0):.0f} s = "
         + (f"{result.efficiency:.3f}" if result.efficiency else "n/a"), ">= 0.8"),
        ("straggler gap (last - p99)",
         f"{result.straggler_s:.1f} s" if result.straggler_s is not None else "n/a", "<= 30 s"),
        ("duplicates", str(result.duplicates), "0"),
        ("no document by --timeout (lost, or late)", f"{len(result.lost)} {result.lost[:3]}", "0"),
        ("recordings with no job at all", str(result.recordings - len(result.jobs_per_recording)), "0"),
        ("API tenant, median clip: storm / alone", ratio(statistics.median), "<= 2"),
        ("API tenant, worst clip: storm / alone", ratio(max), ""),
        ("API clips failed", str(result.api_failed), "0"),
        ("largest batch / peak in flight",
         f"{gpu.get('max_active')} / {result.traffic['peak_in_flight']}", ""),
        ("longest silence with requests in flight", f"{result.traffic['longest_gap_s']:.1f} s", ""),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print()
    from jobs.settings import Settings

    windows = args.gpu_concurrency or Settings.model_fields["gpu_concurrency"].default
    beside = args.max_audio_beside_clips
    beside = Settings.model_fields["max_audio_beside_clips_s"].default if beside is None else beside
    ratio = Settings.model_fields["audio_beside_clips_ratio"].default
    print(f"storm: {result.recordings} x {RECORDING_S:g} s recordings, {args.clips} API clips, "
          f"GPU costs x{args.gpu_cost_scale:g}, watch interval {args.watch_interval:g} s"
          f"{' and S3 events' if args.events else ''}, gpu worker {windows} windows at once, "
          f"other work's audio beside clips: {ratio:g}x theirs, at most {beside:g} s")  # fmt: skip
    print(f"{'measure':<{width}}  {'value':<44}  goal")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:<44}  {goal}")


SCAN_SNIPPET = r"""
import json, resource, sys, time
from jobs.settings import Settings
from workers.watcher import Watcher, celery_submitter
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
settings = Settings()
db, submit = celery_submitter(settings)
watcher = Watcher(settings, db, submit)
before = hwm()
t0 = time.perf_counter()
report = watcher.scan()
scan_s = time.perf_counter() - t0
print(json.dumps({"scan_s": scan_s, "listed": report.listed, "recordings": report.recordings,
                  "new": report.new, "submitted": len(report.submitted),
                  "hwm_before_mb": before, "hwm_mb": hwm()}))
"""


def run_scan(tmp: Path, objects: int) -> dict[str, Any]:
    """One scan of an inbox holding ``objects`` recordings already ingested."""
    import hashlib

    from sqlalchemy import insert

    from jobs.models import DropObject

    moto = Moto(tmp / "moto.log")
    bucket = f"scan-{uuid.uuid4().hex[:10]}"
    try:
        s3 = moto.client()
        s3.create_bucket(Bucket=bucket)
        body = b"\x00" * 16

        def put(i: int) -> None:
            s3.put_object(
                Bucket=bucket, Key=f"inbox/day-{i // 1000:02d}/talk-{i:05d}.flac", Body=body + str(i).encode()
            )

        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(objects)))
        print(f"{objects} tiny objects put in {time.perf_counter() - t0:.1f} s", flush=True)
        env = dict(
            VOXBATCH_DROP_URL=f"s3://{bucket}/inbox/",
            VOXBATCH_OUTBOX_URL=f"s3://{bucket}/outbox/",
            VOXBATCH_S3_ENDPOINT_URL=moto.endpoint,
            AWS_CONFIG_FILE=str(tmp / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-config"),
            **AWS_ENV,
        )
        with Stack(tmp, "http://127.0.0.1:9/v1", **env) as stack:
            db = stack.runtime().db
            db.migrate()
            rows = [
                {"bucket": bucket, "key": f"inbox/day-{i // 1000:02d}/talk-{i:05d}.flac",
                 "etag": hashlib.md5(body + str(i).encode()).hexdigest(), "size": 16 + len(str(i)),
                 "job_id": f"ingested{i:08d}"}
                for i in range(objects)
            ]  # fmt: skip
            with db.engine.begin() as conn:
                conn.execute(insert(DropObject), rows)
            done = subprocess.run(
                [sys.executable, "-c", SCAN_SNIPPET],
                env=stack.env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode:
                raise RuntimeError(done.stderr[-3000:])
            return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        moto.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=120)
    parser.add_argument("--clips", type=int, default=8, help="the API tenant's 2-minute clips")
    parser.add_argument("--gpu-cost-scale", type=float, default=1.0)
    parser.add_argument("--watch-interval", type=float, default=10.0, help="VOXBATCH_WATCH_INTERVAL_S")
    parser.add_argument("--kill-after", type=float, default=30.0, help="seconds after the drop")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the documents")
    parser.add_argument(
        "--gpu-concurrency", type=int, default=None, help="VOXBATCH_GPU_CONCURRENCY (default: the setting's)"
    )
    parser.add_argument(
        "--scan", type=int, default=None, metavar="N", help="time one scan of N ingested objects"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    parser.add_argument("--events", action="store_true", help="watchers also consume S3 events (SQS)")
    parser.add_argument(
        "--max-audio-beside-clips", type=float, default=None, help="VOXBATCH_MAX_AUDIO_BESIDE_CLIPS_S"
    )
    args = parser.parse_args()
    with scratch("voxbatch-storm-", args.keep) as tmp:
        if args.scan is not None:
            found = run_scan(tmp, args.scan)
            print(f"scan of {args.scan} ingested recordings: {found['scan_s']:.2f} s (goal < 10 s), "
                  f"peak memory {found['hwm_mb']:.0f} MB (before the scan {found['hwm_before_mb']:.0f} MB; "
                  f"goal < 200 MB); listed {found['listed']}, new {found['new']}")  # fmt: skip
        else:
            result = run_storm(
                tmp, args.recordings, args.clips, args.gpu_cost_scale, args.watch_interval, args.kill_after,
                args.timeout, gpu_concurrency=args.gpu_concurrency, events=args.events,
                beside_clips_s=args.max_audio_beside_clips,
            )  # fmt: skip
            print_storm(result, args)
        if args.keep:
            print(f"kept {tmp}")


if __name__ == "__main__":
    main()
