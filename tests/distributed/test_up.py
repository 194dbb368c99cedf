"""`voxbatch up` as an operator runs it: one command, everything in the foreground, Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.documents import check_document
from tests.fixtures.services import VOXBATCH, free_port, wait_until
from tests.speech import Recording
from tests.standins.vllm_server import StandInVLLM


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def vllm() -> Iterator[StandInVLLM]:
    with StandInVLLM() as server:
        yield server


def test_up_starts_everything_runs_a_job_and_ctrl_c_stops_it_all(
    tmp_path: Path, vllm: StandInVLLM, marker_recording: Recording
) -> None:
    redis_port, flower_port, api_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
    env.update(
        VOXBATCH_DATA_DIR=str(tmp_path / "data"),
        VOXBATCH_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        VOXBATCH_VLLM_URL=vllm.url,
        VOXBATCH_FLOWER_BASIC_AUTH="ops:secret",
    )
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [*VOXBATCH, "up", "--flower-port", str(flower_port), "--api-port", str(api_port),
         "--cpu-concurrency", "1", "--gpu-concurrency", "2"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    text = lambda: (tmp_path / "up.log").read_text(errors="replace")  # noqa: E731
    try:
        # No Redis answered at the broker URL, so `up` started one.
        wait_until(lambda: answers(redis_port), 30, "the redis-server `up` starts")
        wait_until(lambda: answers(api_port) and answers(flower_port), 90, "the API and Flower")
        wait_until(lambda: text().count(" ready.") >= 2, 60, "the cpu and gpu workers")
        assert "started redis-server" in text()

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*VOXBATCH, *args], env=env, cwd=tmp_path, capture_output=True,
                                  text=True, timeout=180)  # fmt: skip

        job_id = cli("submit", str(marker_recording.path), "--window-minutes", "1").stdout.splitlines()[-1]
        waited = cli("wait", job_id, "--timeout", "150")
        assert waited.returncode == 0, (waited.stdout, waited.stderr, text()[-3000:])
        assert cli("fetch", job_id, "--output-dir", str(tmp_path / "out")).returncode == 0
        check_document(tmp_path / "out", marker_recording)
        key = cli("keys", "create", "acme").stdout.strip().splitlines()[-1]
        health = httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=10)
        assert health.status_code == 200, health.text
        tasks = httpx.get(f"http://127.0.0.1:{flower_port}/api/tasks", params={"search": job_id},
                          auth=("ops", "secret"), timeout=10)  # fmt: skip
        assert tasks.status_code == 200 and tasks.json(), tasks.text
        assert httpx.get(f"http://127.0.0.1:{api_port}/v1/jobs",
                         headers={"Authorization": f"Bearer {key}"}).status_code == 200  # fmt: skip
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the whole group
        try:
            code = up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
        log.close()
    assert code == 0, text()[-3000:]
    for port in (redis_port, api_port, flower_port):
        assert not answers(port), f"port {port} still answers after Ctrl-C"
    assert subprocess.run(["pgrep", "-g", str(up.pid)], capture_output=True).stdout == b""
