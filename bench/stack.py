"""The real parts that bench/fleet.py and bench/storm.py run on, started as an operator would.

* ``distinct_recording``: long recordings made by looping the generated talk (bench/split.py's
  espeak-ng talk) under a slow gain wobble of its own seed (+-0.4 %, inaudible; white noise would
  do it too but doubles the FLAC): every window and every speech segment of every recording is
  different audio, so the stand-in can tell a resent request from a new one. 16 kHz mono FLAC,
  cached under bench/.cache/fleet/.
* ``StandIn``: the stand-in vLLM server (tests/standins/vllm_server.py) as its own process, in GPU
  mode, fast (no decoding), with vLLM's caps raised as infra/ launches it (2400 s, 100 MB);
  restartable on the same port with other faults.
* ``Stack``: redis-server, PostgreSQL, ``voxbatch api`` and ``voxbatch worker`` processes sharing one
  environment (tests/fixtures/services.py's ``Cluster``), tenants and their API keys, uploads
  through the API that wait out 429s as a good client does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.split import CACHE as SPLIT_CACHE
from bench.split import base_talk

CACHE = SPLIT_CACHE / "fleet"
GAIN_DEPTH = 0.004  # +-0.035 dB: inaudible, and no two loops round to the same samples
VOXBATCH = str(Path(sys.executable).with_name("voxbatch"))
ENDED = ("succeeded", "failed", "cancelled")


def _base_wav() -> Path:
    path = CACHE / "talk-base-16k.wav"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part.wav")
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-nostdin",
                "-y",
                "-i",
                str(base_talk()),
                "-ac",
                "1",
                "-ar",
                "16000",
                "-c:a",
                "pcm_s16le",
                str(part),
            ],
            check=True,
        )
        part.rename(path)
    return path


def distinct_recording(seconds: float, seed: int) -> Path:
    """``seconds`` of the looped talk under white noise of ``seed``: 16 kHz mono FLAC, cached."""
    path = CACHE / f"talk-{seconds:g}s-seed{seed}.flac"
    if not path.exists():
        part = path.with_suffix(".part.flac")
        rate = 0.05 + 0.013 * (seed % 97)  # radians per second, one per seed
        gain = f"volume='1+{GAIN_DEPTH}*sin({rate:.4f}*t+{seed % 7})':eval=frame"
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
                str(_base_wav()),
                "-af",
                gain,
                "-t",
                f"{seconds:.3f}",
                "-ac",
                "1",
                "-ar",
                "16000",
                "-sample_fmt",
                "s16",
                "-c:a",
                "flac",
                str(part),
            ],
            check=True,
        )
        part.rename(path)
    return path


def free_port() -> int:
    from tests.fixtures.services import free_port as pick

    return pick()


def wait_http(url: str, timeout_s: float, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer within {timeout_s:g} s")


@dataclass
class StandIn:
    """The stand-in vLLM server in GPU mode, in its own process."""

    log: Path
    cost_scale: float = 1.0
    max_seqs: int = 256
    port: int = field(default_factory=free_port)
    faults: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, **faults: int) -> StandIn:
        self.faults = faults
        args = [
            sys.executable,
            "-m",
            "tests.standins.vllm_server",
            "--port",
            str(self.port),
            "--gpu",
            "--fast",
            "--gpu-cost-scale",
            str(self.cost_scale),
            "--gpu-max-seqs",
            str(self.max_seqs),
            "--max-duration-s",
            "2400",
            "--max-file-mb",
            "100",
        ]
        for name, value in faults.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_http(f"{self.url}/models", 60, "the stand-in vLLM server", self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, **faults: int) -> None:
        self.stop()
        self.start(**faults)

    def stats(self, log: bool = False) -> dict[str, Any]:
        answer = httpx.get(f"http://127.0.0.1:{self.port}/stats", params={"log": log}, timeout=120)
        return dict(answer.json())

    def reset(self) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/stats/reset", timeout=30).raise_for_status()


def as_epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass
class Submitted:
    tenant: str
    job_id: str
    posted_at: float  # epoch seconds when the upload began
    accepted_at: float
    waited_429_s: float = 0.0


class Stack:
    """redis-server, PostgreSQL, the API and workers; everything started here is stopped on exit."""

    def __init__(self, tmp: Path, vllm_url: str, **env: str) -> None:
        self.tmp = tmp
        self.vllm_url = vllm_url
        self.extra_env = env
        self._exit = contextlib.ExitStack()
        self.api_port = 0
        self.api_process: subprocess.Popen[bytes] | None = None
        self.keys: dict[str, str] = {}

    def __enter__(self) -> Stack:
        from tests.fixtures.services import Cluster, RedisServer, running_postgres

        (self.tmp / "redis").mkdir(exist_ok=True)
        self.redis = RedisServer(self.tmp / "redis", free_port())
        self.redis.start()
        self._exit.callback(self.redis.stop)
        postgres = self._exit.enter_context(running_postgres())
        self.database_url = postgres.fresh_database_url()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
        env.update(
            VOXBATCH_DATA_DIR=str(self.tmp / "data"),
            VOXBATCH_BROKER_URL=self.redis.url,
            VOXBATCH_DATABASE_URL=self.database_url,
            VOXBATCH_ENGINE="vllm",
            VOXBATCH_VLLM_URL=self.vllm_url,
            **self.extra_env,
        )
        self.cluster = Cluster(self.tmp, env)
        self._exit.callback(self.cluster.stop)
        self._exit.callback(self._stop_api)
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    @property
    def env(self) -> dict[str, str]:
        return self.cluster.env

    def runtime(self) -> Any:
        if not hasattr(self, "_rt"):
            self._rt = self.cluster.runtime()
        return self._rt

    def start_api(self) -> str:
        self.api_port = free_port()
        with (self.tmp / "api.log").open("wb") as out:
            self.api_process = subprocess.Popen(
                [VOXBATCH, "api", "--port", str(self.api_port)],
                env=self.env,
                cwd=self.tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_http(f"http://127.0.0.1:{self.api_port}/healthz", 60, "voxbatch api", self.api_process)
        return f"http://127.0.0.1:{self.api_port}"

    def _stop_api(self) -> None:
        if self.api_process is not None and self.api_process.poll() is None:
            self.api_process.terminate()
            try:
                self.api_process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.api_process.pid, signal.SIGKILL)
                self.api_process.wait()

    def create_key(self, tenant: str) -> str:
        done = self.cluster.cli("keys", "create", tenant)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        self.keys[tenant] = done.stdout.strip().splitlines()[-1]
        return self.keys[tenant]

    def upload(self, tenant: str, path: Path, **fields: str) -> Submitted:
        """POST /v1/jobs as ``tenant``; a 429 is answered by waiting its Retry-After."""
        posted = time.time()
        waited = 0.0
        with httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=600) as client:
            while True:
                with path.open("rb") as body:
                    answer = client.post(
                        "/v1/jobs",
                        headers={"Authorization": f"Bearer {self.keys[tenant]}"},
                        files={"file": (path.name, body, "audio/flac")},
                        data=fields,
                    )
                if answer.status_code == 429:
                    pause = float(answer.headers.get("Retry-After", "1"))
                    waited += pause
                    time.sleep(pause)
                    continue
                if answer.status_code != 202:
                    raise RuntimeError(f"upload refused: {answer.status_code} {answer.text[:300]}")
                return Submitted(tenant, answer.json()["id"], posted, time.time(), waited)

    def jobs(self, ids: list[str]) -> dict[str, Any]:
        store = self.runtime().store
        return {job_id: store.get(job_id) for job_id in ids}

    def wait_ended(
        self, ids: list[str], timeout_s: float, poll_s: float = 1.0
    ) -> tuple[dict[str, Any], bool]:
        """The jobs once all have ended, or as they are at ``timeout_s`` (and False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = self.jobs(ids)
            if all(str(j.status) in ENDED for j in jobs.values()):
                return jobs, True
            if time.monotonic() > deadline:
                return jobs, False
            time.sleep(poll_s)

    def stuck(self, jobs: dict[str, Any]) -> list[str]:
        """One line per job that has not ended: its state and its windows' states."""
        lines = []
        store = self.runtime().store
        for job_id, job in jobs.items():
            if str(job.status) in ENDED:
                continue
            windows = store.windows(job_id)
            states: dict[str, int] = {}
            for w in windows:
                states[str(w.status)] = states.get(str(w.status), 0) + 1
            lines.append(f"{job_id} {job.status}: windows {states}")
        return lines


@contextlib.contextmanager
def scratch(prefix: str, keep: bool) -> Iterator[Path]:
    if keep:
        yield Path(tempfile.mkdtemp(prefix=prefix))
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)
