"""The security tier: the attack corpus of issue 12, each attack sent the way an outsider would,
over loopback only. The API runs in this process (uvicorn on a thread, the in-process runtime:
SQLite, local storage, ffmpeg, a fake engine, no broker)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.app import create_app
from api.cli.server import uvicorn_limits
from api.keys import create_key
from jobs.runtime import Runtime
from tests.inprocess import conftest as inprocess
from tests.inprocess.conftest import FakeEngine, RecordingDispatcher

# The in-process tier's fixtures (runtime on SQLite and local storage, fake engine, tones).
engine = inprocess.engine
make_runtime = inprocess.make_runtime
rt = inprocess.rt
tones = inprocess.tones


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveApi:
    url: str
    host: str
    port: int
    rt: Runtime
    app: Any  # the FastAPI app, for its state (upload slots in use)

    def key(self, tenant: str) -> str:
        return create_key(self.rt.db, tenant)


@pytest.fixture
def dispatcher(monkeypatch: pytest.MonkeyPatch) -> RecordingDispatcher:
    sent = RecordingDispatcher()
    monkeypatch.setattr("workers.dispatch.Dispatcher", lambda settings: sent)
    return sent


@pytest.fixture
def live_api(
    make_runtime: Callable[..., Runtime], dispatcher: RecordingDispatcher
) -> Iterator[Callable[..., LiveApi]]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**settings: object) -> LiveApi:
        rt = make_runtime(**settings)
        port = free_port()
        app = create_app(rt.settings, rt)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            **uvicorn_limits(rt.settings),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        servers.append((server, thread))
        return LiveApi(f"http://127.0.0.1:{port}", "127.0.0.1", port, rt, app)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=15)


def stalled_upload(api: LiveApi, key: str, sent: bytes = b"x" * 300) -> socket.socket:
    """A client that sends a valid upload's headers and a few hundred bytes, then goes idle."""
    boundary = "stall"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body_start = head + sent
    request = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {api.host}:{api.port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {10_000_000}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((api.host, api.port), timeout=30)
    sock.sendall(request + body_start)
    return sock


def read_status(sock: socket.socket) -> int | None:
    """The status code the server answered on ``sock``, or None when it closed without one."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data.split(b" ", 2)[1])


__all__ = ["FakeEngine", "LiveApi", "Path", "read_status", "stalled_upload"]
