"""The request scheduler: a fixed number in flight, fair between tenants, deadlines, abort; and the
HTTP client on top of it against a server that drops uploads mid-body and sometimes never answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from jobs.errors import EngineUnavailable
from jobs.models import Job, Priority
from jobs.shares import Share, charged_to, share_of
from workers.engines.http import ApiClient
from workers.engines.scheduler import EngineAborted, RequestScheduler, Retryable


async def _until(gate: threading.Event) -> None:
    while not gate.is_set():
        await asyncio.sleep(0.005)


def _wait_for(condition: Any, what: str) -> None:
    waited = threading.Event()
    for _ in range(4000):
        if condition():
            return
        waited.wait(0.005)
    raise AssertionError(f"never happened: {what}")


def _gated(gate: threading.Event, order: list[str], name: str) -> Any:
    async def attempt(_deadline: float) -> str:
        await _until(gate)
        order.append(name)
        return name

    return attempt


@contextlib.contextmanager
def _loop_held(scheduler: RequestScheduler) -> Iterator[None]:
    """Hold the scheduler's loop while the block submits, so it sees those requests together. What
    it cuts for a clip depends on the clip audio it knows of when it wakes; without the hold that
    depends on whether it woke between two submits."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(timeout=60)

    scheduler._loop.call_soon_threadsafe(hold)
    assert held.wait(timeout=30), "the scheduler's loop never ran"
    try:
        yield
    finally:
        release.set()


class _Gated:
    """Requests each held open until the test sets its gate; counts each one's attempts."""

    def __init__(self, scheduler: RequestScheduler) -> None:
        self.scheduler = scheduler
        self.gates: dict[str, threading.Event] = {}
        self.starts = Counter[str]()

    def send(self, name: str, share: Share, cost_s: float) -> Any:
        gate = self.gates[name] = threading.Event()

        async def attempt(_deadline: float) -> str:
            self.starts[name] += 1
            await _until(gate)
            return name

        return self.scheduler.submit(attempt, share=share, cost_s=cost_s, deadline_s=60, retries=0)


def test_exactly_max_inflight_requests_are_sent_at_once() -> None:
    scheduler = RequestScheduler(max_inflight=8)
    gate = threading.Event()
    running = Counter[str]()
    peak = [0]
    lock = threading.Lock()

    async def attempt(_deadline: float) -> None:
        with lock:
            running["now"] += 1
            peak[0] = max(peak[0], running["now"])
        await _until(gate)
        with lock:
            running["now"] -= 1

    futures = [
        scheduler.submit(attempt, share=Share(), cost_s=1, deadline_s=60, retries=0) for _ in range(30)
    ]
    # The attempts themselves, not only the scheduler's count: a task counted out may not have run yet.
    _wait_for(lambda: running["now"] == 8, "8 requests in flight")
    assert scheduler.stats().items() >= {"inflight": 8, "waiting": 22}.items()
    gate.set()
    for future in futures:
        future.result(timeout=30)
    assert peak[0] == 8
    assert scheduler.stats()["peak_inflight"] == 8


def test_a_small_tenant_goes_before_a_big_tenants_backlog() -> None:
    scheduler = RequestScheduler(max_inflight=1)
    first, gate = threading.Event(), threading.Event()
    order: list[str] = []
    big, small = Share(tenant="a"), Share(tenant="b")
    blocker = scheduler.submit(_gated(first, order, "a0"), share=big, cost_s=30, deadline_s=60, retries=0)
    _wait_for(lambda: scheduler.stats()["inflight"] == 1, "the first request in flight")
    backlog = [
        scheduler.submit(_gated(gate, order, f"a{n}"), share=big, cost_s=30, deadline_s=60, retries=0)
        for n in range(1, 11)
    ]
    clip = scheduler.submit(_gated(gate, order, "b0"), share=small, cost_s=30, deadline_s=60, retries=0)
    gate.set()
    first.set()
    for future in [blocker, *backlog, clip]:
        future.result(timeout=30)
    # a0 was already sent and charged 30 s to a: b's first request is next.
    assert order[:2] == ["a0", "b0"], order


