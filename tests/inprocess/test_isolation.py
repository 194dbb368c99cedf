"""No test reads the user's configuration (tests/conftest.py): the suite run with the shell's
``VOXBATCH_*`` variables naming a database and a store of the user's leaves both untouched."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, TEST_SWITCHES, UNREACHABLE_BROKER

# Tests that once wrote into the database the shell's VOXBATCH_DATABASE_URL names.
SUBSET = [
    "tests/inprocess/test_api.py",
    "tests/inprocess/test_steps.py::test_the_sweep_enqueues_the_work_of_a_job_whose_messages_were_lost",
]


def _contents(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(directory.rglob("*"))
    }


def test_only_the_suites_own_voxbatch_variables_are_set() -> None:
    ours = {n for n in os.environ if n.startswith("VOXBATCH_")} - TEST_SWITCHES
    assert ours == {"VOXBATCH_DATA_DIR", "VOXBATCH_BROKER_URL"}
    assert Path(os.environ["VOXBATCH_DATA_DIR"]).resolve() != (ROOT / "voxbatch-data").resolve()
    assert os.environ["VOXBATCH_BROKER_URL"] == UNREACHABLE_BROKER  # never a developer's own Redis


def test_the_suite_leaves_the_users_database_and_store_untouched(tmp_path: Path) -> None:
    user = tmp_path / "user"
    (user / "store" / "jobs" / "theirs" / "output").mkdir(parents=True)
    (user / "store" / "jobs" / "theirs" / "output" / "document.md").write_text("# the user's document\n")
    database = user / "voxbatch.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE job (id TEXT PRIMARY KEY, status TEXT)")
        db.execute("INSERT INTO job VALUES ('theirs', 'succeeded')")
    db.close()
    before = _contents(user)
    env = {
        **os.environ,
        # What a shell configured as the README says holds, plus one of each kind of setting.
        "VOXBATCH_DATABASE_URL": f"sqlite:///{database}",
        "VOXBATCH_STORAGE_URL": (user / "store").as_uri(),
        "VOXBATCH_DATA_DIR": str(user / "data"),
        "VOXBATCH_BROKER_URL": "redis://127.0.0.1:1/0",
        "VOXBATCH_WINDOW_MINUTES": "7",
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "t"),
            *SUBSET,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
    assert _contents(user) == before
