"""Cancel during a split: the split stops at the next window, and nothing is enqueued after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.errors import JobCancelled
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.ending import cancel
from jobs.steps.next import next_steps
from jobs.steps.split import split_job
from tests.inprocess.conftest import RecordingDispatcher
from tests.speech import Recording
from workers import submission


def test_cancel_stops_a_running_split_and_nothing_is_enqueued(
    rt: Runtime, tones: Recording, dispatcher: RecordingDispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = submission.submit(rt, str(tones.path), JobOptions())
    dispatcher.sent.clear()
    real_split = rt.audio.split
    made: list[int] = []

    def split_then_cancel(
        src: str, out: Path, window_s: float, keep: bool = False, skip_windows: int = 0
    ) -> Iterator[object]:
        for w in real_split(src, out, window_s, keep, skip_windows):
            made.append(w.index)
            if w.index == 0:
                cancel(rt, job.id)  # a user's cancel lands while the split runs
            yield w

    monkeypatch.setattr(rt.audio, "split", split_then_cancel)
    with pytest.raises(JobCancelled):
        split_job(rt, job.id)
    assert made == [0]  # stopped at the next window, not after the whole recording
    after = rt.store.get(job.id)
    assert after.status == "cancelled" and after.windows_total is None
    assert next_steps(rt, job.id) == []
    submission.enqueue_next(rt, job.id)
    assert dispatcher.sent == []  # no window is ever enqueued for it
