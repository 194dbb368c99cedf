"""Real vLLM servers for the tier: where the pieces are, and starting/stopping one on loopback.

Three configurations, each started once per test session when a collected test needs it (start-up
is ~30-45 s on 2 cores; those needed start side by side):

- ``launched``: ``voxbatch vllm`` itself (the launcher's flags and raised caps) serving the tiny
  Voxtral, with what a CPU build needs passed through: the CPU environment (CPU_ENV) and
  ``-- EXTRA_ARGS``;
- ``capped``: the launcher's very argv, but with the audio caps set low in the environment
  (CAPPED_ENV) and an API key, so the real refusals are cheap to provoke with short audio;
- ``qwen2_audio``: ``voxbatch vllm`` serving the tiny Qwen2-Audio (HF format), which selects the
  ``qwen2-audio`` profile's flags, with the same CPU extras (``-- QWEN2_AUDIO_EXTRA_ARGS``).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-vllm"
VLLM_BIN = VENV / "bin" / "vllm"
CHECKPOINT = ROOT / ".cache" / "realvllm" / "tiny-voxtral"
# Its folder name holds "qwen2-audio", so `voxbatch vllm --model` picks that profile from the path.
QWEN2_AUDIO_CHECKPOINT = ROOT / ".cache" / "realvllm" / "tiny-qwen2-audio"
LOG_DIR = ROOT / ".cache" / "realvllm" / "logs"

SERVED_NAME = "mistralai/Voxtral-Small-24B-2507"  # what voxbatch asks for by default
QWEN2_AUDIO_SERVED_NAME = "Qwen/Qwen2-Audio-7B-Instruct"  # VOXBATCH_MODEL selects the profile by it
CHAT_MAX_TOKENS = 32  # random weights never stop: the server caps every chat answer
CPU_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def cpu_args(served_name: str) -> tuple[str, ...]:
    """What follows ``voxbatch vllm ... --`` on a CPU: dtype, eager mode, the name, the chat cap."""
    return (
        "--dtype",
        "bfloat16",
        "--enforce-eager",
        "--served-model-name",
        served_name,
        "--override-generation-config",
        json.dumps({"max_new_tokens": CHAT_MAX_TOKENS}),
    )


EXTRA_ARGS = cpu_args(SERVED_NAME)
QWEN2_AUDIO_EXTRA_ARGS = cpu_args(QWEN2_AUDIO_SERVED_NAME)
# The capped server: vLLM's own cap variables, set low (the defaults are 600 s / 25 MB / 256 MiB).
CAPPED_DURATION_S = 60
CAPPED_FILE_MB = 5
CAPPED_DECODE_BYTES = 8 * 1024 * 1024
CAPPED_API_KEY = "realvllm-test-key"
CAPPED_ENV = {
    "VLLM_MAX_AUDIO_DECODE_DURATION_S": str(CAPPED_DURATION_S),
    "VLLM_MAX_AUDIO_CLIP_FILESIZE_MB": str(CAPPED_FILE_MB),
    "VLLM_MAX_AUDIO_DECODE_BYTES": str(CAPPED_DECODE_BYTES),
    "VLLM_API_KEY": CAPPED_API_KEY,
}
START_TIMEOUT_S = 300.0


def missing() -> list[str]:
    """What the tier needs and does not find (``make realvllm`` provisions all of it)."""
    gaps = []
    if not (VENV / ".installed").is_file() or not VLLM_BIN.is_file():
        gaps.append(f"{VENV.relative_to(ROOT)}/ (vllm-cpu)")
    if not (CHECKPOINT / ".complete").is_file():
        gaps.append(f"{CHECKPOINT.relative_to(ROOT)} (tiny Voxtral checkpoint)")
    if not (QWEN2_AUDIO_CHECKPOINT / ".complete").is_file():
        gaps.append(f"{QWEN2_AUDIO_CHECKPOINT.relative_to(ROOT)} (tiny Qwen2-Audio checkpoint)")
    return gaps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_path_env() -> dict[str, str]:
    """PATH with .venv-vllm/bin first, so ``voxbatch vllm`` finds that ``vllm`` executable.

    ``voxbatch vllm`` also checks that the ``vllm`` package is importable by its own interpreter
    (it expects one environment, as in the gpu image); a folder holding only a link to the
    package satisfies that check without putting the rest of .venv-vllm on voxbatch's path.
    """
    shim = ROOT / ".cache" / "realvllm" / "vllm-spec"
    shim.mkdir(parents=True, exist_ok=True)
    link = shim / "vllm"
    target = Path(sysconfig.get_paths(vars={"base": str(VENV), "platbase": str(VENV)})["purelib"]) / "vllm"
    if not link.is_symlink() or link.resolve() != target.resolve():
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return {
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(shim),
    }


@dataclass
class RealVLLM:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    api_key: str | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metric(self, name: str) -> float:
        """The sum of a Prometheus metric's samples on /metrics (0 when absent)."""
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], port: int, api_key: str | None) -> RealVLLM:
    """Start a server in its own process group, its output in .cache/realvllm/logs/NAME.log."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return RealVLLM(name=name, proc=proc, port=port, log=log, api_key=api_key)


def wait_healthy(servers: Sequence[RealVLLM], timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until every server answers /health 200; raise with its log if one exits or never does."""
    deadline = time.monotonic() + timeout_s
    pending = list(servers)
    while pending:
        for server in list(pending):
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM ({server.name}) exited with {server.proc.returncode}:\n{server.log_tail()}"
                )
            try:
                if httpx.get(f"{server.base}/health", timeout=2).status_code == 200:
                    pending.remove(server)
            except httpx.HTTPError:
                pass
        if pending and time.monotonic() > deadline:
            raise RuntimeError(
                f"vLLM ({pending[0].name}) not healthy after {timeout_s:.0f} s:\n{pending[0].log_tail()}"
            )
        if pending:
            time.sleep(0.5)


def runs_what_voxbatch_vllm_prints(
    server: RealVLLM, checkpoint: Path, extra_args: Sequence[str]
) -> list[str]:
    """Check that ``server`` is the command ``voxbatch vllm --print`` gives for ``checkpoint``, in
    its environment (`voxbatch vllm` exec'd vllm, run by .venv-vllm's python); return that argv."""
    from workers.vllm_launch import REQUIRED_ENV

    printed = subprocess.run(
        [
            sys.executable, "-m", "api.cli", "vllm", "--print", "--model", str(checkpoint),
            "--host", "127.0.0.1", "--port", str(server.port), "--", *extra_args,
        ],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    words = shlex.split(printed)
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-") and w[0].isupper())
    argv = words[len(env) :]
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    assert cmdline[1] == str(VLLM_BIN)
    assert cmdline[2:] == argv[1:]
    raw = Path(f"/proc/{server.proc.pid}/environ").read_bytes().decode()
    environ = dict(e.split("=", 1) for e in raw.split("\0") if e)
    for name in REQUIRED_ENV:
        assert name in env and environ.get(name) == env[name], name
    return argv
