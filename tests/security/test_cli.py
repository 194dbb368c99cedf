"""`voxbatch run` with hostile paths: an unwritable output folder, names with newlines, a renamed copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.local import job_for_file
from tests.speech import Recording

VOXBATCH = [sys.executable, "-m", "api.cli"]


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
    env.update(VOXBATCH_DATA_DIR=str(tmp / "data"), VOXBATCH_ENGINE="offline")
    return env


def _unwritable(tmp: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permissions: use a folder no one can create files in
        return Path("/proc/self/voxbatch-out")
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked / "out"


def test_an_unwritable_output_dir_is_one_line_and_exit_2_before_any_work(
    tmp_path: Path, tones: Recording
) -> None:
    out = _unwritable(tmp_path)
    done = subprocess.run(
        [*VOXBATCH, "run", str(tones.path), "--output-dir", str(out)],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--output-dir" in lines[0], done.stderr
    assert not (tmp_path / "data").exists()  # no job, no database


def test_an_output_dir_with_a_newline_is_refused(tmp_path: Path, tones: Recording) -> None:
    done = subprocess.run(
        [*VOXBATCH, "run", str(tones.path), "--output-dir", str(tmp_path / "a\nb")],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_a_recording_named_with_a_newline_gets_a_one_line_default_path(
    tmp_path: Path, tones: Recording
) -> None:
    from api.cli.run import default_output_dir

    out = default_output_dir(tmp_path / "talk\nrm -rf.flac")
    assert "\n" not in str(out) and "\r" not in str(out)


def test_a_different_file_with_the_same_bytes_is_a_different_job(
    rt: Runtime, tmp_path: Path, tones: Recording
) -> None:
    first = tmp_path / "board meeting.flac"
    second = tmp_path / "holiday party.flac"
    shutil.copyfile(tones.path, first)
    shutil.copyfile(tones.path, second)
    job1, _ = job_for_file(rt, first, JobOptions())
    job2, _ = job_for_file(rt, second, JobOptions())
    assert job1.id != job2.id
    assert job2.source_name == "holiday party.flac"
    again, _ = job_for_file(rt, first, JobOptions())
    assert again.id == job1.id  # the same file still resumes
