"""moto's S3 server with its buckets kept on disk, for the deploy test's compose stack only.

moto keeps everything in memory; this loads the buckets from --state on start and writes them back
every few seconds and on SIGTERM, so the stack's `down` then `up` (volume kept) finds every object.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

LOCK = threading.Lock()


def backend():  # type: ignore[no-untyped-def]
    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def load(path: Path) -> None:
    if not path.exists():
        return
    buckets = pickle.loads(path.read_bytes())
    backend().buckets.update(buckets)
    accounts = getattr(s3_backends, "bucket_accounts", None)
    if isinstance(accounts, dict):
        for name in buckets:
            accounts[name] = DEFAULT_ACCOUNT_ID
    print(f"s3-server: loaded {len(buckets)} bucket(s) from {path}", flush=True)


def save(path: Path) -> None:
    with LOCK:
        data = pickle.dumps(dict(backend().buckets))
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8333)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--save-every", type=float, default=2.0)
    args = parser.parse_args()
    load(args.state)
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    print(f"s3-server: listening on {args.host}:{args.port}", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(args.save_every):
        save(args.state)
    save(args.state)
    server.stop()
    print("s3-server: state saved; stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