def test_interactive_work_goes_before_batch_work_and_earlier_windows_first() -> None:
    scheduler = RequestScheduler(max_inflight=1)
    first, gate = threading.Event(), threading.Event()
    order: list[str] = []
    scheduler.submit(_gated(first, order, "hold"), share=Share(), cost_s=1, deadline_s=60, retries=0)
    _wait_for(lambda: scheduler.stats()["inflight"] == 1, "the first request in flight")
    batch = Share(tenant="drop", priority=Priority.batch)
    late_window = Share(tenant="a", order=("2026-01-01", 3))
    early_window = Share(tenant="a", order=("2026-01-01", 1))
    futures = [
        scheduler.submit(_gated(gate, order, "batch"), share=batch, cost_s=1, deadline_s=60, retries=0),
        scheduler.submit(_gated(gate, order, "w3"), share=late_window, cost_s=1, deadline_s=60, retries=0),
        scheduler.submit(_gated(gate, order, "w1"), share=early_window, cost_s=1, deadline_s=60, retries=0),
    ]
    gate.set()
    first.set()
    for future in futures:
        future.result(timeout=30)
    assert order == ["hold", "w1", "w3", "batch"]


def test_a_jobs_later_windows_wait_for_its_first_answer_while_others_go() -> None:
    scheduler = RequestScheduler(max_inflight=8)
    lead_gate, gate = threading.Event(), threading.Event()
    order: list[str] = []
    first = Share(tenant="a", order=("2026-01-01", 0))
    later = Share(tenant="a", order=("2026-01-01", 1))
    other_tenant = Share(tenant="b", order=("2026-01-02", 1))
    same_tenant_next_job = Share(tenant="a", order=("2026-01-03", 0))
    leads = [
        scheduler.submit(_gated(lead_gate, order, f"w0-{n}"), share=first, cost_s=1, deadline_s=60, retries=0)
        for n in range(2)
    ]
    _wait_for(lambda: scheduler.stats()["inflight"] == 2, "the first window's requests in flight")
    held = scheduler.submit(_gated(gate, order, "w1"), share=later, cost_s=1, deadline_s=60, retries=0)
    free = [
        scheduler.submit(_gated(gate, order, name), share=share, cost_s=1, deadline_s=60, retries=0)
        for name, share in (("b", other_tenant), ("a-next", same_tenant_next_job))
    ]
    gate.set()
    # Other jobs are not held, the same tenant's next job included.
    assert [future.result(timeout=30) for future in free] == ["b", "a-next"]
    assert scheduler.stats().items() >= {"inflight": 2, "waiting": 1, "peak_inflight": 4}.items()
    lead_gate.set()  # the first window's answers come back: the job's later window goes
    assert held.result(timeout=30) == "w1"
    for future in leads:
        future.result(timeout=30)
    assert order.index("w1") > min(order.index("w0-0"), order.index("w0-1"))


def test_a_clip_cuts_other_work_to_its_cap_until_it_is_answered() -> None:
    scheduler = RequestScheduler(max_inflight=8, max_audio_beside_clips_s=2)
    early, rest, clip_gate = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []
    starts = Counter[str]()
    talk = Share(tenant="a", order=("2026-01-01", 3))  # a long job's later window: no first-text hold
    clip = Share(tenant="b", order=("2026-01-02", 0), short=True)

    def send(gate: threading.Event, name: str, share: Share) -> Any:
        async def attempt(_deadline: float) -> str:
            starts[name] += 1
            await _until(gate)
            order.append(name)
            return name

        return scheduler.submit(attempt, share=share, cost_s=1, deadline_s=60, retries=0)

    running = [send(early, f"a{n}", talk) for n in range(4)]
    _wait_for(lambda: sum(starts.values()) == 4, "the long job's first requests out")
    short = send(clip_gate, "b", clip)
    later = [send(rest, f"a{n}", talk) for n in range(4, 10)]
    # The two newest of the long job's attempts are cancelled and wait again, with its new ones.
    _wait_for(lambda: starts["b"] == 1 and scheduler.stats()["preempted"] == 2, "the clip out, two cut")
    assert scheduler.stats().items() >= {"inflight": 3, "waiting": 8, "others_inflight": 2}.items()
    early.set()
    # a0 and a1 answer; a2 and a3 go again first (their place kept, retries=0 not spent), then
    # a4 and a5 fill the cap while the clip is still out.
    assert [f.result(timeout=30) for f in running] == ["a0", "a1", "a2", "a3"]
    assert starts["a2"] == starts["a3"] == 2
    _wait_for(lambda: starts["a4"] == starts["a5"] == 1, "the cap filled again")
    assert scheduler.stats().items() >= {"others_inflight": 2, "waiting": 4}.items()
    clip_gate.set()
    assert short.result(timeout=30) == "b"
    # The clip is answered: the long job fills the server again.
    _wait_for(lambda: scheduler.stats()["inflight"] == 6, "every long request out")
    rest.set()
    assert [f.result(timeout=30) for f in later] == [f"a{n}" for n in range(4, 10)]
    assert scheduler.stats().items() >= {"clips_open": 0, "others_inflight": 0, "preempted": 2}.items()


