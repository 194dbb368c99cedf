"""Process supervision for ``voxbatch up``: one machine runs everything in the foreground.

``SERVICES`` is the list of what ``up`` starts, in start order (stopped in reverse); each entry turns
the ``UpOptions`` into a command line, or ``None`` when it does not apply. Add the API and the
drop-folder watcher there. Redis is started first, only when nothing answers at the broker URL,
with AOF on and ``noeviction`` (queued messages are ordinary keys: they must survive a restart and
never be evicted).

Children run in their own sessions, so a Ctrl-C in the terminal reaches only ``up``, which then
stops them in order: workers get SIGTERM (remapped to SIGQUIT: running windows go back to the
queue at once), Redis goes last so that the workers can still hand their messages back.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import redis

from jobs.errors import InputError
from jobs.settings import Settings
from workers.celery_app import CPU_QUEUE, GPU_QUEUE, QUEUES, SOFT_SHUTDOWN_S, THREADS_POOL

log = logging.getLogger(__name__)

CELERY = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
STOP_GRACE_S = SOFT_SHUTDOWN_S + 20.0
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


# --- command lines ------------------------------------------------------------------------------


def parse_queues(text: str) -> list[str]:
    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise InputError(f"--queues takes cpu, gpu or cpu,gpu, not {text!r}")
    return list(dict.fromkeys(queues))


def worker_argv(queues: list[str], concurrency: int, loglevel: str = "INFO") -> list[str]:
    """A Celery worker: threads for the gpu queue (vLLM calls are I/O), prefork for cpu only."""
    # "custom" is Celery's threads pool with a working cold shutdown (see ThreadsPool).
    pool = "custom" if GPU_QUEUE in queues else "prefork"
    name = f"{'-'.join(queues)}.{os.getpid()}@%h"
    return [
        *CELERY,
        "worker",
        "--queues",
        ",".join(queues),
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--hostname",
        name,
        "--loglevel",
        loglevel,
        "--task-events",
        "--without-mingle",
        "--without-gossip",
    ]


def worker_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    # SIGTERM becomes a cold shutdown after the soft period: running windows are requeued at
    # once instead of the worker waiting for them (or being SIGKILLed by the orchestrator).
    env["REMAP_SIGTERM"] = "SIGQUIT"
    env["CELERY_CUSTOM_WORKER_POOL"] = THREADS_POOL
    return env


def flower_argv(address: str, port: int) -> list[str]:
    """Flower's command line: no password in it (argv is visible to every user and in logs)."""
    return [*CELERY, "flower", f"--address={address}", f"--port={port}"]


def flower_env(basic_auth: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Flower's environment: the password goes in FLOWER_BASIC_AUTH, which Flower reads itself."""
    env = dict(os.environ if base is None else base)
    env.pop("FLOWER_BASIC_AUTH", None)
    if basic_auth:
        env["FLOWER_BASIC_AUTH"] = basic_auth
    return env


def check_basic_auth(value: str) -> str:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise InputError("VOXBATCH_FLOWER_BASIC_AUTH must look like user:password")
    if "," in value:
        # Flower splits its basic-auth option on commas (several users): the login would never match.
        raise InputError("VOXBATCH_FLOWER_BASIC_AUTH must not contain a comma (Flower splits users on it)")
    return value


# --- what `up` runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UpOptions:
    settings: Settings
    cpu_concurrency: int
    gpu_concurrency: int
    flower_port: int
    flower_address: str
    flower_basic_auth: str
    # How to start this installation's own `voxbatch` command (the CLI in api/ decides).
    voxbatch_cli: tuple[str, ...]
    api_port: int = 8000


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: Callable[[UpOptions], list[str] | None]
    env: Callable[[UpOptions], dict[str, str]] = field(default=lambda _: dict(os.environ))


def watch_argv(options: UpOptions) -> list[str] | None:
    """The drop-folder watcher's command line; None when no drop folder is configured."""
    if not options.settings.drop_url:
        return None
    return [*options.voxbatch_cli, "watch"]


def api_env(options: UpOptions) -> dict[str, str]:
    env = dict(os.environ)
    # The API links each job to its tasks in the Flower that `up` starts beside it.
    env.setdefault("VOXBATCH_FLOWER_URL", f"http://127.0.0.1:{options.flower_port}")
    return env


SERVICES: list[ServiceSpec] = [
    ServiceSpec("cpu-worker", lambda o: worker_argv([CPU_QUEUE], o.cpu_concurrency), lambda _: worker_env()),
    ServiceSpec("gpu-worker", lambda o: worker_argv([GPU_QUEUE], o.gpu_concurrency), lambda _: worker_env()),
    ServiceSpec(
        "flower",
        lambda o: flower_argv(o.flower_address, o.flower_port),
        lambda o: flower_env(o.flower_basic_auth),
    ),
    ServiceSpec("watcher", watch_argv),
    ServiceSpec("api", lambda o: [*o.voxbatch_cli, "api", "--port", str(o.api_port)], api_env),
]


# --- redis --------------------------------------------------------------------------------------


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return bool(client.ping())
    except redis.RedisError:
        return False


def redis_argv(url: str, data_dir: Path) -> list[str]:
    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS:
        raise InputError(
            f"nothing answers at the broker URL on {parts.hostname}; `voxbatch up` starts Redis only "
            "on this machine (localhost)"
        )
    exe = shutil.which("redis-server")
    if exe is None:
        raise InputError("redis-server is not installed (apt-get install redis-server)")
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        exe,
        "--bind",
        "127.0.0.1",
        "--port",
        str(parts.port or 6379),
        "--dir",
        str(data_dir.resolve()),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--save",
        "",
    ]


