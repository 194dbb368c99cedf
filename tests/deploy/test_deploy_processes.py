"""The gpu supervisor, the health check and the bucket setup, run as real processes and servers."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import boto3
import pytest

from tests.deploy.deployfiles import DOCKER

ROLE = textwrap.dedent(
    """
    import os, signal, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    role, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]

    def note(text):
        with open(log, "a") as f:
            f.write(text + "\\n")

    def on_term(signum, frame):
        note(role + "-term")
        if mode == "ignore-term" and role == "worker":
            return
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    note(role + "-start " + os.environ.get("REMAP_SIGTERM", "-"))
    if role == "server":
        if mode == "server-dies":
            sys.exit(7)
        class Health(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/health" else 404)
                self.end_headers()
            def log_message(self, *args):
                pass
        HTTPServer(("127.0.0.1", int(sys.argv[4])), Health).serve_forever()
    if mode == "worker-crashes":
        sys.exit(3)
    while True:
        time.sleep(0.05)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.05)


def start_supervisor(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    role = tmp_path / "role.py"
    role.write_text(ROLE)
    log = tmp_path / "log"
    log.touch()
    port = free_port()
    py = sys.executable
    proc = subprocess.Popen(
        [
            py, str(DOCKER / "gpu_supervisor.py"),
            "--server", f"{py} {role} server {log} {mode} {port}",
            "--worker", f"{py} {role} worker {log} {mode}",
            "--health-url", f"http://127.0.0.1:{port}/health",
            "--worker-stop-timeout", "2", "--server-stop-timeout", "5", "--ready-timeout", "60",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    return proc, log


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_sigterm_stops_the_worker_first_then_the_server(tmp_path: Path) -> None:
    proc, log = start_supervisor(tmp_path, "normal")
    wait_for(lambda: any(line.startswith("worker-start") for line in lines(log)))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # The worker started only after the server answered, with Celery's SIGTERM remap.
    assert lines(log) == ["server-start -", "worker-start SIGQUIT", "worker-term", "server-term"]


def test_a_worker_that_ignores_sigterm_is_killed_and_the_server_still_stops(tmp_path: Path) -> None:
    proc, log = start_supervisor(tmp_path, "ignore-term")
    wait_for(lambda: any(line.startswith("worker-start") for line in lines(log)))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert lines(log)[-2:] == ["worker-term", "server-term"]
    assert "did not stop" in (proc.stdout.read() if proc.stdout else "")


def test_a_crashed_worker_takes_the_server_down_with_its_exit_code(tmp_path: Path) -> None:
    proc, log = start_supervisor(tmp_path, "worker-crashes")
    assert proc.wait(timeout=30) == 3
    assert lines(log) == ["server-start -", "worker-start SIGQUIT", "server-term"]


def test_a_server_that_dies_while_loading_never_starts_the_worker(tmp_path: Path) -> None:
    proc, log = start_supervisor(tmp_path, "server-dies")
    assert proc.wait(timeout=30) == 7
    assert lines(log) == ["server-start -"]


# -- health check -------------------------------------------------------------------------------------


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, DOCKER / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_health_check_passes_on_2xx_and_fails_otherwise(http_server: str) -> None:
    healthcheck = load("healthcheck")
    assert healthcheck.main(["http", f"{http_server}/healthz"]) == 0
    assert healthcheck.main(["http", f"{http_server}/healthz", f"{http_server}/readyz"]) == 1
    assert healthcheck.main(["http", f"http://127.0.0.1:{free_port()}/healthz"]) == 1
    assert healthcheck.main([]) == 2


# -- bucket setup ---------------------------------------------------------------------------------------


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    yield f"http://{host}:{port}"
    server.stop()


def test_s3_init_creates_buckets_with_the_multipart_rule_and_versioning(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_init = load("s3_init")
    for name in [n for n in os.environ if n.startswith("VOXBATCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("VOXBATCH_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("VOXBATCH_STORAGE_URL", "s3://store-bucket/store")
    monkeypatch.setenv("VOXBATCH_DROP_URL", "s3://drop-bucket/inbox/")
    monkeypatch.setenv("VOXBATCH_OUTBOX_URL", "s3://store-bucket/outbox/")
    for _ in range(2):  # idempotent
        assert s3_init.main(["--abort-days", "2", "--versioning", "--wait", "10"]) == 0
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    names = {b["Name"] for b in client.list_buckets()["Buckets"]}
    # The moto server is shared by the session: other tests own the other buckets.
    assert {"store-bucket", "drop-bucket"} <= names
    for bucket in ("store-bucket", "drop-bucket"):
        rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert rules[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}
        assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