def test_the_cap_beside_a_clip_counts_audio_seconds_not_requests() -> None:
    # What slows a clip is the prefill of what is admitted beside it, and that grows with audio: a
    # 30-minute window's summary weighs as much as sixty 30-s segments.
    scheduler = RequestScheduler(max_inflight=8, max_audio_beside_clips_s=60)
    gated = _Gated(scheduler)
    send, gates, starts = gated.send, gated.gates, gated.starts
    talk = Share(tenant="a", order=("2026-01-01", 3))
    next_talk = Share(tenant="a", order=("2026-01-03", 3))  # the summary is not its line's head
    clip = Share(tenant="b", order=("2026-01-02", 0), short=True)

    segments = [send("a0", talk, 30), send("a1", talk, 30)]
    summary = send("summary", talk, 1800)
    _wait_for(lambda: scheduler.stats()["others_audio_s"] == 1860, "the long job's three requests out")
    short = send("b", clip, 30)
    # The newest, the summary, alone takes the other work beyond one minute: it is cut, the two
    # segments (one minute together) stay.
    _wait_for(lambda: scheduler.stats()["preempted"] == 1 and starts["b"] == 1, "the summary cut")
    later = send("a2", next_talk, 30)
    assert scheduler.stats().items() >= {"others_inflight": 2, "others_audio_s": 60, "waiting": 2}.items()
    gates["a0"].set()
    assert segments[0].result(timeout=30) == "a0"
    # Half a minute free: the next talk's segment fits, the summary (waiting first) does not.
    _wait_for(lambda: starts["a2"] == 1, "the next segment out beside the clip")
    assert starts["summary"] == 1
    assert scheduler.stats().items() >= {"others_audio_s": 60, "waiting": 1}.items()
    gates["b"].set()
    assert short.result(timeout=30) == "b"
    _wait_for(lambda: starts["summary"] == 2, "the summary out again once the clip is answered")
    for name in ("a1", "summary", "a2"):
        gates[name].set()
    assert [f.result(timeout=30) for f in (segments[1], summary, later)] == ["a1", "summary", "a2"]
    assert scheduler.stats().items() >= {"others_audio_s": 0, "clips_open": 0}.items()


def test_a_summary_held_for_its_size_does_not_hold_up_the_segments_behind_it() -> None:
    # A 30-minute window's summary never fits beside a clip whose cap is smaller; the talk's next
    # window's segments, behind it in the job's order, still keep the cap's audio at the server.
    # (With one line per job, the held summary was the job's head and the talk sent nothing: the
    # server ran the clip alone, then refilled from empty when it ended.)
    scheduler = RequestScheduler(max_inflight=8, max_audio_beside_clips_s=60)
    gated = _Gated(scheduler)
    send, gates, starts = gated.send, gated.gates, gated.starts
    window0 = Share(tenant="a", order=("2026-01-01", 0))
    window1 = Share(tenant="a", order=("2026-01-01", 1))
    clip = Share(tenant="b", order=("2026-01-02", 0), short=True)

    first = send("a-first", window0, 30)
    gates["a-first"].set()
    assert first.result(timeout=30) == "a-first"  # the talk has its first text: no first-text hold
    short = send("b", clip, 30)
    _wait_for(lambda: starts["b"] == 1, "the clip out")
    summary = send("summary", window0, 1800)
    segments = [send(f"s{n}", window1, 30) for n in range(4)]
    _wait_for(lambda: starts["s0"] == starts["s1"] == 1, "the segments behind the summary out")
    assert scheduler.stats().items() >= {"others_audio_s": 60, "waiting": 3}.items()
    assert starts["summary"] == starts["s2"] == starts["s3"] == 0
    gates["b"].set()
    assert short.result(timeout=30) == "b"
    _wait_for(lambda: starts["summary"] == starts["s3"] == 1, "the rest out once the clip is answered")
    for gate in gates.values():
        gate.set()
    assert summary.result(timeout=30) == "summary"
    assert [f.result(timeout=30) for f in segments] == ["s0", "s1", "s2", "s3"]
    assert scheduler.stats().items() >= {"others_audio_s": 0, "clips_open": 0, "waiting": 0}.items()


