"""Shared fixtures live in tests/fixtures/, one module per real dependency they start.

Every test is marked with its tier, the folder it lives in (``core``, ``inprocess``, ``pipeline``,
``adapters``, ``watcher``, ``api``, ``browser``, ``distributed``, ``deploy``, ``realvllm``, ``security``):
``pytest -m "core or inprocess"`` is the fast tier ``make fast`` runs.

No test reads the user's configuration: this module, loaded before any test module, removes every
``VOXBATCH_*`` variable of the shell except the test suite's own switches (``TEST_SWITCHES``), and
each test runs with ``VOXBATCH_DATA_DIR`` naming a directory of its own, so whatever falls back to
the embedded defaults (SQLite, local storage) writes there. tests/inprocess/test_isolation.py
proves it.

The real-vLLM tier is collected only when asked for (``pytest tests/realvllm``, ``make realvllm``):
a plain ``pytest`` collects the other tiers, so a skip means something is missing on this machine.

At the end of a run, the time spent in each tier (setup, call and teardown of its tests) is printed;
``--tier-times FILE`` writes it to FILE too, where ``make test`` reads it back at its end.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = [
    "tests.fixtures.audio",
    "tests.fixtures.vllm",
    "tests.fixtures.s3",
    "tests.fixtures.services",
]

TESTS = Path(__file__).parent
ROOT = TESTS.parent
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
# Variables that steer the test suite, not voxbatch: kept.
TEST_SWITCHES = frozenset({"VOXBATCH_REQUIRE_REALVLLM", "VOXBATCH_DEPLOY_SOURCE"})
# The shell's own VOXBATCH_* variables, removed before any test module is imported.
CLEARED = sorted(n for n in os.environ if n.startswith("VOXBATCH_") and n not in TEST_SWITCHES)
for _name in CLEARED:
    del os.environ[_name]

REALVLLM = TESTS / "realvllm"
_data_dirs = itertools.count()
_tier_seconds: dict[str, float] = {}
_last_teardown = [False]
SESSION_END = "session end"  # shared services stopped after the last test
UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"  # port 1: nothing listens, refused at once


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--tier-times", metavar="FILE", help="write the time spent in each tier to FILE")


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: the tests under tests/{tier}/")


def _asks_for_realvllm(config: pytest.Config) -> bool:
    if os.environ.get("VOXBATCH_REQUIRE_REALVLLM") == "1":
        return True
    for arg in config.args:
        path = Path(str(arg).split("::")[0]).resolve()
        if path == REALVLLM or REALVLLM in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path == REALVLLM and not _asks_for_realvllm(config):
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier(item.path)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


def _tier(path: Path) -> str | None:
    parts = Path(str(path)).relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


@pytest.fixture(autouse=True)
def _own_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A data directory (default database and storage) of the test's own, created on first use."""
    from jobs.settings import get_settings

    path = tmp_path_factory.getbasetemp() / "voxbatch-data" / str(next(_data_dirs))
    monkeypatch.setenv("VOXBATCH_DATA_DIR", str(path))
    # The default broker is a developer's own Redis on 6379 (the API counts event streams there):
    # a test that wants a broker starts its own and names it; the rest reach nothing.
    monkeypatch.setenv("VOXBATCH_BROKER_URL", UNREACHABLE_BROKER)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _core_starts_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The core tier is pure: a test there that starts a tool belongs to a tier that has it."""
    if request.node.get_closest_marker("core") is None:
        return

    def refuse(self: subprocess.Popen[Any], args: Any, *_: Any, **__: Any) -> None:
        raise AssertionError(f"a core test starts no process ({args!r}): move it to the tier of its tool")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # The last test's teardown stops every shared service of the session: not that tier's time.
    _last_teardown[0] = nextitem is None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = _tier(ROOT / report.nodeid.split("::")[0])
    if report.when == "teardown" and _last_teardown[0]:
        tier = SESSION_END
    if tier is not None:
        _tier_seconds[tier] = _tier_seconds.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if not _tier_seconds:
        return
    lines = [
        f"{tier:<14}{_tier_seconds[tier]:8.1f} s" for tier in (*TIERS, SESSION_END) if tier in _tier_seconds
    ]
    terminalreporter.write_sep("-", "time per tier (setup, call and teardown of its tests)")
    for line in lines:
        terminalreporter.write_line(line)
    keep = config.getoption("--tier-times")
    if keep:
        path = Path(keep)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines))
