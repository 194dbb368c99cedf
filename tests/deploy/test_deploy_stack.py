"""The real images and the real infra/compose.yaml, built and run on this machine, used as a user would.

Builds local base images (no registry: debootstrap + Debian packages, moto's S3 server from PyPI),
builds docker/Dockerfile.api and Dockerfile.cpu-worker on them, brings the stack up with
tests/deploy/stack/compose.test.yaml (which swaps only the registry images and the GPU service), then:
creates an API key in the api container, uploads a recording through the published port, drops another
into the S3 inbox, sees both finish (job API, Flower's API, the outbox), fetches the documents, restarts
the stack (down, up; volumes kept) and finds everything again, and stops a gpu worker mid-window and sees
the window finish on the other. Everything is torn down after, the engine too if this test started it.

docs/operations.md ("Compose, step by step") lists the same steps. Run alone: `make deploy-test`.
Skips only when no engine answers and none can be installed (not root, or no apt).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.deploy import engine as eng
from tests.deploy.deployfiles import ROOT
from tests.speech import Recording

SOURCE = Path(os.environ.get("VOXBATCH_DEPLOY_SOURCE", ROOT)).resolve()
PROJECT = "voxbatch-deploytest"
API = "http://127.0.0.1:8080"
FLOWER = "http://127.0.0.1:5555"
# Per stand-in vLLM answer. A window makes two calls, so it lasts well past Celery's 5 s soft shutdown:
# a worker stopped just after the window started cannot finish it and must hand it back.
LATENCY_S = "8"
STOP_GRACE_S = "10"
WAIT_S = 420.0
INBOX_KEY = "inbox/deploy-test/dropped-talk.wav"
# The outbox folder is named after the recording (with or without its extension, as the watcher names it).
OUTBOX_PREFIX = "outbox/deploy-test/dropped-talk"
T = TypeVar("T")


def wait_until(
    what: str, probe: Callable[[], T | None], timeout_s: float = WAIT_S, every_s: float = 1.0
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(every_s)


class Stack:
    """`docker-compose -f infra/compose.yaml -f tests/deploy/stack/compose.test.yaml --env-file ENV`."""

    def __init__(self, env_file: Path) -> None:
        self.env_file = env_file
        self.base = [
            *eng.compose_cli(),
            "-p",
            PROJECT,
            "-f",
            str(SOURCE / "infra" / "compose.yaml"),
            "-f",
            str(SOURCE / "tests" / "deploy" / "stack" / "compose.test.yaml"),
            "--env-file",
            str(env_file),
        ]
        self.values = dict(
            line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and line[0] != "#"
        )

    def run(
        self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "STANDIN_LATENCY_S": LATENCY_S, "DOCKER_BUILDKIT": "1"}
        env["PATH"] = "/usr/bin:" + env.get("PATH", "")  # Debian's docker client first
        done = subprocess.run(
            [*self.base, *args], input=input, capture_output=True, timeout=timeout, env=env, check=False
        )
        if check and done.returncode != 0:
            pytest.fail(f"compose {' '.join(args)} failed:\n{done.stderr.decode(errors='replace')[-4000:]}")
        return done

    def exec(self, service: str, *argv: str, input: bytes | None = None) -> bytes:
        return self.run("exec", "-T", service, *argv, input=input).stdout

    def containers(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).stdout.decode().split()

    def up(self) -> None:
        self.run("up", "-d", "--no-build", "--remove-orphans")
        self.wait_healthy()

    def wait_healthy(self) -> None:
        healthy = ["api", "flower", "gpu-standin-1", "gpu-standin-2", "redis", "postgres", "s3"]
        running = ["cpu-worker", "watcher"]

        def state() -> bool | None:
            for service in healthy + running:
                ids = self.containers(service)
                if not ids:
                    return None
                fmt = "{{.State.Running}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
                out = eng.docker("inspect", "-f", fmt, ids[0]).stdout.split()
                if out[:1] != ["true"] or (service in healthy and out[1:] != ["healthy"]):
                    return None
            return True

        wait_until("every service running and healthy", state, every_s=2.0)

    def s3(self, script: str, input: bytes | None = None) -> bytes:
        """Python with boto3 in the api container, against the stack's S3 (as a user's `aws s3` would)."""
        prelude = (
            "import os, sys, boto3; "
            "s3 = boto3.client('s3', endpoint_url=os.environ['VOXBATCH_S3_ENDPOINT_URL']); "
        )
        return self.exec("api", "python", "-c", prelude + script, input=input)

    def flower_tasks(self) -> list[dict[str, Any]]:
        user, _, password = self.values["FLOWER_BASIC_AUTH"].partition(":")
        r = httpx.get(f"{FLOWER}/api/tasks", auth=(user, password), timeout=30)
        r.raise_for_status()
        return [dict(task, uuid=uuid) for uuid, task in r.json().items()]


def free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[eng.Engine]:
    with eng.Engine(tmp_path_factory.mktemp("engine")) as e:
        yield e
    assert not e.network_restored(), e.network_restored()


@pytest.fixture(scope="module")
def images(engine: eng.Engine) -> dict[str, float]:
    eng.make_base_images()
    eng.build_app_images(SOURCE)
    return {tag: eng.image_size_mb(tag) for tag in [*eng.APP_IMAGES, *eng.BASES]}


@pytest.fixture(scope="module")
def stack(images: dict[str, float], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for port in (8080, 5555):
        if not free(port):
            pytest.fail(f"port {port} is taken on this machine; the stack publishes it")
    env_file = tmp_path_factory.mktemp("stack") / ".env"
    text = (SOURCE / "infra" / ".env.example").read_text()
    fresh = {
        "COMPOSE_PROJECT_NAME": PROJECT,
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "S3_SECRET_KEY": secrets.token_hex(16),
        "FLOWER_BASIC_AUTH": "admin:" + secrets.token_hex(12),
    }
    for name, value in fresh.items():
        text = re.sub(rf"^{name}=.*$", f"{name}={value}", text, flags=re.M)
    env_file.write_text(text)
    st = Stack(env_file)
    st.run("down", "-v", "--remove-orphans", check=False)
    try:
        st.up()
        yield st
    finally:
        logs = st.run("logs", "--no-color", "--tail", "200", check=False).stdout.decode(errors="replace")
        (env_file.parent / "compose.log").write_text(logs)
        st.run("down", "-v", "--remove-orphans", "--timeout", "30", check=False)


@pytest.fixture(scope="module")
def api_key(stack: Stack) -> str:
    out = stack.exec("api", "voxbatch", "keys", "create", "deploy-test").decode().strip().splitlines()
    return out[-1].strip()


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(key: str, path: Path, window_minutes: int = 1) -> str:
    with path.open("rb") as f:
        r = httpx.post(
            f"{API}/v1/jobs",
            headers=headers(key),
            files={"file": (path.name, f, "application/octet-stream")},
            data={"window_minutes": str(window_minutes)},
            timeout=120,
        )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def job(key: str, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{API}/v1/jobs/{job_id}", headers=headers(key), timeout=30)
    r.raise_for_status()
    return dict(r.json())


def wait_succeeded(key: str, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = job(key, job_id)
        assert body["status"] not in {"failed", "cancelled"}, body
        return body if body["status"] == "succeeded" else None

    return wait_until(f"job {job_id} to succeed", done)


def document(key: str, job_id: str, name: str) -> bytes:
    r = httpx.get(f"{API}/v1/jobs/{job_id}/documents/{name}", headers=headers(key), timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def has_markers(text: str, recording: Recording) -> None:
    missing = [k for k, *_ in recording.markers if f"marker-{k}" not in text]
    assert not missing, f"markers {missing} missing from:\n{text[:2000]}"


def outbox_document(stack: Stack) -> bytes | None:
    script = (
        f"keys = [o['Key'] for o in s3.list_objects_v2(Bucket='voxbatch', Prefix='{OUTBOX_PREFIX}')"
        ".get('Contents', [])]; "
        "k = [k for k in keys if k.endswith(('/document.md', '/error.json'))]; "
        "sys.stdout.buffer.write(s3.get_object(Bucket='voxbatch', Key=k[0])['Body'].read() if k else b'')"
    )
    out = stack.s3(script)
    if not out:
        return None
    assert not out.lstrip().startswith(b"{"), f"the dropped recording failed: {out[:500]!r}"
    return out


# -- the images ---------------------------------------------------------------------------------------


def pem_blocks(data: bytes) -> set[bytes]:
    return {
        b"".join(block.split())
        for block in re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", data, re.S)
    }


@pytest.mark.parametrize("tag", list(eng.APP_IMAGES))
def test_images_run_as_non_root_with_a_health_check_and_carry_no_host_ca_or_secret(
    images: dict[str, float], tag: str
) -> None:
    config = json.loads(eng.docker("image", "inspect", "-f", "{{json .Config}}", tag).stdout)
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"] and config["Healthcheck"]["Test"][0] in {"CMD", "CMD-SHELL"}
    env_names = {item.split("=", 1)[0] for item in config["Env"] or []}
    assert not env_names & {"PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"}
    history = eng.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
    assert not re.search(r"(COPY|ADD)[^\n]*\.(crt|pem)\b", history), history
    assert "BEGIN CERTIFICATE" not in history

    host = eng.host_ca_bundle()
    host_bytes = host.read_bytes() if host else b""
    host_digest = hashlib.sha256(host_bytes).hexdigest()
    files = dict(eng.exported_files(tag))
    image_bundle = files.get("etc/ssl/certs/ca-certificates.crt", b"")
    host_only = pem_blocks(host_bytes) - pem_blocks(image_bundle)
    for path, content in files.items():
        if host_bytes:
            assert hashlib.sha256(content).hexdigest() != host_digest, f"{path} is the host's CA bundle"
        if b"BEGIN CERTIFICATE" in content:
            leaked = pem_blocks(content) & host_only
            assert not leaked, f"{path} holds {len(leaked)} certificate(s) only the host's bundle has"
    assert any(p.endswith("bin/voxbatch") for p in files), "voxbatch is not installed"
    print(f"{tag}: {images[tag]:.0f} MB")


# -- the stack, used as a user would --------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(
    stack: Stack, api_key: str, marker_recording_mp3: Recording, marker_recording: Recording
) -> dict[str, Any]:
    uploaded = upload(api_key, marker_recording_mp3.path)
    stack.s3(
        f"s3.upload_fileobj(sys.stdin.buffer, 'voxbatch', '{INBOX_KEY}')",
        input=marker_recording.path.read_bytes(),
    )
    body = wait_succeeded(api_key, uploaded)
    dropped = wait_until("the dropped recording's document in the outbox", lambda: outbox_document(stack))
    return {"id": uploaded, "job": body, "dropped_md": dropped}


def test_an_uploaded_and_a_dropped_recording_both_become_documents(
    stack: Stack,
    api_key: str,
    finished: dict[str, Any],
    marker_recording_mp3: Recording,
    marker_recording: Recording,
) -> None:
    job_id = finished["id"]
    assert finished["job"]["progress"]["windows_done"] == finished["job"]["progress"]["windows_total"] >= 2
    has_markers(document(api_key, job_id, "transcript.txt").decode(), marker_recording_mp3)
    assert document(api_key, job_id, "document.md").strip()
    json.loads(document(api_key, job_id, "document.json"))
    has_markers(finished["dropped_md"].decode(), marker_recording)

    def reduced() -> set[str] | None:
        jobs = {
            str(t.get("args"))
            for t in stack.flower_tasks()
            if t.get("name") == "voxbatch.reduce" and t.get("state") == "SUCCESS"
        }
        return jobs if len(jobs) >= 2 and any(job_id in a for a in jobs) else None

    wait_until("Flower to show both jobs' reduce tasks succeeded", reduced, timeout_s=60)


def test_after_down_and_up_every_job_and_document_is_still_there(
    stack: Stack, api_key: str, finished: dict[str, Any]
) -> None:
    job_id = finished["id"]
    before = {name: document(api_key, job_id, name) for name in ("document.md", "transcript.txt")}
    stack.run("down")
    stack.up()
    assert job(api_key, job_id)["status"] == "succeeded"
    listed = httpx.get(f"{API}/v1/jobs", headers=headers(api_key), timeout=30).json()
    assert job_id in {j["id"] for j in listed["jobs"]}
    assert {name: document(api_key, job_id, name) for name in before} == before
    assert outbox_document(stack) == finished["dropped_md"]


def test_a_gpu_worker_stopped_mid_window_hands_the_window_to_the_other(
    stack: Stack, api_key: str, marker_recording_mp3: Recording
) -> None:
    names = {}  # container hostname (the part of a Celery worker's name after "@") -> service
    for service in ("gpu-standin-1", "gpu-standin-2"):
        (cid,) = stack.containers(service)
        names[eng.docker("inspect", "-f", "{{.Config.Hostname}}", cid).stdout.strip()] = service

    def host(task: dict[str, Any]) -> str:
        return str(task.get("worker") or "").rpartition("@")[2]

    job_id = upload(api_key, marker_recording_mp3.path)

    def running_window() -> dict[str, Any] | None:
        for task in stack.flower_tasks():
            if (
                task.get("name") == "voxbatch.window"
                and task.get("state") == "STARTED"
                and job_id in str(task.get("args"))
                and host(task) in names
            ):
                return task
        return None

    task = wait_until("a window of the new job to start", running_window, every_s=0.3)
    stopped = names[host(task)]
    # A 10 s grace, shorter than the window: whatever the worker does with SIGTERM, it cannot finish the
    # window itself (its threads are killed with the container), so the window must come back (requeued
    # at the soft shutdown, or through its expired lease and the sweep) and run on the other worker.
    stack.run("stop", "--timeout", STOP_GRACE_S, stopped)
    body = wait_succeeded(api_key, job_id)
    assert body["progress"]["windows_done"] == body["progress"]["windows_total"]
    has_markers(document(api_key, job_id, "transcript.txt").decode(), marker_recording_mp3)

    other = next(w for w, s in names.items() if s != stopped)
    finished_elsewhere = [
        t
        for t in stack.flower_tasks()
        if t.get("name") == "voxbatch.window"
        and t.get("args") == task.get("args")
        and t.get("state") == "SUCCESS"
        and host(t) == other
    ]
    assert finished_elsewhere, f"window {task.get('args')} did not finish on {other}"
    logs = stack.run("logs", "--no-color", stopped).stdout.decode(errors="replace")
    assert "stopping worker" in logs, logs[-3000:]  # the supervisor stops the worker first