def test_the_cap_beside_clips_follows_their_audio_and_cuts_only_at_its_peak() -> None:
    # Twice the clips' own audio, at least ten minutes, at most the ceiling. A lone small clip
    # gets a tight cap; the cap falls as its segments are answered, which holds new attempts back
    # but cuts nothing more (what is out was prefilled beside the larger cap).
    scheduler = RequestScheduler(max_inflight=64, max_audio_beside_clips_s=2000, audio_beside_clips_ratio=2)
    gated = _Gated(scheduler)
    send, gates, starts = gated.send, gated.gates, gated.starts
    talk = Share(tenant="a", order=("2026-01-01", 3))
    clip = Share(tenant="b", order=("2026-01-02", 0), short=True)

    talk_futures = [send(f"a{n}", talk, 30) for n in range(40)]  # 1,200 s of audio out
    _wait_for(lambda: scheduler.stats()["others_audio_s"] == 1200, "the long job out")
    with _loop_held(scheduler):
        segment, summary = send("b-segment", clip, 100), send("b-summary", clip, 300)
    # 400 s of clip audio: 800 s beside it. The 14 newest segments (420 s) are cut.
    _wait_for(lambda: scheduler.stats()["preempted"] == 14, "the newest beyond the cap cut")
    assert scheduler.stats().items() >= {"others_audio_s": 780, "cap_beside_clips_s": 800}.items()
    assert starts["b-segment"] == starts["b-summary"] == 1
    gates["b-segment"].set()
    assert segment.result(timeout=30) == "b-segment"
    # The summary alone is 300 s: the cap falls to its floor, ten minutes. Nothing more is cut; the
    # 780 s out drain to it, and only then does a cut segment go again.
    _wait_for(lambda: scheduler.stats()["cap_beside_clips_s"] == 600, "the cap at its floor")
    for n in range(10):  # 300 s answered: 480 s out, room for four of the cut ones
        gates[f"a{n}"].set()
    # Counted out when sent, started when its task runs: wait for both.
    _wait_for(
        lambda: (
            scheduler.stats()["others_audio_s"] == 600 and sum(starts[f"a{n}"] == 2 for n in range(40)) == 4
        ),
        "the cap filled again",
    )
    assert scheduler.stats()["preempted"] == 14
    assert sum(starts[f"a{n}"] == 2 for n in range(26, 40)) == 4
    gates["b-summary"].set()
    assert summary.result(timeout=30) == "b-summary"
    _wait_for(lambda: scheduler.stats()["inflight"] == 30, "every long request out once the clip is done")
    for gate in gates.values():
        gate.set()
    assert [f.result(timeout=30) for f in talk_futures] == [f"a{n}" for n in range(40)]
    assert scheduler.stats().items() >= {"clips_open": 0, "others_audio_s": 0, "preempted": 14}.items()


def test_many_clips_at_once_keep_the_ceiling() -> None:
    scheduler = RequestScheduler(max_inflight=64, max_audio_beside_clips_s=1800, audio_beside_clips_ratio=2)
    gate = threading.Event()
    order: list[str] = []
    futures = [
        scheduler.submit(
            _gated(gate, order, f"clip{n}"),
            share=Share(tenant="b", order=(f"2026-01-0{n + 1}", 0), short=True),
            cost_s=120,
            deadline_s=60,
            retries=0,
        )
        for n in range(8)
    ]
    _wait_for(lambda: scheduler.stats()["inflight"] == 8, "eight clips out")
    assert scheduler.cap_beside_clips_s() == 1800  # 2 x 960 s, over the ceiling
    gate.set()
    for future in futures:
        future.result(timeout=30)
    assert scheduler.stats()["clips_open"] == 0


