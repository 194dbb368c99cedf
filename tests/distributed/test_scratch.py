"""Temporary files of a worker that was SIGKILLed (found by the chaos soak, bench/soak.py): its
window's scratch folder (the window's FLAC, its segments) stays in TMPDIR, and every kill leaves
one more until the disk is full. A worker keeps its temporary files under a folder of its own and,
starting, removes the folders of dead workers of its host."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.distributed.conftest import Stack
from tests.distributed.test_workers import ALL_MARKERS, WINDOW, running_window
from tests.fixtures.services import wait_until
from tests.speech import Recording


def test_a_sigkilled_workers_temporary_files_are_removed_by_the_next_worker(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    scratch = tmp_path / "worker-tmp"
    scratch.mkdir()
    stack = stack_factory({"hold_markers": ALL_MARKERS}, TMPDIR=str(scratch), VOXBATCH_LEASE_SECONDS="6")
    c = stack.cluster
    c.start_worker("cpu", 1)
    victim = c.start_worker("gpu", 1)
    job_id = c.submit(marker_recording.path, *WINDOW)
    rt = c.runtime()
    wait_until(lambda: running_window(rt, job_id, victim.pid), 60, "a window on the victim")
    wait_until(lambda: any(p.name.startswith(f"voxbatch-{job_id}-") for p in scratch.rglob("*")), 30,
               "the window's scratch folder")  # fmt: skip
    c.signal_worker(victim, signal.SIGKILL)
    victim.process.wait(10)
    assert any(p.name.startswith(f"voxbatch-{job_id}-") for p in scratch.rglob("*"))

    c.start_worker("gpu", 1)
    stack.vllm.release()
    waited = c.wait(job_id, 120)
    assert waited.returncode == 0, (waited.stderr, c.logs())
    c.stop()
    left = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*"))
    assert left == [], left


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_split_that_finds_the_temporary_disk_full_is_retried_not_failed(
    stack_factory: Callable[..., Stack], marker_recording: Recording, tmp_path: Path
) -> None:
    """Found by the soak: a full temporary disk failed the job for good ("internal error in
    voxbatch.split: LibsndfileError(157, '')"); it is a transient condition, retried like one."""
    scratch = tmp_path / "small-tmp"
    scratch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(scratch)], check=True)
    try:
        stack = stack_factory(TMPDIR=str(scratch))
        c = stack.cluster
        cpu = c.start_worker("cpu", 1)
        c.start_worker("gpu", 2)
        filler = scratch / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        job_id = c.submit(marker_recording.path, *WINDOW)
        wait_until(lambda: "splitting into windows" in cpu.text(), 60, "the split to start")
        wait_until(lambda: "retry" in cpu.text().lower() or "failed" in cpu.text(), 60, "the split to fail")
        time.sleep(1)
        filler.unlink()
        waited = c.wait(job_id, 180)
        assert waited.returncode == 0, (waited.stdout, waited.stderr, c.logs())
        c.stop()
    finally:
        subprocess.run(["umount", "-l", str(scratch)], check=False)
