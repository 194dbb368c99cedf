"""Chaos soak (issue 21): the whole stack under a steady mix of jobs while every part is killed,
restarted or made to fail at random; at the end nothing is lost and every document is the one a calm
run makes.

    .venv/bin/python -m bench.soak --minutes 30 [--seed 21] [--keep]      # make soak: 10 minutes

The stack, as deployed, on 127.0.0.1 (bench/soak_stack.py): redis-server with infra/redis/redis.conf,
PostgreSQL, the moto S3 server behind a proxy that can answer 503 or slow down, ``voxbatch api``, two
cpu and two gpu ``voxbatch worker`` processes whose TMPDIR is a small tmpfs (as root; a plain folder
otherwise, and the "tmp full" fault is skipped), ``voxbatch watch``, and the stand-in vLLM server with
a latency per request. Storage is S3 (through the proxy); the drop folder and its outbox are in S3.

1. Calm run: each input (a few minutes of generated speech with marker tones, looped) once through
   each way in (API upload, ``voxbatch submit``, drop folder); their documents are the reference.
2. Load and chaos, for ``--minutes``: two tenants submit a steady mix (API uploads with an
   Idempotency-Key, a few sent twice; ``voxbatch submit``; drop-folder objects with a sidecar; a few
   cancels, some followed by a retry), webhooks to a local receiver. Clients behave well: an API
   upload is sent again with the same Idempotency-Key until it is answered; ``voxbatch submit`` is
   run again when it fails (it has no key: a second job there is counted as a duplicate). A chaos
   driver (seeded) injects one fault at a time at random intervals: SIGKILL and restart of a cpu
   worker, a gpu worker, the watcher, the API; redis-server killed and restarted (once with its data
   removed); PostgreSQL crashed and restarted; the model server answering 503 for a while, and
   killed and restarted; S3 answering 503, or slow, for a while; the workers' tmpfs full for a while.
3. Settle: faults stop, every accepted job must end (``--settle-minutes``).
4. Checks, printed as a table (exit status 1 if one fails): every accepted job succeeded, or was
   cancelled where a cancel was asked and not retried; documents identical to the calm run's (the
   text documents byte for byte; document.json without the fields that name the job or time it:
   ``job_id``, ``timings`` and ``created_at``-like fields, listed in ``VOLATILE``); every drop-folder
   object has exactly one job and one outbox result and no error.json; every job with a webhook got
   at least one delivery and every delivery of one event (event id) has the same body; no window holds
   a lease, the outbox table is empty, the tmpfs is empty, Redis's queues are empty (its ``unacked``
   set too, once the sweep has had time to drop what killed workers left there: up to
   max(lease, 300 s) after the newest entry, ``workers/unacked.py``); /healthz p99 under 1 s while the
   API process was up.

``run_soak`` is what tests/distributed/test_soak.py calls for a short version.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.soak_stack import (
    AWS_ENV,
    VOXBATCH,
    Hooks,
    Moto,
    Postgres,
    Proc,
    Redis,
    S3Proxy,
    StandIn,
    answers,
    wait_for,
)
from workers.sweeper import sweep_period_s
from workers.unacked import safe_age_s, unacked_keys

CACHE = Path(__file__).resolve().parent / ".cache" / "soak"
ENDED = ("succeeded", "failed", "cancelled")
STORE_BUCKET = "soak-store"
DROP_BUCKET = "soak-drop"
TENANTS = ("alpha", "beta")
# document.json fields that name the job, where its recording was read from, or time it: equal
# documents may differ there.
VOLATILE = ("job_id", "source", "timings", "created_at", "finished_at", "started_at", "generated_at")
FAULTS = (
    "kill-cpu-worker",
    "kill-gpu-worker",
    "kill-watcher",
    "kill-api",
    "restart-redis",
    "restart-postgres",
    "model-503",
    "restart-model",
    "s3-503",
    "s3-slow",
    "tmp-full",
)


@dataclass(frozen=True)
class Input:
    name: str
    path: Path


def build_inputs(seconds: list[float]) -> list[Input]:
    """Generated speech with marker tones (tests/speech.py), looped to ``seconds`` each; cached."""
    from tests.speech import build_recording, marker_talk

    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for i, length in enumerate(seconds):
        name = f"talk-{i}-{length:g}s.flac"
        path = CACHE / name
        if not path.exists():
            base = CACHE / f"base-{i}.flac"
            if not base.exists():
                build_recording(marker_talk([10 * i + k for k in range(1, 4)]), base)
            # Encoded again, not stream-copied: a copied FLAC keeps the first loop's length in its
            # header, and the probe would say 36 s for a 150-s recording.
            part = path.with_suffix(".part.flac")
            subprocess.run(
                ["ffmpeg", "-v", "error", "-nostdin", "-y", "-stream_loop", "-1", "-i", str(base),
                 "-t", f"{length:.3f}", "-c:a", "flac", str(part)],
                check=True, capture_output=True,
            )  # fmt: skip
            part.rename(path)
        out.append(Input(name, path))
    return out


@dataclass
class Accepted:
    job_id: str
    via: str  # api, cli, drop
    input: str
    tenant: str | None
    at: float
    webhook: bool
    cancel_asked: bool = False
    retried: bool = False
    key: str | None = None  # the drop object's key


@dataclass
class Fault:
    kind: str
    start: float
    end: float = 0.0
    note: str = ""


@dataclass
class Soak:
    tmp: Path
    seed: int
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    accepted: list[Accepted] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    duplicate_requests: list[tuple[str, str]] = field(default_factory=list)  # (first, second) ids
    cli_sources: dict[str, str] = field(default_factory=dict)  # source path -> input
    health: list[tuple[float, float | None, bool]] = field(default_factory=list)
    progress: list[tuple[float, int, int]] = field(default_factory=list)  # t, progress, unfinished
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_load: threading.Event = field(default_factory=threading.Event)
    stop_all: threading.Event = field(default_factory=threading.Event)
    api_ready: threading.Event = field(default_factory=threading.Event)
    tmpfs: Path | None = None
    mounted: bool = False
    drop_seq: int = 0
    calm_ids: set[str] = field(default_factory=set)

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # --- the stack --------------------------------------------------------------------------

    def start_stack(self, latency_s: float) -> None:
        logs = self.tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.redis = Redis(self.tmp / "redis" / "data")
        self.redis.start()
        self.pg = Postgres()
        self.pg.start()
        database_url = self.pg.create_database("soak")
        self.moto = Moto(logs / "moto.log")
        s3 = self.moto.client()
        s3.create_bucket(Bucket=STORE_BUCKET)
        s3.create_bucket(Bucket=DROP_BUCKET)
        self.proxy = S3Proxy(self.moto.port)
        self.model = StandIn(logs / "standin.log", latency_s=latency_s)
        self.model.start()
        self.hooks = Hooks()
        self.tmpfs = self.tmp / "worker-tmp"
        self.tmpfs.mkdir()
        if os.geteuid() == 0 and shutil.which("mount"):
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(self.tmpfs)], capture_output=True
            )
            self.mounted = done.returncode == 0
        nowhere = str(self.tmp / "no-aws-config")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXBATCH_", "AWS_"))}
        env.update(AWS_ENV)
        env.update(
            AWS_CONFIG_FILE=nowhere,
            AWS_SHARED_CREDENTIALS_FILE=nowhere,
            VOXBATCH_DATA_DIR=str(self.tmp / "data"),
            VOXBATCH_BROKER_URL=self.redis.url,
            VOXBATCH_DATABASE_URL=database_url,
            VOXBATCH_STORAGE_URL=f"s3://{STORE_BUCKET}/voxbatch",
            VOXBATCH_S3_ENDPOINT_URL=self.proxy.endpoint,
            VOXBATCH_ENGINE="vllm",
            VOXBATCH_VLLM_URL=self.model.url,
            VOXBATCH_DROP_URL=f"s3://{DROP_BUCKET}/inbox/",
            VOXBATCH_OUTBOX_URL=f"s3://{DROP_BUCKET}/outbox/",
            VOXBATCH_WEBHOOK_ALLOW_PRIVATE="1",
            VOXBATCH_WEBHOOK_BACKOFF_S="1",
            # Shorter than production so a soak of minutes sees each recovery several times; the
            # recoveries are the same code (docs/operations.md, "What a crash costs").
            VOXBATCH_WATCH_INTERVAL_S="5",
            VOXBATCH_LEASE_SECONDS="20",
            VOXBATCH_ORPHAN_AFTER_S="45",
            VOXBATCH_WINDOW_LOST_AFTER_S="20",
            VOXBATCH_DROP_CLAIM_LEASE_S="10",
            VOXBATCH_RELAY_POLL_S="1",
            VOXBATCH_GPU_QUEUE_TARGET="4",
            VOXBATCH_MAX_ACTIVE_JOBS_PER_TENANT="200",
        )
        self.env = env
        worker_env = {**env, "TMPDIR": str(self.tmpfs)}
        self.api_port = int(os.environ.get("SOAK_API_PORT") or 0) or _free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.procs["api"] = Proc("api", ["api", "--port", str(self.api_port)], env, logs)
        self.procs["api"].start()
        wait_for(lambda: answers(f"{self.api}/readyz"), 90, "voxbatch api")
        self.api_ready.set()
        for t in TENANTS:
            done = self.cli("keys", "create", t)
            self.keys[t] = done.stdout.strip().splitlines()[-1]
        for i in range(2):
            self.procs[f"cpu{i}"] = Proc(f"cpu{i}", ["worker", "--queues", "cpu", "--concurrency", "2"],
                                         worker_env, logs)  # fmt: skip
            self.procs[f"gpu{i}"] = Proc(f"gpu{i}", ["worker", "--queues", "gpu", "--concurrency", "4"],
                                         worker_env, logs)  # fmt: skip
        self.procs["watcher"] = Proc("watcher", ["-v", "watch"], env, logs)
        for name, proc in self.procs.items():
            if name != "api":
                proc.start()
        self.say(f"stack up in {self.tmp} (tmpfs: {'mounted' if self.mounted else 'a plain folder'})")

    def stop_stack(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.stop()
        for stop in (
            lambda: self.model.kill(),
            lambda: self.hooks.stop(),
            lambda: self.proxy.stop(),
            lambda: self.moto.stop(),
            lambda: self.redis.stop(),
            lambda: self.pg.remove(),
        ):
            with contextlib.suppress(Exception):
                stop()
        if self.mounted and self.tmpfs is not None:
            subprocess.run(["umount", "-l", str(self.tmpfs)], capture_output=True)
            self.mounted = False

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [VOXBATCH, *args], env=self.env, cwd=self.tmp, capture_output=True, text=True, timeout=timeout
        )

    def db(self) -> Any:
        import psycopg

        return psycopg.connect(self.env["VOXBATCH_DATABASE_URL"], connect_timeout=3, autocommit=True)

    # --- submissions --------------------------------------------------------------------------

    def upload(self, tenant: str, inp: Input, key: str, webhook: bool, give_up_s: float = 300) -> str | None:
        """POST /v1/jobs until answered, with the same Idempotency-Key each time."""
        deadline = time.monotonic() + give_up_s
        data = {"window_minutes": "1"}
        if webhook:
            data["webhook_url"] = f"{self.hooks.url}/hook/{tenant}"
        while time.monotonic() < deadline:
            try:
                with inp.path.open("rb") as body:
                    answer = httpx.post(
                        f"{self.api}/v1/jobs",
                        headers={"Authorization": f"Bearer {self.keys[tenant]}", "Idempotency-Key": key},
                        files={"file": (inp.name, body, "audio/flac")},
                        data=data,
                        timeout=60,
                    )
            except httpx.HTTPError as exc:
                self.refused[f"api {exc.__class__.__name__}"] += 1
                time.sleep(1)
                continue
            if answer.status_code == 202:
                return str(answer.json()["id"])
            self.refused[f"api {answer.status_code}"] += 1
            if answer.status_code < 500 and answer.status_code not in (408, 409, 429):
                raise RuntimeError(f"upload refused: {answer.status_code} {answer.text[:300]}")
            time.sleep(float(answer.headers.get("Retry-After", "1")))
        return None

    def submit_cli(self, inp: Input) -> list[str]:
        """``voxbatch submit`` of a fresh link to the input, run again while it fails."""
        links = self.tmp / "cli"
        links.mkdir(exist_ok=True)
        path = links / uuid.uuid4().hex[:8] / inp.name  # a folder each: the same file name
        path.parent.mkdir()
        os.link(inp.path, path)
        with self.lock:
            self.cli_sources[str(path)] = inp.name
        for _ in range(30):
            try:
                done = self.cli("submit", str(path), "--window-minutes", "1", timeout=90)
            except subprocess.TimeoutExpired:
                self.refused["cli timeout"] += 1
                continue
            if done.returncode == 0:
                return [done.stdout.strip().splitlines()[-1]]
            self.refused["cli failed"] += 1
            time.sleep(2)
        return []

    def drop(self, inp: Input, tenant: str | None, webhook: bool) -> str:
        """A sidecar, then the recording, into the inbox (straight to S3: the uploader is not
        under test)."""
        with self.lock:
            self.drop_seq += 1
            n = self.drop_seq
        key = f"inbox/d{n:04d}/{inp.name}"
        sidecar: dict[str, Any] = {"window_minutes": 1}
        if tenant:
            sidecar["tenant"] = tenant
        if webhook:
            sidecar["webhook_url"] = f"{self.hooks.url}/hook/drop"
        s3 = self.moto.client()
        s3.put_object(
            Bucket=DROP_BUCKET, Key=key[: -len(".flac")] + ".json", Body=json.dumps(sidecar).encode()
        )
        s3.upload_file(str(inp.path), DROP_BUCKET, key)
        return key

    def api_call(self, tenant: str, method: str, path: str, tries: int = 60) -> httpx.Response | None:
        for _ in range(tries):
            try:
                answer = httpx.request(
                    method, f"{self.api}{path}", headers={"Authorization": f"Bearer {self.keys[tenant]}"},
                    timeout=30,
                )  # fmt: skip
                if answer.status_code < 500:
                    return answer
            except httpx.HTTPError:
                pass
            time.sleep(1)
        return None

    def job_state(self, job_id: str) -> str | None:
        try:
            with self.db() as conn:
                row = conn.execute("SELECT status FROM job WHERE id = %s", (job_id,)).fetchone()
            return str(row[0]) if row else None
        except Exception:
            return None

    def add(self, acc: Accepted) -> None:
        with self.lock:
            self.accepted.append(acc)

    def load(self, inputs: list[Input], period_s: float) -> None:
        """The steady mix, until ``stop_load``; each submission in a thread of its own."""
        rng = random.Random(self.seed + 1)
        threads: list[threading.Thread] = []
        n = 0
        while not self.stop_load.wait(rng.uniform(0.5, 1.5) * period_s):
            n += 1
            inp = rng.choice(inputs)
            tenant = rng.choice(TENANTS)
            roll = rng.random()
            if roll < 0.4:
                twice = rng.random() < 0.3
                cancel = not twice and rng.random() < 0.2
                retry = cancel and rng.random() < 0.5
                target = self._api_job
                args: tuple[Any, ...] = (tenant, inp, twice, cancel, retry, rng.uniform(0.5, 8))
            elif roll < 0.7:
                target, args = self._cli_job, (inp,)
            else:
                target, args = self._drop_job, (inp, tenant if rng.random() < 0.5 else None)
            thread = threading.Thread(target=target, args=args, name=f"load-{n}", daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(timeout=400)

    def _api_job(
        self, tenant: str, inp: Input, twice: bool, cancel: bool, retry: bool, cancel_after_s: float
    ) -> None:
        key = uuid.uuid4().hex
        job_id = self.upload(tenant, inp, key, webhook=True)
        if job_id is None:
            self.refused["api gave up"] += 1
            return
        acc = Accepted(job_id, "api", inp.name, tenant, time.time(), webhook=True)
        self.add(acc)
        if twice:
            again = self.upload(tenant, inp, key, webhook=True)
            with self.lock:
                self.duplicate_requests.append((job_id, again or "none"))
        if cancel:
            time.sleep(cancel_after_s)
            acc.cancel_asked = True
            self.api_call(tenant, "POST", f"/v1/jobs/{job_id}/cancel")
            if retry:
                with contextlib.suppress(RuntimeError):
                    wait_for(lambda: self.job_state(job_id) in ENDED, 120, "the cancel", poll_s=1)
                answer = self.api_call(tenant, "POST", f"/v1/jobs/{job_id}/retry")
                acc.retried = answer is not None and answer.status_code == 202

    def _cli_job(self, inp: Input) -> None:
        for job_id in self.submit_cli(inp):
            self.add(Accepted(job_id, "cli", inp.name, None, time.time(), webhook=False))

    def _drop_job(self, inp: Input, tenant: str | None) -> None:
        try:
            key = self.drop(inp, tenant, webhook=True)
        except Exception as exc:  # moto itself is not under test
            self.refused[f"drop {exc.__class__.__name__}"] += 1
            return
        self.add(Accepted("", "drop", inp.name, tenant or "drop", time.time(), webhook=True, key=key))

    # --- observers ----------------------------------------------------------------------------

    def probe_health(self) -> None:
        while not self.stop_all.wait(0.5):
            up = self.procs["api"].alive and self.api_ready.is_set()
            t0 = time.monotonic()
            try:
                ok = httpx.get(f"{self.api}/healthz", timeout=3).status_code == 200
                took: float | None = time.monotonic() - t0 if ok else None
            except httpx.HTTPError:
                took = 3.0 if up and time.monotonic() - t0 >= 2.9 else None
            with self.lock:
                self.health.append((time.time(), took, up))

    def watch_progress(self) -> None:
        while not self.stop_all.wait(1.0):
            for proc in list(self.procs.values()):
                proc.note_exit()
            try:
                with self.db() as conn:
                    done, ended, unfinished = conn.execute(
                        "SELECT (SELECT count(*) FROM \"window\" WHERE status = 'done'),"
                        " (SELECT count(*) FROM job WHERE status IN ('succeeded','failed','cancelled')),"
                        " (SELECT count(*) FROM job WHERE status NOT IN ('succeeded','failed','cancelled'))"
                    ).fetchone()
                with self.lock:
                    self.progress.append((time.time(), int(done) + int(ended), int(unfinished)))
            except Exception:
                pass

    # --- chaos --------------------------------------------------------------------------------

    def chaos(self, minutes: float, gap_s: tuple[float, float]) -> None:
        rng = random.Random(self.seed)
        end = time.monotonic() + minutes * 60
        wipe_at = time.monotonic() + minutes * 60 * rng.uniform(0.3, 0.6)
        wiped = False
        kinds = [k for k in FAULTS if k != "tmp-full" or self.mounted]
        while not self.stop_all.wait(rng.uniform(*gap_s)) and time.monotonic() < end:
            kind = rng.choice(kinds)
            if not wiped and time.monotonic() >= wipe_at:
                kind, wiped = "wipe-redis", True
            fault = Fault(kind, time.time())
            try:
                self.inject(fault, rng)
            except Exception as exc:
                fault.note = f"{fault.note} error: {exc.__class__.__name__}: {exc}"[:200]
            fault.end = time.time()
            self.faults.append(fault)
            self.say(f"fault {kind} ({fault.end - fault.start:.1f} s) {fault.note}")
        if not wiped:  # a short run still loses Redis's data once
            fault = Fault("wipe-redis", time.time())
            self.inject(fault, rng)
            fault.end = time.time()
            self.faults.append(fault)
            self.say("fault wipe-redis")

    def inject(self, fault: Fault, rng: random.Random) -> None:
        kind = fault.kind
        if kind.startswith("kill-"):
            name = {"kill-watcher": "watcher", "kill-api": "api"}.get(kind) or (
                ("cpu" if "cpu" in kind else "gpu") + str(rng.randrange(2))
            )
            fault.note = name
            proc = self.procs[name]
            if name == "api":
                self.api_ready.clear()
            proc.kill()
            time.sleep(rng.uniform(0.5, 4))
            proc.start()
            if name == "api":
                with contextlib.suppress(RuntimeError):
                    wait_for(lambda: answers(f"{self.api}/healthz"), 90, "the api")
                self.api_ready.set()
        elif kind == "restart-redis":
            self.redis.kill()
            time.sleep(rng.uniform(1, 5))
            self.redis.start()
        elif kind == "wipe-redis":
            self.redis.wipe()
            time.sleep(rng.uniform(1, 3))
            self.redis.start()
        elif kind == "restart-postgres":
            self.pg.crash()
            time.sleep(rng.uniform(2, 8))
            self.pg.start()
        elif kind == "model-503":
            self.model.unavailable(True)
            time.sleep(rng.uniform(5, 25))
            self.model.unavailable(False)
        elif kind == "restart-model":
            self.model.kill()
            time.sleep(rng.uniform(1, 5))
            self.model.start()
        elif kind in ("s3-503", "s3-slow"):
            self.proxy.mode = "503" if kind == "s3-503" else "slow"
            time.sleep(rng.uniform(5, 20))
            self.proxy.mode = "ok"
        elif kind == "tmp-full":
            assert self.tmpfs is not None
            filler = self.tmpfs / "soak-filler"
            try:
                # The error may come from the last write or from the close's flush.
                with contextlib.suppress(OSError), filler.open("wb") as out:
                    while True:
                        out.write(b"\0" * (1 << 20))
                        out.flush()
                time.sleep(rng.uniform(5, 20))
            finally:
                filler.unlink(missing_ok=True)


def _free_port() -> int:
    from tests.fixtures.services import free_port

    return free_port()


# --- results ------------------------------------------------------------------------------------


def _documents(s3: Any, prefix: str) -> dict[str, bytes]:
    from jobs.documents import DOCUMENT_NAMES

    out = {}
    for name in DOCUMENT_NAMES:
        with contextlib.suppress(Exception):
            bucket = DROP_BUCKET if prefix.startswith("outbox/") else STORE_BUCKET
            out[name] = s3.get_object(Bucket=bucket,
                                      Key=prefix + name)["Body"].read()  # fmt: skip
    return out


def comparable(name: str, data: bytes) -> bytes:
    """What must be identical between two runs of one input: text documents whole; document.json
    without the fields that name the job or time it."""
    if name != "document.json":
        return data

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(json.loads(data)), sort_keys=True).encode()


@dataclass
class SoakResult:
    rows: list[tuple[str, str, str]]
    problems: list[str]
    lost: int
    outcomes: Counter[str]

    def table(self) -> str:
        width = max(len(r[0]) for r in self.rows)
        lines = [f"{'':<{width}}  value  (goal)"]
        lines += [f"{a:<{width}}  {b}" + (f"  ({c})" if c else "") for a, b, c in self.rows]
        if self.problems:
            lines.append("problems:")
            lines += [f"  - {p}" for p in self.problems[:40]]
        return "\n".join(lines)


def run_soak(
    tmp: Path,
    minutes: float = 10.0,
    seed: int = 21,
    inputs_s: tuple[float, ...] = (150.0, 200.0),
    period_s: float = 6.0,
    gap_s: tuple[float, float] = (8.0, 25.0),
    latency_s: float = 0.3,
    settle_minutes: float = 8.0,
    progress: bool = True,
) -> SoakResult:
    soak = Soak(tmp, seed)
    if not progress:
        soak.say = lambda text: None  # type: ignore[method-assign]
    inputs = build_inputs(list(inputs_s))
    by_name = {i.name: i for i in inputs}
    threads: list[threading.Thread] = []
    try:
        soak.start_stack(latency_s)
        s3 = soak.moto.client()
        # 1. The calm run: each input once through each way in.
        soak.say("calm run ...")
        calm: list[Accepted] = []
        for inp in inputs:
            job_id = soak.upload("alpha", inp, uuid.uuid4().hex, webhook=False)
            assert job_id is not None
            calm.append(Accepted(job_id, "api", inp.name, "alpha", time.time(), webhook=False))
            calm += [Accepted(j, "cli", inp.name, None, time.time(), False) for j in soak.submit_cli(inp)]
            calm.append(
                Accepted("", "drop", inp.name, "drop", time.time(), False, key=soak.drop(inp, None, False))
            )
        _resolve_drops(soak, calm, timeout_s=300)
        ids = [a.job_id for a in calm]
        soak.calm_ids = set(ids)
        wait_for(lambda: all(soak.job_state(j) in ENDED for j in ids), 600, "the calm run", poll_s=1)
        reference: dict[tuple[str, str], dict[str, bytes]] = {}
        for a in calm:
            state = soak.job_state(a.job_id)
            if state != "succeeded":
                raise RuntimeError(f"calm job {a.job_id} ({a.via} {a.input}) {state}")
            reference[(a.via, a.input)] = _documents(s3, f"voxbatch/jobs/{a.job_id}/output/")
        soak.say(f"calm run done: {len(calm)} jobs")

        # 2. Load and chaos.
        threads = [
            threading.Thread(target=soak.probe_health, daemon=True),
            threading.Thread(target=soak.watch_progress, daemon=True),
        ]
        loader = threading.Thread(target=soak.load, args=(inputs, period_s), daemon=True)
        threads.append(loader)
        for thread in threads:
            thread.start()
        t_chaos = time.time()
        soak.chaos(minutes, gap_s)
        soak.stop_load.set()
        t_faults_end = time.time()
        soak.say("faults stopped; waiting for the submissions in flight and the stack to settle ...")
        loader.join(timeout=600)

        # 3. Settle.
        _resolve_drops(soak, soak.accepted, timeout_s=settle_minutes * 60)
        ids = [a.job_id for a in soak.accepted if a.job_id]
        with contextlib.suppress(RuntimeError):
            wait_for(
                lambda: all(soak.job_state(j) in ENDED for j in ids),
                settle_minutes * 60, "every accepted job to end", poll_s=2,
            )  # fmt: skip
        settled_s = time.time() - t_faults_end
        time.sleep(8)  # webhooks and outbox writes after the last job's end
        soak.stop_all.set()
        return _check(soak, s3, reference, by_name, t_chaos, t_faults_end, settled_s)
    finally:
        soak.stop_all.set()
        soak.stop_load.set()
        soak.stop_stack()


def _resolve_drops(soak: Soak, accepted: list[Accepted], timeout_s: float) -> None:
    """Fill in the job id of each dropped object from the ledger, waiting for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        missing = [a for a in accepted if a.via == "drop" and not a.job_id]
        if not missing:
            return
        with contextlib.suppress(Exception), soak.db() as conn:
            for a in missing:
                row = conn.execute(
                    "SELECT job_id FROM dropobject WHERE bucket = %s AND key = %s AND job_id IS NOT NULL",
                    (DROP_BUCKET, a.key),
                ).fetchone()
                if row:
                    a.job_id = str(row[0])
        time.sleep(2)


