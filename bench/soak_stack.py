"""The parts of the stack as deployed, each restartable and breakable, for bench/soak.py.

Everything listens on 127.0.0.1 and lives under one scratch directory:

* ``Redis``: redis-server with the shipped infra/redis/redis.conf (port, bind, dir and log overridden);
  ``kill()`` is a SIGKILL (the AOF's last second may be lost, as in a crash), ``wipe()`` also removes
  its data (every queued message lost).
* ``Postgres``: one initdb + pg_ctl cluster; ``crash()`` is ``pg_ctl stop -m immediate``.
* ``Moto`` behind ``S3Proxy``: the moto S3 server and a small HTTP proxy in front of it that every
  voxbatch process uses as its S3 endpoint; the proxy answers S3's 503 SlowDown or delays every
  request while told to.
* ``StandIn``: the stand-in vLLM server (tests/standins/vllm_server.py) with a per-request latency;
  ``POST /faults`` makes it answer 503.
* ``Proc``: a ``voxbatch`` process (api, worker, watch) in its own process group, killed with SIGKILL
  to the group (main process and pool children, as when a machine dies) and started again.
* ``Hooks``: a webhook receiver that records every delivery (event id, body).
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.services import free_port

VOXBATCH = str(Path(sys.executable).with_name("voxbatch"))
ROOT = Path(__file__).resolve().parent.parent
REDIS_CONF = ROOT / "infra" / "redis" / "redis.conf"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def wait_for(check: Any, timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def answers(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code < 500
    except httpx.HTTPError:
        return False


# --- redis --------------------------------------------------------------------------------------


@dataclass
class Redis:
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [shutil.which("redis-server") or "redis-server"]
        if REDIS_CONF.exists():
            # The shipped settings (AOF everysec, noeviction, ...); its `dir /data` is checked while
            # the file is read, before --dir applies, so the copy leaves that line out.
            conf = self.directory.parent / "redis.conf"
            lines = REDIS_CONF.read_text().splitlines()
            conf.write_text("\n".join(x for x in lines if not x.strip().startswith("dir ")) + "\n")
            args.append(str(conf))
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--logfile", str(self.directory.parent / "redis.log"), "--maxmemory", "512mb"]
        self.process = subprocess.Popen(args, start_new_session=True)
        wait_for(self.ping, 20, "redis-server")

    def ping(self) -> bool:
        import redis

        return bool(redis.Redis(port=self.port, socket_connect_timeout=0.3).ping())

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def wipe(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
        self.process = None

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)


# --- postgres -----------------------------------------------------------------------------------


class Postgres:
    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed")
        self.bindir = Path(found[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="voxbatch-soak-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.run_as: dict[str, Any] = {}
        self.user = pwd.getpwuid(os.getuid()).pw_name
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            pg = pwd.getpwnam("postgres")
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
            self.run_as = {"user": pg.pw_uid, "group": pg.pw_gid, "extra_groups": []}
            self.user = "postgres"
        subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
             "--no-sync"],
            check=True, capture_output=True, **self.run_as,
        )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
            check=True, capture_output=True, timeout=60, **self.run_as,
        )  # fmt: skip

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300"
        self._ctl("-l", str(self.root / "postgres.log"), "-w", "-o", opts, "start")

    def crash(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._ctl("-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --- S3: moto and a proxy that can fail ---------------------------------------------------------


class Moto:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **AWS_ENV}, start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: answers(f"{self.endpoint}/moto-api/"), 30, "moto")

    def client(self, endpoint: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10, "mode": "standard"}),
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class S3Proxy:
    """Forwards every request to moto; ``mode`` is "ok", "503" (SlowDown) or "slow" (a delay each)."""

    def __init__(self, upstream_port: int, delay_s: float = 2.0) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.mode = "ok"
        self.answered: dict[str, int] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                mode = proxy.mode
                proxy.answered[mode] = proxy.answered.get(mode, 0) + 1
                if mode == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                if mode == "slow":
                    time.sleep(proxy.delay_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    with contextlib.suppress(ConnectionError):  # ffmpeg reads a range, then hangs up
                        self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *args: None  # type: ignore[method-assign]  # clients hanging up
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the stand-in model server ------------------------------------------------------------------


@dataclass
class StandIn:
    log: Path
    latency_s: float = 0.3
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        args = [sys.executable, "-m", "tests.standins.vllm_server", "--port", str(self.port),
                "--latency", str(self.latency_s), "--max-duration-s", "2400",
                "--max-file-mb", "100"]  # fmt: skip
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
            )
        wait_for(lambda: answers(f"{self.url}/models"), 60, "the stand-in vLLM server")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def unavailable(self, on: bool) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/faults", json={"unavailable": on}, timeout=10)


# --- voxbatch processes -------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # (start number, exit status) of each run that ended without the soak killing or stopping it:
    # a crash of its own, which no supervisor here restarts (compose or Kubernetes would).
    exits: list[tuple[int, int]] = field(default_factory=list)
    _ending: bool = False
    # The progress thread's note_exit reads (process, _ending, starts) while the chaos thread kills
    # and starts again: without the lock it saw the killed run's -9 after start() had cleared
    # _ending, and called the soak's own kill "exited on its own" (a 30-minute run did).
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        with self._lock:
            self.starts += 1
            log = self.logs / f"{self.name}.{self.starts}.log"
            with log.open("wb") as out:
                self.process = subprocess.Popen(
                    [VOXBATCH, *self.args], env=self.env, cwd=self.logs, stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            self._ending = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def note_exit(self) -> None:
        """Record this run's exit if it ended on its own (called by the soak's progress thread)."""
        with self._lock:
            code = None if self.process is None else self.process.poll()
            if code is not None and not self._ending and all(n != self.starts for n, _ in self.exits):
                self.exits.append((self.starts, code))

    def kill(self) -> None:
        with self._lock:
            self._ending = True
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        """SIGTERM (a warm shutdown: windows handed back), SIGKILL after 30 s; the group after."""
        with self._lock:
            self._ending = True
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


# --- webhooks -----------------------------------------------------------------------------------


@dataclass
class Delivery:
    at: float
    path: str
    event_id: str | None
    body: bytes


class Hooks:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hooks.lock:
                    hooks.deliveries.append(
                        Delivery(time.time(), self.path, self.headers.get("X-Voxbatch-Event-Id"), body)
                    )
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def by_job(self) -> dict[str, list[Delivery]]:
        out: dict[str, list[Delivery]] = {}
        with self.lock:
            for d in self.deliveries:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    out.setdefault(json.loads(d.body)["job"]["id"], []).append(d)
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
