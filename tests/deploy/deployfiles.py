"""Loads the deployment files (compose, Kubernetes, Dockerfiles) and the CLI they call, for the tests."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose.yaml"
K8S = ROOT / "infra" / "k8s"
DOCKER = ROOT / "docker"
REDIS_CONF = ROOT / "infra" / "redis" / "redis.conf"
DOCKERFILES = {
    "api": DOCKER / "Dockerfile.api",
    "cpu-worker": DOCKER / "Dockerfile.cpu-worker",
    "gpu-worker": DOCKER / "Dockerfile.gpu-worker",
}

# Variables the deployment sets that are not voxbatch settings, and who reads them.
NON_SETTINGS_ENV = {
    "AWS_ACCESS_KEY_ID": "boto3",
    "AWS_SECRET_ACCESS_KEY": "boto3",
    "AWS_DEFAULT_REGION": "boto3",
    "REMAP_SIGTERM": "Celery (SIGTERM → soft shutdown)",
    "HF_TOKEN": "vLLM / huggingface_hub (gated model downloads)",
    "HF_HOME": "huggingface_hub cache location",
    "HOME": "the non-root user's home",
    "PYTHONUNBUFFERED": "Python",
    "PGDATA": "the postgres image",
}


def voxbatch_exe() -> str:
    exe = Path(sys.executable).with_name("voxbatch")
    if exe.exists():
        return str(exe)
    found = shutil.which("voxbatch")
    if found is None:
        pytest.fail("the voxbatch command is not installed (pip install -e .)")
    return found


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
    full_env.update(env or {})
    return subprocess.run(
        [voxbatch_exe(), *args], capture_output=True, text=True, timeout=120, env=full_env, check=False
    )


@dataclass(frozen=True)
class PrintedLaunch:
    env: dict[str, str]
    argv: list[str]


def parse_printed(line: str) -> PrintedLaunch:
    """``A=1 B=2 vllm serve ...`` → its environment and argv."""
    tokens = shlex.split(line)
    env: dict[str, str] = {}
    while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):
        name, _, value = tokens.pop(0).partition("=")
        env[name] = value
    return PrintedLaunch(env=env, argv=tokens)


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def k8s_workloads() -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every Deployment, StatefulSet and Job."""
    for _path, doc in k8s_docs():
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def cli_group() -> click.Group:
    from api.cli import cli

    return cli


def voxbatch_command(argv: list[str]) -> tuple[str, list[str]] | None:
    """``voxbatch NAME ARGS...`` → (NAME, ARGS); None for commands that are not voxbatch's."""
    if not argv or argv[0] != "voxbatch":
        return None
    return argv[1], argv[2:]


def check_voxbatch_command(argv: list[str]) -> None:
    """Parse argv with the real click command: unknown commands or options fail the test."""
    parsed = voxbatch_command(argv)
    assert parsed is not None, argv
    name, args = parsed
    group = cli_group()
    command = group.commands.get(name)
    assert command is not None, (
        f"`voxbatch {name}` is not a command of the CLI ({', '.join(sorted(group.commands))})"
    )
    # make_context parses without running the command: a bad option raises UsageError.
    with command.make_context(name, list(args), parent=None, resilient_parsing=False) as _ctx:
        pass


def option_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    if buf:
        lines.append(buf)
    out = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def exec_form(rest: str) -> list[str]:
    import json

    value = json.loads(rest)
    assert isinstance(value, list), rest
    return [str(v) for v in value]