def _check(
    soak: Soak,
    s3: Any,
    reference: dict[tuple[str, str], dict[str, bytes]],
    by_name: dict[str, Input],
    t_chaos: float,
    t_faults_end: float,
    settled_s: float,
) -> SoakResult:
    problems: list[str] = []
    outcomes: Counter[str] = Counter()
    accepted = [a for a in soak.accepted]
    with soak.db() as conn:
        jobs = {
            str(r[0]): (str(r[1]), r[2], r[3], r[4])
            for r in conn.execute("SELECT id, status, error, source, tenant FROM job").fetchall()
        }
        leases = conn.execute('SELECT count(*) FROM "window" WHERE lease_owner IS NOT NULL').fetchone()[0]
        outbox_rows = conn.execute("SELECT count(*) FROM queuedstep").fetchone()[0]
        drops = conn.execute(
            "SELECT key, job_id, error FROM dropobject WHERE bucket = %s", (DROP_BUCKET,)
        ).fetchall()
    lost = 0
    compared = identical = 0
    for a in accepted:
        if not a.job_id:
            lost += 1
            problems.append(f"drop object {a.key}: no job")
            continue
        state, error, _, _ = jobs.get(a.job_id, ("missing", None, None, None))
        outcomes[f"{a.via} {state}"] += 1
        expected = ("cancelled", "succeeded") if a.cancel_asked and not a.retried else ("succeeded",)
        if state not in expected:
            lost += 1
            problems.append(f"job {a.job_id} ({a.via} {a.input}, cancel={a.cancel_asked} retry={a.retried}): "
                            f"{state} {error or ''}"[:300])  # fmt: skip
            continue
        if state != "succeeded":
            continue
        ref = reference[(a.via, a.input)]
        got = _documents(s3, f"voxbatch/jobs/{a.job_id}/output/")
        compared += 1
        same = set(ref) == set(got) and all(comparable(n, ref[n]) == comparable(n, got[n]) for n in ref)
        if a.via == "drop" and a.key:
            outbox = _documents(s3, "outbox/" + a.key[len("inbox/") :] + "/")
            same = same and all(comparable(n, outbox.get(n, b"")) == comparable(n, got[n]) for n in got)
        identical += same
        if not same:
            differ = sorted(n for n in set(ref) | set(got)
                            if comparable(n, ref.get(n, b"{}"))
                            != comparable(n, got.get(n, b"{}")))  # fmt: skip
            problems.append(
                f"job {a.job_id} ({a.via} {a.input}): {differ or 'outbox'} differ from the calm run's"
            )
            where = soak.tmp / "differ" / a.job_id
            where.mkdir(parents=True, exist_ok=True)
            for n in differ:
                (where / f"{n}.calm").write_bytes(ref.get(n, b""))
                (where / n).write_bytes(got.get(n, b""))
    # Jobs nobody was answered for (a submitter retried after an ambiguous failure).
    known = {a.job_id for a in accepted} | soak.calm_ids
    cli_jobs = Counter(src for _, _, src, _ in jobs.values() if src in soak.cli_sources)
    cli_dups = sum(n - 1 for n in cli_jobs.values() if n > 1)
    api_unanswered = [j for j, (_, _, src, tenant) in jobs.items() if tenant in TENANTS and j not in known
                      and src and not src.startswith("s3://" + DROP_BUCKET)]  # fmt: skip
    dup_mismatch = [p for p in soak.duplicate_requests if p[0] != p[1]]
    if dup_mismatch:
        problems.append(f"same Idempotency-Key, different answers: {dup_mismatch[:5]}")
    # Drop folder: one job and one result per object.
    per_key = Counter(str(k) for k, _, _ in drops)
    drop_keys = [a.key for a in accepted if a.via == "drop" and a.key]
    errors = [f"{k}: {e}" for k, _, e in drops if e]
    problems += [f"drop error: {e}"[:300] for e in errors]
    drop_jobs_per_key = Counter(
        src for _, _, src, _ in jobs.values() if src and src.startswith(f"s3://{DROP_BUCKET}/")
    )
    drop_dups = sum(n - 1 for n in drop_jobs_per_key.values() if n > 1) + sum(
        n - 1 for n in per_key.values() if n > 1
    )
    for key in drop_keys:
        rel = key[len("inbox/") :]
        listed = s3.list_objects_v2(Bucket=DROP_BUCKET, Prefix=f"outbox/{rel}/").get("Contents", [])
        names = {o["Key"].rsplit("/", 1)[-1] for o in listed}
        if "error.json" in names or "document.json" not in names:
            problems.append(f"outbox {rel}: {sorted(names)}")
    # Webhooks.
    deliveries = soak.hooks.by_job()
    hook_missing = [a.job_id for a in accepted if a.webhook and a.job_id and a.job_id not in deliveries]
    problems += [f"job {j}: no webhook delivered" for j in hook_missing]
    redelivered = differing = 0
    for job_id, ds in deliveries.items():
        events: dict[str, set[bytes]] = {}
        for d in ds:
            events.setdefault(d.event_id or "(none)", set()).add(d.body)
        redelivered += len(ds) - len(events)
        for event, bodies in events.items():
            if len(bodies) > 1 or event == "(none)":
                differing += 1
                problems.append(f"job {job_id}: event {event}: {len(bodies)} different bodies")
    # Leftovers.
    if leases:
        problems.append(f"{leases} windows hold a lease")
    if outbox_rows:
        problems.append(f"{outbox_rows} steps left in the outbox table")
    # Files, and folders other than the running workers' own (workers/scratch.py), are left over.
    left = sorted(
        str(p.relative_to(soak.tmpfs))
        for p in (soak.tmpfs.rglob("*") if soak.tmpfs else [])
        # (a running prefork pool's own pymp- folder lives in its worker's folder until it exits)
        if (p.is_file() and "/pymp-" not in str(p)) or not p.name.startswith(("voxbatch-worker-", "pymp-"))
    )
    if left:
        problems.append(f"temporary files left: {left[:10]}")
    queues = {}
    unacked_at_settle: int | None = None
    with contextlib.suppress(Exception):
        r = soak.redis.client()
        unacked_at_settle = int(r.hlen(unacked_keys()[0]))
        _wait_for_the_unacked_sweep(soak, r)
        queues = {q: int(r.llen(q)) for q in ("cpu", "gpu")}
        queues["unacked"] = int(r.hlen(unacked_keys()[0]))
    if any(queues.values()):
        problems.append(f"redis queues not empty: {queues}")
    # Processes that exited on their own (nothing here restarts them, as compose or Kubernetes would).
    for proc in soak.procs.values():
        proc.note_exit()
    exited = [(p.name, n, code) for p in soak.procs.values() for n, code in p.exits]
    problems += [f"{name} exited on its own (status {code}; logs/{name}.{n}.log)" for name, n, code in exited]
    # /healthz while the API was up.
    lat = sorted(t for _, t, up in soak.health if up and t is not None)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None
    if p99 is None or p99 >= 1.0:
        problems.append(f"/healthz p99 {p99}")
    # Fault to progress: after each fault ends, until the progress count next moves (work pending).
    worst = 0.0
    worst_kind = ""
    for f in soak.faults:
        after = [(t, p, u) for t, p, u in soak.progress if t >= f.start]
        if not after:
            continue
        base = max((p for t, p, _ in soak.progress if t <= f.start), default=after[0][1])
        moved = next((t for t, p, _ in after if p > base), None)
        pending = any(u for _, _, u in after[:3])
        if pending and moved is not None and moved - f.end > worst:
            worst, worst_kind = moved - f.end, f.kind
    fault_counts = Counter(f.kind for f in soak.faults)
    rows = [
        ("chaos", f"{(t_faults_end - t_chaos) / 60:.1f} min, seed {soak.seed}, "
         f"settled in {settled_s:.0f} s", ""),
        ("faults injected", ", ".join(f"{k} {n}" for k, n in sorted(fault_counts.items())) or "none", ""),
        ("faults total", str(len(soak.faults)), ""),
        ("jobs accepted", f"{len(accepted)} (api {sum(a.via == 'api' for a in accepted)}, cli "
         f"{sum(a.via == 'cli' for a in accepted)}, drop {sum(a.via == 'drop' for a in accepted)})", ""),
        ("jobs by outcome", ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items())), ""),
        ("cancels asked / retried",
         f"{sum(a.cancel_asked for a in accepted)} / {sum(a.retried for a in accepted)}", ""),
        ("documents compared / identical", f"{compared} / {identical}", "all identical"),
        ("same-key requests / same job", f"{len(soak.duplicate_requests)} / "
         f"{len(soak.duplicate_requests) - len(dup_mismatch)}", "all"),
        ("duplicate jobs: drop / cli resubmits / api unanswered",
         f"{drop_dups} / {cli_dups} / {len(api_unanswered)}",
         "0 / - / 0"),
        ("webhooks: jobs delivered / redeliveries / events with differing bodies",
         f"{sum(1 for a in accepted if a.webhook and a.job_id in deliveries)} of "
         f"{sum(1 for a in accepted if a.webhook)} / {redelivered} / {differing}", "all / - / 0"),
        ("client refusals seen (then retried)",
         ", ".join(f"{k} {n}" for k, n in soak.refused.most_common()), ""),
        ("lost (not ended as expected, or no job)", str(lost), "0"),
        ("processes that exited on their own",
         ", ".join(f"{name}.{n} ({code})" for name, n, code in exited) or "0", "0"),
        ("leases held / outbox rows / tmp files / redis queues",
         f"{leases} / {outbox_rows} / {len(left)} / {queues}",
         "0 / 0 / 0 / 0"),
        ("unacked messages at the settle (killed workers' leftovers, for the sweep)",
         str(unacked_at_settle), ""),
        ("/healthz p99 while the API was up", f"{p99:.3f} s ({len(lat)} probes)" if p99 else "n/a", "< 1 s"),
        ("longest fault end to progress", f"{worst:.1f} s ({worst_kind})", ""),
    ]  # fmt: skip
    # Own exits first (the cause of what follows), then leftovers and losses; the list is cut at 40.
    problems.sort(key=lambda p: (" exited on its own " not in p, "differ from" in p))
    return SoakResult(rows, problems, lost, outcomes)


