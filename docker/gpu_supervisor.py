"""Runs vLLM and a gpu-queue worker side by side in one container and stops them in the right order.

Start: the server first; the worker only once the server answers its health URL, so no window is
taken from the queue while the model is still loading (that takes minutes for Voxtral-Small).
Stop (SIGTERM/SIGINT): the worker first, with SIGTERM, which Celery turns into a soft shutdown that
puts unfinished windows back on the queue (REMAP_SIGTERM=SIGQUIT); then the server. Each step is
bounded, and whatever is still alive after its bound is killed, so the whole stop fits the grace period
(worker_stop_timeout + server_stop_timeout < terminationGracePeriodSeconds / stop_grace_period).
If either process dies on its own, the other is stopped the same way and the supervisor exits non-zero,
so the orchestrator restarts the pair together.

Usage: gpu_supervisor.py --server "voxbatch vllm --port 8000" --health-url http://127.0.0.1:8000/health
                         --worker "voxbatch worker --queues gpu"
Standard library only: it also runs in images whose Python has nothing else installed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("gpu-supervisor")

POLL_S = 0.5


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop(proc: subprocess.Popen[bytes], name: str, timeout_s: float) -> int:
    """SIGTERM, wait up to timeout_s, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        log.info("stopping %s (pid %d), up to %.0f s", name, proc.pid, timeout_s)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", name, timeout_s)
            proc.kill()
            proc.wait()
    return proc.returncode if proc.returncode is not None else 0


class Supervisor:
    def __init__(
        self,
        server_cmd: Sequence[str],
        worker_cmd: Sequence[str],
        health_url: str,
        ready_timeout_s: float,
        worker_stop_timeout_s: float,
        server_stop_timeout_s: float,
    ) -> None:
        self.server_cmd = list(server_cmd)
        self.worker_cmd = list(worker_cmd)
        self.health_url = health_url
        self.ready_timeout_s = ready_timeout_s
        self.worker_stop_timeout_s = worker_stop_timeout_s
        self.server_stop_timeout_s = server_stop_timeout_s
        self.stopping = threading.Event()

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        log.info("received signal %d; shutting down", signum)
        self.stopping.set()

    def run(self) -> int:
        server = subprocess.Popen(self.server_cmd)
        log.info("started server (pid %d): %s", server.pid, shlex.join(self.server_cmd))
        deadline = time.monotonic() + self.ready_timeout_s
        while not healthy(self.health_url):
            if self.stopping.is_set():
                stop(server, "server", self.server_stop_timeout_s)
                return 0
            if server.poll() is not None:
                log.error("server exited with %d before it was ready", server.returncode)
                return server.returncode or 1
            if time.monotonic() > deadline:
                log.error("server not ready after %.0f s", self.ready_timeout_s)
                stop(server, "server", self.server_stop_timeout_s)
                return 1
            self.stopping.wait(POLL_S)

        # Celery turns SIGTERM into soft shutdown → cold shutdown → requeue of unacked windows.
        worker_env = {**os.environ, "REMAP_SIGTERM": "SIGQUIT"}
        worker = subprocess.Popen(self.worker_cmd, env=worker_env)
        log.info("server ready; started worker (pid %d): %s", worker.pid, shlex.join(self.worker_cmd))

        code = 0
        while not self.stopping.is_set():
            if worker.poll() is not None:
                log.error("worker exited with %d; stopping the server", worker.returncode)
                code = worker.returncode or 1
                break
            if server.poll() is not None:
                log.error("server exited with %d; stopping the worker", server.returncode)
                code = server.returncode or 1
                break
            self.stopping.wait(POLL_S)
        stop(worker, "worker", self.worker_stop_timeout_s)
        stop(server, "server", self.server_stop_timeout_s)
        return code


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="server command line (split like a shell)")
    parser.add_argument("--worker", required=True, help="worker command line (split like a shell)")
    parser.add_argument("--health-url", required=True)
    parser.add_argument("--ready-timeout", type=float, default=3600.0, help="seconds to wait for the model")
    parser.add_argument("--worker-stop-timeout", type=float, default=60.0)
    parser.add_argument("--server-stop-timeout", type=float, default=20.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    supervisor = Supervisor(
        server_cmd=shlex.split(args.server),
        worker_cmd=shlex.split(args.worker),
        health_url=args.health_url,
        ready_timeout_s=args.ready_timeout,
        worker_stop_timeout_s=args.worker_stop_timeout,
        server_stop_timeout_s=args.server_stop_timeout,
    )
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