def test_clips_open_most_of_the_time_relax_the_cap_to_its_ceiling() -> None:
    # A steady stream of short clips must not hold the other work to the floor for good: past half
    # of the last few minutes with clips open, the cap is the ceiling; it tightens again once
    # clips have been rare for a while.
    now = [0.0]
    scheduler = RequestScheduler(
        max_inflight=8, max_audio_beside_clips_s=1800, audio_beside_clips_ratio=2, clock=lambda: now[0]
    )
    gate = threading.Event()
    order: list[str] = []

    def clip(name: str) -> Any:
        share = Share(tenant="b", order=(f"2026-01-{name}", 0), short=True)
        return scheduler.submit(_gated(gate, order, name), share=share, cost_s=60, deadline_s=60, retries=0)

    first = clip("01")
    assert scheduler.cap_beside_clips_s() == 600  # 2 x 60 s, below the floor
    now[0] = 120.0  # two minutes open: 1 - e^(-120/300) = 0.33 of the time
    assert scheduler.cap_beside_clips_s() == 600
    now[0] = 300.0  # five minutes: 0.63
    assert scheduler.cap_beside_clips_s() == 1800
    gate.set()
    first.result(timeout=30)
    _wait_for(lambda: scheduler.stats()["clips_open"] == 0, "the clip settled")
    now[0] = 600.0  # five minutes without a clip: 0.63 x e^-1 = 0.23
    gate.clear()
    second = clip("02")
    assert scheduler.cap_beside_clips_s() == 600
    assert scheduler.stats()["clip_time_share"] < 0.5
    gate.set()
    second.result(timeout=30)


def test_a_request_is_cancelled_for_a_clip_once_at_most() -> None:
    # A clip's segments, then its summary: the hold opens twice. The attempt cut the first time is
    # spared the second, so it reaches the server twice, never three times.
    scheduler = RequestScheduler(max_inflight=4, max_audio_beside_clips_s=1)
    talk_gate, first_clip, second_clip = threading.Event(), threading.Event(), threading.Event()
    starts = Counter[str]()
    talk = Share(tenant="a", order=("2026-01-01", 3))
    clip = Share(tenant="b", order=("2026-01-02", 0), short=True)

    def send(gate: threading.Event, name: str, share: Share) -> Any:
        async def attempt(_deadline: float) -> str:
            starts[name] += 1
            await _until(gate)
            return name

        return scheduler.submit(attempt, share=share, cost_s=1, deadline_s=60, retries=0)

    running = [send(talk_gate, f"a{n}", talk) for n in range(2)]
    _wait_for(lambda: starts["a0"] == starts["a1"] == 1, "the long job out")
    segments = send(first_clip, "b-segment", clip)
    _wait_for(lambda: scheduler.stats()["preempted"] == 1 and starts["b-segment"] == 1, "a1 cut")
    first_clip.set()
    assert segments.result(timeout=30) == "b-segment"
    _wait_for(lambda: starts["a1"] == 2, "a1 out again once the clip is answered")
    summary = send(second_clip, "b-summary", clip)
    _wait_for(lambda: starts["b-summary"] == 1, "the clip's summary out")
    # a1 is the newest beyond the cap again, and spared: nothing is cut a second time.
    assert scheduler.stats().items() >= {"preempted": 1, "others_inflight": 2, "clips_open": 1}.items()
    second_clip.set()
    talk_gate.set()
    assert summary.result(timeout=30) == "b-summary"
    assert [f.result(timeout=30) for f in running] == ["a0", "a1"]
    assert starts == {"a0": 1, "a1": 2, "b-segment": 1, "b-summary": 1}


