"""A short storm (bench/storm.py with N = 20, K = 2): twenty recordings copied into the inbox at
once with two watchers on it, one SIGKILLed and restarted while it holds a claim, and an API
tenant posting beside them. Exactly once and nothing lost: every recording gets one job and one
document; every API clip succeeds. No time is asserted (bench/storm.py prints those)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.storm import run_storm
from tests.fixtures.services import _pg_bin
from tests.speech import have_tools


def test_a_short_storm_is_ingested_exactly_once(tmp_path: Path) -> None:
    import shutil

    if shutil.which("redis-server") is None or _pg_bin() is None or not have_tools():
        pytest.skip("needs redis-server, PostgreSQL, ffmpeg and espeak-ng")
    result = run_storm(
        tmp_path,
        recordings=20,
        clips=2,
        watch_interval_s=2.0,
        kill_after_s=0.0,
        timeout_s=300,
        progress=False,
    )
    assert result.killed, "the watcher was never killed"
    assert result.duplicates == 0, result.jobs_per_recording
    assert len(result.jobs_per_recording) == 20, result.jobs_per_recording
    assert result.lost == [], (result.lost, result.killed)
    assert result.api_failed == 0
