"""A 2 GB upload through the API: peak memory of the API process and throughput against a plain
file copy on the same disk.

    .venv/bin/python -m bench.upload [--gb 2] [--dir /var/tmp]

Starts redis-server and `voxbatch api` (SQLite, local storage under --dir), makes a WAV of the
requested size with ffmpeg, copies it once with shutil (the physical limit: read + write on this
disk), then POSTs it as multipart/form-data with curl and reads the API process's VmHWM (peak
resident memory) from /proc. No worker runs: the job stays queued.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

VOXBATCH = str(Path(sys.executable).with_name("voxbatch"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit("timed out")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_wav(path: Path, size: int) -> None:
    seconds = size / (48_000 * 2 * 2)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
         "sine=frequency=440:sample_rate=48000",
         "-ac", "2", "-t", f"{seconds:.2f}", "-c:a", "pcm_s16le", str(path)],
        check=True,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voxbatch-bench-", dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "big.wav"
        make_wav(src, int(args.gb * 1024**3))
        size = src.stat().st_size

        t = time.perf_counter()
        shutil.copyfile(src, tmp / "copy.wav")
        copy_s = time.perf_counter() - t
        (tmp / "copy.wav").unlink()

        rport, aport = free_port(), free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
        env.update(
            VOXBATCH_DATA_DIR=str(tmp / "data"),
            VOXBATCH_BROKER_URL=f"redis://127.0.0.1:{rport}/0",
            VOXBATCH_MAX_UPLOAD_MB=str(int(args.gb * 1024 + 100)),
        )
        api = subprocess.Popen(
            [VOXBATCH, "api", "--port", str(aport)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{aport}"
            wait(lambda: httpx.get(url + "/healthz").status_code == 200, 60)
            key = subprocess.run(
                [VOXBATCH, "keys", "create", "bench"], env=env, capture_output=True, text=True, check=True
            ).stdout.split()[-1]
            idle_mb = peak_rss_mb(api.pid)
            t = time.perf_counter()
            done = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {key}",
                 "-F", f"file=@{src}", url + "/v1/jobs"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            upload_s = time.perf_counter() - t
            peak_mb = peak_rss_mb(api.pid)
            stored = sum(p.stat().st_size for p in (tmp / "data" / "store").rglob("*.wav"))
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(20)
            redis.terminate()
            redis.wait(10)
        mib = size / 1024**2
        print(f"file                {mib:,.0f} MiB (WAV, probed by ffprobe after the upload)")
        print(f"HTTP status         {done.stdout}  (stored {stored / 1024**2:,.0f} MiB)")
        print(f"plain copy          {copy_s:6.1f} s  {mib / copy_s:7.1f} MiB/s")
        print(f"upload via API      {upload_s:6.1f} s  {mib / upload_s:7.1f} MiB/s")
        print(f"throughput ratio    {copy_s / upload_s:6.2f}  (upload / plain copy)")
        print(f"API peak RSS        {peak_mb:6.1f} MB (idle {idle_mb:.1f} MB; goal < 200 MB)")


if __name__ == "__main__":
    main()