def test_short_batch_jobs_hold_nothing() -> None:
    scheduler = RequestScheduler(max_inflight=4, max_audio_beside_clips_s=0)
    gate = threading.Event()
    order: list[str] = []
    drop = Share(tenant="drop", priority=Priority.batch, order=("2026-01-01", 0), short=True)
    talk = Share(tenant="a", order=("2026-01-02", 2))
    futures = [
        scheduler.submit(_gated(gate, order, name), share=share, cost_s=1, deadline_s=60, retries=0)
        for name, share in (("drop", drop), ("a1", talk), ("a2", talk))
    ]
    _wait_for(lambda: scheduler.stats()["inflight"] == 3, "all three out")
    assert scheduler.stats()["clips_open"] == 0
    gate.set()
    assert [f.result(timeout=30) for f in futures] == ["drop", "a1", "a2"]


def test_a_later_window_is_not_held_when_its_first_window_is_not_here() -> None:
    scheduler = RequestScheduler(max_inflight=8)
    gate = threading.Event()
    gate.set()
    order: list[str] = []
    later = Share(tenant="a", order=("2026-01-01", 3))  # window 0 is another worker's, or done
    alone = scheduler.submit(_gated(gate, order, "w3"), share=later, cost_s=1, deadline_s=60, retries=0)
    assert alone.result(timeout=30) == "w3"


def test_an_attempt_past_its_deadline_is_sent_again() -> None:
    scheduler = RequestScheduler(max_inflight=4)
    tries: list[int] = []
    never = threading.Event()

    async def attempt(_deadline: float) -> str:
        tries.append(len(tries))
        if len(tries) == 1:
            await _until(never)  # the first attempt is never answered
        return "answered"

    answer = scheduler.call(attempt, share=Share(), cost_s=1, deadline_s=0.2, retries=2, backoff_base_s=0.0)
    assert answer == "answered"
    assert len(tries) == 2


def test_a_request_the_server_overtook_is_sent_again_before_its_deadline() -> None:
    # Eight requests of its size sent after it were answered, and it has been out three times the
    # longest of their times and a quarter of its deadline: the server lost it. Its second attempt
    # is judged by its deadline alone (a request merely slow is sent early once at most). (The
    # scheduler's clock is the test's, so ages are set, not waited for; deadlines run on real time.)
    now = [0.0]
    scheduler = RequestScheduler(max_inflight=16, overtaken_factor=3.0, clock=lambda: now[0])
    gates = {f"q{n}": threading.Event() for n in range(8)}
    tries: list[int] = []
    never, second = threading.Event(), threading.Event()

    async def lost(_deadline: float) -> str:
        tries.append(len(tries))
        await _until(never if len(tries) == 1 else second)  # the first attempt is never answered
        return "answered"

    def quick(name: str) -> Any:
        async def attempt(_deadline: float) -> str:
            await _until(gates[name])
            return name

        return scheduler.submit(attempt, share=Share(), cost_s=30, deadline_s=300, retries=0)

    first = scheduler.submit(lost, share=Share(), cost_s=30, deadline_s=300, retries=2, backoff_base_s=0.0)
    _wait_for(lambda: len(tries) == 1, "the first attempt out")
    now[0] = 1.0
    later = [quick(name) for name in gates]
    _wait_for(lambda: scheduler.stats()["inflight"] == 9, "the later requests out")
    for n in range(7):
        gates[f"q{n}"].set()
        assert later[n].result(timeout=30) == f"q{n}"
    now[0] = 100.0
    with scheduler._lock:  # seven overtakers are not enough, however old it is
        assert scheduler._overtaken_now() == []
    gates["q7"].set()
    assert later[7].result(timeout=30) == "q7"  # took 99 s: three times that is 297 s
    with scheduler._lock:
        assert scheduler._overtaken_now() == []
    now[0] = 301.0
    _wait_for(lambda: len(tries) == 2, "the request sent again")
    now[0] = 10_000.0
    with scheduler._lock:
        assert scheduler._overtaken_now() == []
    second.set()
    assert first.result(timeout=30) == "answered"
    assert len(tries) == 2
    assert scheduler.stats()["overtaken"] == 1


def test_retries_are_bounded_and_say_why() -> None:
    scheduler = RequestScheduler(max_inflight=4)

    async def attempt(_deadline: float) -> str:
        raise Retryable("HTTP 503: overloaded")

    with pytest.raises(EngineUnavailable, match=r"3 attempts.*HTTP 503"):
        scheduler.call(
            attempt, share=Share(), cost_s=1, deadline_s=5, retries=2, backoff_base_s=0.0, what="x"
        )