# --- supervision --------------------------------------------------------------------------------


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]


class Supervisor:
    """Starts services in order, watches them, stops them in reverse order on a signal or a crash."""

    def __init__(self) -> None:
        self.running: list[Running] = []
        self._stop_requested = False

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Running:
        log.info("starting %s: %s", name, " ".join(argv))
        # Own session: the terminal's Ctrl-C goes to us only; we stop children in order.
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
        run = Running(name, proc)
        self.running.append(run)
        return run

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.warning("%s: stopping everything", signal.Signals(signum).name)
        self._stop_requested = True

    def watch(self, poll_s: float = 0.5) -> int:
        """Block until a signal or until a service exits on its own; returns the exit code for up."""
        while not self._stop_requested:
            for run in self.running:
                code = run.process.poll()
                if code is not None:
                    log.error("%s exited with code %s; stopping the others", run.name, code)
                    self.stop_all()
                    return 1
            time.sleep(poll_s)
        self.stop_all()
        return 0

    def stop_all(self) -> None:
        """SIGTERM to every service at once, Redis last: workers hand their messages back first."""
        tiers = [
            [r for r in self.running if r.name != "redis"],
            [r for r in self.running if r.name == "redis"],
        ]
        for tier in tiers:
            for run in tier:
                if run.process.poll() is None:
                    run.process.terminate()
            deadline = time.monotonic() + STOP_GRACE_S
            for run in tier:
                try:
                    run.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0f s; killing it", run.name, STOP_GRACE_S)
                    run.process.kill()
                    run.process.wait()
                log.info("%s stopped", run.name)
        self.running.clear()


def wait_for_redis(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not redis_answers(url, 0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise InputError(f"redis-server did not start on {url}")
        time.sleep(0.1)


def run_up(options: UpOptions, notify: Callable[[str], None]) -> int:
    """Everything on this machine in the foreground; returns when stopped (0) or a service died (1)."""
    sup = Supervisor()
    previous = {sig: signal.signal(sig, sup.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = options.settings.broker_url
        if redis_answers(url):
            notify(f"using the Redis that answers at {url}")
        else:
            run = sup.start("redis", redis_argv(url, options.settings.data_dir / "redis"))
            wait_for_redis(url, run.process)
            notify(f"started redis-server for {url} (AOF in {options.settings.data_dir / 'redis'})")
        for spec in SERVICES:
            argv = spec.argv(options)
            if argv is not None:
                sup.start(spec.name, argv, spec.env(options))
        notify(
            f"flower on http://{options.flower_address}:{options.flower_port}/ "
            f"(user {options.flower_basic_auth.split(':', 1)[0]}); Ctrl-C stops everything"
        )
        return sup.watch()
    except BaseException:
        sup.stop_all()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