def _wait_for_the_unacked_sweep(soak: Soak, r: Any) -> None:
    """The messages SIGKILLed workers left in kombu's unacked set are the sweep's to drop once they
    are older than its safe age (workers/unacked.py): wait until the newest entry is that old and a
    few sweeps have run since (or the set is empty), so that what is left is what the sweep keeps."""
    lease = float(soak.env["VOXBATCH_LEASE_SECONDS"])
    margin = 3 * sweep_period_s(lease)
    unacked, index = unacked_keys()

    def swept() -> bool:
        newest = r.zrange(index, -1, -1, withscores=True)
        return (
            int(r.hlen(unacked)) == 0 or not newest or time.time() > newest[0][1] + safe_age_s(lease) + margin
        )

    with contextlib.suppress(RuntimeError):
        wait_for(
            swept, safe_age_s(lease) + 2 * margin, "the sweep to drop the killed workers' messages", poll_s=2
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long faults are injected")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--period", type=float, default=6.0, help="mean seconds between submissions")
    parser.add_argument("--settle-minutes", type=float, default=8.0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    args = parser.parse_args(argv)
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="voxbatch-soak-"))
    try:
        result = run_soak(
            tmp, args.minutes, args.seed, period_s=args.period, settle_minutes=args.settle_minutes
        )
        print(result.table(), flush=True)
        return 1 if result.problems or result.lost else 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