def test_abort_fails_running_and_waiting_requests_and_later_ones() -> None:
    scheduler = RequestScheduler(max_inflight=1)
    never = threading.Event()
    order: list[str] = []
    running = scheduler.submit(_gated(never, order, "r"), share=Share(), cost_s=1, deadline_s=600, retries=0)
    waiting = scheduler.submit(_gated(never, order, "w"), share=Share(), cost_s=1, deadline_s=600, retries=0)
    _wait_for(lambda: scheduler.stats()["inflight"] == 1, "one request in flight")
    assert scheduler.abort() == 1
    for future in (running, waiting):
        with pytest.raises(EngineAborted):
            future.result(timeout=10)
    with pytest.raises(EngineAborted):
        scheduler.call(_gated(never, order, "later"), share=Share(), cost_s=1, deadline_s=1, retries=0)


def test_abort_settles_a_request_in_flight_even_when_the_loop_cannot_turn() -> None:
    scheduler = RequestScheduler(max_inflight=1)
    entered, unblock = threading.Event(), threading.Event()

    async def blocks_the_loop(_deadline: float) -> str:
        entered.set()
        unblock.wait()  # a blocking call on the loop: no task can be cancelled meanwhile
        return "late"

    running = scheduler.submit(blocks_the_loop, share=Share(), cost_s=1, deadline_s=600, retries=0)
    assert entered.wait(30)
    try:
        scheduler.abort()  # its wait for the loop gives up; the window's thread must not wait
        with pytest.raises(EngineAborted):
            running.result(timeout=0)
    finally:
        unblock.set()


# --- the HTTP client against a misbehaving server ------------------------------------------------------


class _Faulty(BaseHTTPRequestHandler):
    """Every 50th upload is dropped mid-body; every 200th request is never answered."""

    protocol_version = "HTTP/1.1"
    arrivals = 0
    lock = threading.Lock()
    received: ClassVar[Counter[int]] = Counter()
    release = threading.Event()

    def do_POST(self) -> None:
        with self.lock:
            type(self).arrivals += 1
            arrival = type(self).arrivals
        length = int(self.headers["Content-Length"])
        if arrival % 50 == 7:
            self.rfile.read(length // 2)  # half the body, then the connection goes
            self.close_connection = True
            self.connection.shutdown(2)
            return
        body = json.loads(self.rfile.read(length))
        with self.lock:
            self.received[body["n"]] += 1
        if arrival % 200 == 13:
            self.release.wait()  # never answers while the client waits
            return
        answer = json.dumps({"text": f"answer {body['n']}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def faulty_server() -> Iterator[str]:
    _Faulty.arrivals = 0
    _Faulty.received = Counter()
    _Faulty.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    server.daemon_threads = True
    server.request_queue_size = 512
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    _Faulty.release.set()
    server.shutdown()
    server.server_close()


def test_hundreds_of_requests_all_end_against_a_server_that_drops_and_hangs(faulty_server: str) -> None:
    client = ApiClient(faulty_server, server="faulty", retries=4, backoff_base_s=0.0, max_inflight=256)
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            with charged_to(Share(tenant=f"t{n % 3}")):
                results[n] = client.post(
                    "audio/transcriptions", json_body={"n": n, "pad": "x" * 20000}, deadline_s=5
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(400)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a request never ended"
    assert not errors, errors[:3]
    assert all(results[n] == {"text": f"answer {n}"} for n in range(400))
    # The held requests were sent again, and answered the second time.
    held = [n for n, count in _Faulty.received.items() if count > 1]
    assert held, "no request was held, so the deadline was never tested"
    client.close()


@pytest.mark.parametrize(
    ("duration_s", "priority", "clip"),
    [
        (300.0, Priority.interactive, True),
        (1800.0, Priority.interactive, True),
        (300.0, Priority.batch, False),
        (7200.0, Priority.interactive, False),
        (None, Priority.interactive, False),
    ],
)
def test_an_interactive_job_of_one_window_or_less_is_a_clip(
    duration_s: float | None, priority: Priority, clip: bool
) -> None:
    job = Job(id="j", source="s", source_name="s", tenant="b", duration_s=duration_s, priority=priority)
    assert share_of(job, 0).clip is clip
