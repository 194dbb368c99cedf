"""Stalled clients against the API: N tenants upload while M clients hold stalled uploads.

Prints /healthz latency (p50, p99) measured during the stall, the API's memory (RSS of this
process, which runs the API on a thread) before and after, and how many uploads were accepted and
queued. The API runs on loopback with the embedded runtime (SQLite, local storage, ffmpeg); jobs
are queued to a recording dispatcher, not run (no broker here).

    .venv/bin/python -m bench.stalled_clients --tenants 8 --uploads 4 --stalled 60
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from api.app import create_app
from api.cli.server import uvicorn_limits
from api.keys import create_key
from bench.pipeline import InstantEngine
from jobs.db import Database
from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.steps.local import run_local
from jobs.storage import LocalStorage
from tests.speech import Marker, Silence, build_recording
from workers.audio import FfmpegAudio


class _Queue:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, step: object, retry: bool = True) -> None:
        self.sent.append(step)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stall(port: int, key: str) -> socket.socket:
    head = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    ) + b"x" * 300
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n".encode()
        + head
    )
    return sock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--uploads", type=int, default=4, help="uploads per tenant")
    ap.add_argument("--stalled", type=int, default=60)
    ap.add_argument("--probes", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="voxbatch-bench-stall-"))
    settings = Settings(
        data_dir=tmp / "data", request_read_timeout_s=30, max_uploads=256, max_uploads_per_tenant=256
    )
    db = Database(settings.resolved_database_url())
    db.migrate()
    rt = Runtime(
        db=db,
        storage=LocalStorage(tmp / "store"),
        audio=FfmpegAudio(),
        settings=settings,
        engine_factory=InstantEngine,
    )
    queue = _Queue()
    rt.dispatcher = queue  # the Runtime's dispatcher: steps are kept, not sent to a broker
    rec = build_recording([Silence(1.0), Marker(1), Silence(3.0)], tmp / "r.flac").path
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, rt), host="127.0.0.1", port=free, log_config=None, **uvicorn_limits(settings)
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    before = rss_mb()
    mallory = create_key(db, "mallory")
    socks = [stall(free, mallory) for _ in range(args.stalled)]
    time.sleep(1.0)
    accepted: list[str] = []
    refused: list[int] = []

    def tenant(i: int) -> None:
        key = create_key(db, f"tenant-{i}")
        with httpx.Client(base_url=f"http://127.0.0.1:{free}", timeout=60) as c:
            for _ in range(args.uploads):
                r = c.post(
                    "/v1/jobs",
                    headers={"Authorization": f"Bearer {key}"},
                    files={"file": ("r.flac", rec.read_bytes())},
                )
                (accepted.append(r.json()["id"]) if r.status_code == 202 else refused.append(r.status_code))

    workers = [threading.Thread(target=tenant, args=(i,)) for i in range(args.tenants)]
    for w in workers:
        w.start()
    lat: list[float] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{free}", timeout=30) as c:
        for _ in range(args.probes):
            t0 = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            lat.append(time.perf_counter() - t0)
    for w in workers:
        w.join()
    after = rss_mb()
    for s in socks:
        s.close()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    queued = {s.job_id for s in queue.sent}  # type: ignore[attr-defined]
    print(f"stalled clients {args.stalled}, tenants {args.tenants} x {args.uploads} uploads")
    print(f"/healthz during the stall: p50 {statistics.median(lat) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    print(f"API memory: {before:.0f} MB before, {after:.0f} MB after ({after / before:.2f}x)")
    print(
        f"uploads accepted {len(accepted)}, refused {len(refused)} {sorted(set(refused))}; "
        f"every accepted job queued: {set(accepted) <= queued}"
    )
    server.should_exit = True
    # Nothing lost: every accepted upload becomes its documents.
    finished = 0
    for job_id in accepted:
        job = run_local(rt, job_id)
        finished += job.status == "succeeded" and rt.storage.exists(job.output_prefix + "document.json")
    print(f"accepted jobs run to their documents afterwards: {finished} of {len(accepted)}")


if __name__ == "__main__":
    main()
