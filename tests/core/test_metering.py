"""The meter's choice of the next windows (workers.meter.choose): class first, then fair share by
audio seconds across tenants, then the oldest job and the window's order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobs.models import Priority
from jobs.store import WindowCandidate
from workers.meter import choose

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def windows(
    job: str,
    tenant: str,
    n: int,
    *,
    seconds: float = 1800.0,
    at: int = 0,
    priority: Priority = Priority.interactive,
) -> list[WindowCandidate]:
    return [
        WindowCandidate(
            hash((job, i)) & 0xFFFF, job, i, seconds, tenant, priority, T0 + timedelta(seconds=at)
        )
        for i in range(n)
    ]


def picked(picks: list[WindowCandidate]) -> list[tuple[str, int]]:
    return [(p.job_id, p.index) for p in picks]


def test_a_small_job_goes_next_behind_a_long_backlog_not_after_it() -> None:
    # Tenant A: three 2-hour talks (4 windows each); tenant B, 20 s later, one 5-minute clip.
    backlog = windows("a1", "A", 4) + windows("a2", "A", 4, at=1) + windows("a3", "A", 4, at=2)
    clip = windows("b1", "B", 1, seconds=300.0, at=20)
    # Two of A's windows are already in service: B has none, so B's clip is next.
    picks = choose(backlog + clip, {"A": 3600.0}, 3)
    assert picked(picks) == [("b1", 0), ("a1", 0), ("a1", 1)]


def test_tenants_alternate_by_audio_seconds_not_by_arrival() -> None:
    a = windows("a", "A", 6, seconds=600.0)
    b = windows("b", "B", 3, seconds=1200.0, at=5)
    picks = choose(a + b, {}, 6)
    # A (older) first; then whoever has less audio in service: B's 1200 s window counts double.
    assert picked(picks) == [("a", 0), ("b", 0), ("a", 1), ("a", 2), ("b", 1), ("a", 3)]


def test_interactive_work_goes_before_batch_work_whatever_the_shares() -> None:
    drop = windows("d", "drop", 3, priority=Priority.batch)
    api = windows("x", "acme", 2, at=60)
    picks = choose(drop + api, {"acme": 99_999.0}, 3)
    assert picked(picks) == [("x", 0), ("x", 1), ("d", 0)]


def test_ties_go_to_the_older_job_then_the_window_order() -> None:
    late = windows("late", "A", 2, at=10)
    early = windows("early", "A", 2, at=0)
    assert picked(choose(late + early, {}, 4)) == [("early", 0), ("early", 1), ("late", 0), ("late", 1)]
    # Jobs with no tenant share one tenant of their own ("").
    assert picked(choose(windows("n", "", 2) + windows("t", "T", 1, at=1), {}, 2)) == [("n", 0), ("t", 0)]


def test_nothing_to_choose_or_no_room() -> None:
    assert choose([], {}, 3) == []
    assert choose(windows("a", "A", 2), {}, 0) == []


def test_relayed_steps_go_interactive_and_short_first_on_the_cpu_queue() -> None:
    from jobs.models import Job
    from workers.meter import step_priority

    clip = Job(source="clip.mp3", duration_s=300.0)
    talk = Job(source="talk.mp3", duration_s=7200.0)
    dropped = Job(source="s3://b/inbox/x.mp3", duration_s=300.0, priority=Priority.batch)
    # Redis consumes priority 0 first: a clip's split is not queued behind a backlog's 2-hour splits.
    assert step_priority(clip) < step_priority(talk) < step_priority(dropped)


def test_a_split_begun_resumes_one_list_ahead_of_the_splits_not_begun() -> None:
    from jobs.models import Job, JobStatus
    from workers.meter import step_priority

    waiting = Job(source="talk.mp3", duration_s=7200.0)
    begun = Job(source="talk.mp3", duration_s=7200.0, status=JobStatus.splitting)
    clip = Job(source="clip.mp3", duration_s=300.0)
    # Kombu's Redis lists are 0-2, 3-5, 6-8: the resumed talk is in the clip's list, behind it.
    assert step_priority(begun) // 3 == step_priority(clip) // 3 < step_priority(waiting) // 3
