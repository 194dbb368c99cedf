"""The deployment files and the operations guide stand on their own, and the guide's compose section
names what the deploy test runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy import engine
from tests.deploy.deployfiles import ROOT

OPERATIONS = ROOT / "docs" / "operations.md"
# The deployment's files and its guide (other guides in docs/ belong to their own tiers).
OWN_FILES = sorted(
    [
        p
        for folder in ("docker", "infra")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    + [OPERATIONS]
)


@pytest.mark.parametrize("path", OWN_FILES, ids=[str(p.relative_to(ROOT)) for p in OWN_FILES])
def test_no_reference_outside_the_repository(path: Path) -> None:
    text = path.read_text(errors="replace")
    assert not re.search(r"(?<![\w/.])shared/|/work/|\.\./\.\./", text), f"{path} cites a file users lack"


def compose_section() -> str:
    text = OPERATIONS.read_text()
    start = text.index("## Compose, step by step")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_the_compose_section_lists_the_steps_the_deploy_test_runs() -> None:
    section = compose_section()
    for dockerfile in engine.APP_IMAGES.values():
        assert f"-f {dockerfile}" in section
    for step in (
        "voxbatch keys create",
        "/v1/jobs",
        "/documents/document.md",
        "s3://voxbatch/inbox/",
        "/api/tasks",
        "down`, then `$COMPOSE up -d`",
        "stop --timeout 10 gpu-worker",
        "--secret id=pip_ca",
        "tests/deploy/stack/compose.test.yaml",
    ):
        assert step in section, step


def test_the_image_sizes_are_recorded() -> None:
    text = OPERATIONS.read_text()
    for image in ("voxbatch-api", "voxbatch-cpu-worker"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{image}`"))
        assert re.search(r"\d+ MB", row), row
