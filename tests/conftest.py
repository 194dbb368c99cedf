"""Shared fixtures live in tests/fixtures/, one module per real dependency they start.

Every test is marked with its tier, the folder it lives in (``core``, ``inprocess``, ``pipeline``,
``adapters``, ``watcher``, ``api``, ``browser``, ``distributed``, ``deploy``, ``realvllm``, ``security``):
``pytest -m "core or inprocess"`` is the fast tier ``make fast`` runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.audio",
    "tests.fixtures.vllm",
    "tests.fixtures.s3",
    "tests.fixtures.services",
]

TESTS = Path(__file__).parent
TIERS = (
    "core",
    "inprocess",
    "pipeline",
    "adapters",
    "watcher",
    "api",
    "browser",
    "distributed",
    "deploy",
    "realvllm",
    "security",
)


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: the tests under tests/{tier}/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.path)).relative_to(TESTS).parts
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
