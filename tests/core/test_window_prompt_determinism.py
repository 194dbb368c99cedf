"""A window's prompt is the same whether it runs while the split goes on or after it (found by the
chaos soak, bench/soak.py): windows go to the model as soon as they are cut, so a window that ran
before the split counted the windows was asked about "a whole recording" or "part 2 of 1", and the
same recording's documents differed from run to run with the load."""

from __future__ import annotations

from jobs.models import Job, Window
from jobs.steps.profiled import window_prompt_for


def _windows(duration_s: float, n: int) -> list[Window]:
    step = duration_s / n
    return [
        Window(job_id="j", index=i, start_s=i * step, end_s=min(duration_s, (i + 1) * step)) for i in range(n)
    ]


def test_prompts_do_not_depend_on_whether_the_split_has_counted_the_windows() -> None:
    for duration, n in ((200.0, 4), (150.0, 3), (50.0, 1)):
        # The probe's length while the split goes on (a little off), the decoded one after it.
        during = Job(id="j", source="/x.flac", duration_s=duration + 0.3, windows_total=None)
        after = Job(id="j", source="/x.flac", duration_s=duration, windows_total=n)
        for w in _windows(duration, n):
            assert window_prompt_for(during, w) == window_prompt_for(after, w), (duration, w.index)


def test_a_recordings_only_window_is_asked_for_the_overall_summary_and_others_are_parts() -> None:
    job = Job(id="j", source="/x.flac", duration_s=200.0, windows_total=None)
    first, second = _windows(200.0, 4)[:2]
    assert "a whole recording" not in window_prompt_for(job, first)
    assert "part 1 " in window_prompt_for(job, first) and "part 2 " in window_prompt_for(job, second)
    only = _windows(50.0, 1)[0]
    assert "a whole recording" in window_prompt_for(Job(id="j", source="/x.flac", duration_s=50.0), only)
