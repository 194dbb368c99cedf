"""The outbox and the meter on SQLite (workers/meter.py): a job and its first step are one durable
act whatever point a submitter dies at; windows go to the gpu queue only while it has room, the
fairest first; cancelled work is never sent; a window or a proceedings step whose message vanished
is sent again.

A "kill" is a ``Killed`` (a BaseException, as a SIGKILL skips every ``except Exception`` and
cleanup path) raised at the crash point; the relay poller of a cpu worker is the real thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlmodel import col, select

from jobs import collections, proceedings
from jobs.models import Job, JobStatus, Priority, Window, WindowStatus, utcnow
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.create import create_job
from jobs.steps.ending import cancel, fail
from jobs.steps.local import run_local
from jobs.steps.next import Step
from jobs.steps.split import split_job
from tests.fixtures.services import wait_until
from tests.inprocess.conftest import RecordingDispatcher
from tests.speech import Recording
from workers import meter, submission
from workers.sweeper import sweep


class Killed(BaseException):
    """The process dies here."""


class BrokerDown(RecordingDispatcher):
    def send(self, step: Step, retry: bool = True, priority: int = 0) -> None:
        raise ConnectionError("Error 111 connecting to localhost:6379. Connection refused.")


def splits(d: RecordingDispatcher) -> list[str]:
    return [s.job_id for s in d.sent if s.kind == "split"]


def windows_sent(d: RecordingDispatcher) -> list[tuple[str, int | None]]:
    return [(s.job_id, s.index) for s in d.sent if s.kind == "window"]


@pytest.fixture
def poller(rt: Runtime) -> Callable[[RecordingDispatcher], meter.RelayPoller]:
    """A cpu worker's relay poller on the same database, polling fast."""
    started: list[meter.RelayPoller] = []

    def start(sender: RecordingDispatcher) -> meter.RelayPoller:
        p = meter.RelayPoller(rt.settings.model_copy(update={"relay_poll_s": 0.05}), sender)  # type: ignore[arg-type]
        p.start()
        started.append(p)
        return p

    yield start  # type: ignore[misc]
    for p in started:
        p.stop()


# --- a job and its first step ----------------------------------------------------------------------


def test_killed_after_the_job_row_the_split_is_sent_by_a_cpu_worker_within_seconds(
    rt: Runtime, tones: Recording, monkeypatch: pytest.MonkeyPatch, poller: Callable[..., meter.RelayPoller]
) -> None:
    rt.dispatcher = RecordingDispatcher()

    def die(_rt: Runtime, _job_id: str) -> None:
        raise Killed

    # The crash point: the job row is committed, the submitter dies before it sends anything.
    monkeypatch.setattr(submission, "relay_now", die)
    with pytest.raises(Killed):
        submission.submit(rt, str(tones.path), JobOptions())
    (job,) = rt.store.list_jobs()[0]
    assert job.status == JobStatus.queued and rt.dispatcher.sent == []
    # Before the outbox this job waited for the sweep's orphan_after_s (900 s). Its split is in
    # the outbox, written with the job: a cpu worker's relay sends it.
    assert [(q.kind, q.job_id) for q in rt.store.queued_steps()] == [("split", job.id)]
    worker = RecordingDispatcher()
    poller(worker)
    wait_until(lambda: splits(worker) == [job.id], 10, "the relay poller to send the split")
    wait_until(lambda: rt.store.queued_steps() == [], 10, "the outbox to empty")
    assert splits(worker) == [job.id]  # once


def test_killed_during_the_upload_leaves_no_step_for_a_job_without_its_recording(
    rt: Runtime, tones: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt.dispatcher = RecordingDispatcher()

    def die(*_: object) -> None:
        raise Killed

    monkeypatch.setattr(rt.storage, "put_stream", die)
    with pytest.raises(Killed):
        submission.submit(rt, str(tones.path), JobOptions())
    # The split is written only with the stored source's key: nothing would split a missing file.
    assert rt.store.queued_steps() == [] and rt.dispatcher.sent == []


def test_killed_after_the_send_the_step_is_sent_once(rt: Runtime, tones: Recording) -> None:
    rt.dispatcher = RecordingDispatcher()
    job = submission.submit(rt, str(tones.path), JobOptions())
    assert splits(rt.dispatcher) == [job.id] and rt.store.queued_steps() == []
    # A second relay (another process, the poller) finds nothing: sent and deleted in one turn.
    assert meter.relay(rt) == 0 and splits(rt.dispatcher) == [job.id]


def test_a_broker_that_is_away_keeps_the_job_queued_until_it_answers(
    rt: Runtime, tones: Recording, poller: Callable[..., meter.RelayPoller]
) -> None:
    rt.dispatcher = BrokerDown()
    job = submission.submit(rt, str(tones.path), JobOptions())  # no error: the job is durable
    assert rt.store.get(job.id).status == JobStatus.queued
    assert [q.job_id for q in rt.store.queued_steps()] == [job.id]
    back = RecordingDispatcher()
    poller(back)
    wait_until(lambda: splits(back) == [job.id], 10, "the split once the broker answers")


def test_relays_racing_send_each_step_once(rt: Runtime, tones: Recording) -> None:
    jobs = [create_job(rt, f"s3://b/k{i}.flac", JobOptions(), enqueue=True).id for i in range(12)]
    sender = RecordingDispatcher()
    lock = threading.Lock()

    def send(step: Step, retry: bool = True, priority: int = 0) -> None:
        with lock:
            sender.sent.append(step)

    racers = [RecordingDispatcher() for _ in range(4)]
    for r in racers:
        r.send = send  # type: ignore[method-assign]
    barrier = threading.Barrier(len(racers))

    def run(r: RecordingDispatcher) -> int:
        barrier.wait()
        return meter.relay_with(rt.store, lambda: r)  # type: ignore[arg-type,return-value]

    with ThreadPoolExecutor(len(racers)) as pool:
        sent = sum(pool.map(run, racers))
    assert sent == 12 and sorted(splits(sender)) == sorted(jobs)


# --- metering windows into the gpu queue -------------------------------------------------------------


def _split(rt: Runtime, tones: Recording, **fields: object) -> str:
    job = create_job(rt, str(tones.path), JobOptions())
    if fields:
        rt.store.update(job.id, **fields)
    split_job(rt, job.id)
    return job.id


def _claim(rt: Runtime, job_id: str, index: int) -> None:
    assert rt.store.claim_window(job_id, index, "gpu:1:task", lease_s=30) is not None
    meter.meter(rt, taken=(job_id, index))


def test_windows_are_sent_only_while_the_gpu_queue_has_room(rt: Runtime, tones: Recording) -> None:
    rt.dispatcher = d = RecordingDispatcher()
    job_id = _split(rt, tones)  # three windows registered, none sent by the split itself
    assert d.sent == []
    meter.meter(rt)
    assert windows_sent(d) == [(job_id, 0), (job_id, 1)]  # gpu_queue_target = 2
    assert meter.meter(rt) == 0  # full
    _claim(rt, job_id, 0)  # a gpu worker takes one: its slot goes to the next window
    assert windows_sent(d) == [(job_id, 0), (job_id, 1), (job_id, 2)]
    sent_at = [w.dispatched_at is not None for w in rt.store.windows(job_id)]
    assert sent_at == [True, True, True]


def test_a_later_tenant_goes_next_and_interactive_before_batch(
    make_runtime: Callable[..., Runtime], tones: Recording
) -> None:
    rt = make_runtime(gpu_queue_target=1)
    rt.dispatcher = d = RecordingDispatcher()
    drop = _split(rt, tones, tenant="drop", priority=Priority.batch)
    a = _split(rt, tones, tenant="A")
    meter.meter(rt)
    _claim(rt, a, 0)
    b = _split(rt, tones, tenant="B")  # arrives while A's job is in service
    _claim(rt, a, 1)  # A has two windows running, B none: B's window goes next
    _claim(rt, b, 0)  # A still has more audio in service than B: B again
    _claim(rt, b, 1)  # equal shares: the older job
    assert windows_sent(d) == [(a, 0), (a, 1), (b, 0), (b, 1), (a, 2)]
    assert drop not in {j for j, _ in windows_sent(d)}  # batch waits while interactive work is due


def test_a_cancelled_or_failed_jobs_unsent_windows_are_never_sent(rt: Runtime, tones: Recording) -> None:
    rt.dispatcher = d = RecordingDispatcher()
    first = _split(rt, tones)
    second = _split(rt, tones)
    third = _split(rt, tones)
    meter.meter(rt)
    assert windows_sent(d) == [(first, 0), (first, 1)]
    rt.on_job_end.append(meter.wake_after_end)
    cancel(rt, first)  # its two sent windows return quietly; their slots go to the next job now
    assert windows_sent(d)[2:] == [(second, 0), (second, 1)]
    fail(rt, second, "window 1 failed")
    assert windows_sent(d)[4:] == [(third, 0), (third, 1)]
    assert {j for j, _ in windows_sent(d)[6:]} == set()
    _claim(rt, third, 0)
    _claim(rt, third, 1)
    assert windows_sent(d)[6:] == [(third, 2)]  # never first's or second's unsent windows


def test_meters_racing_never_send_a_window_twice_nor_overfill(
    make_runtime: Callable[..., Runtime], tones: Recording
) -> None:
    rt = make_runtime(gpu_queue_target=4)
    jobs = [_split(rt, tones) for _ in range(3)]
    shared = RecordingDispatcher()
    lock = threading.Lock()

    def send(step: Step, retry: bool = True) -> None:
        with lock:
            shared.sent.append(step)

    shared.send = send  # type: ignore[method-assign]
    rt.dispatcher = shared
    barrier = threading.Barrier(6)

    def run(_: int) -> int:
        barrier.wait()
        return meter.meter(rt)

    with ThreadPoolExecutor(6) as pool:
        assert sum(pool.map(run, range(6))) == 4
    sent = windows_sent(shared)
    assert len(sent) == len(set(sent)) == 4
    assert sent == [(jobs[0], 0), (jobs[0], 1), (jobs[0], 2), (jobs[1], 0)]


def test_a_send_that_fails_leaves_the_window_for_the_next_turn(rt: Runtime, tones: Recording) -> None:
    rt.dispatcher = BrokerDown()
    job_id = _split(rt, tones)
    assert meter.meter(rt) == 0
    assert all(w.dispatched_at is None for w in rt.store.windows(job_id))
    rt.dispatcher = d = RecordingDispatcher()
    meter.meter(rt)
    assert windows_sent(d) == [(job_id, 0), (job_id, 1)]


def test_the_sweep_sends_again_a_window_whose_message_vanished(rt: Runtime, tones: Recording) -> None:
    rt.dispatcher = d = RecordingDispatcher()
    job_id = _split(rt, tones)
    meter.meter(rt)
    assert windows_sent(d) == [(job_id, 0), (job_id, 1)]
    # Redis restarted without its data: the gpu queue is empty, the two windows are still untaken.
    sweep(rt, queue_depth=lambda: {"cpu": 0, "gpu": 2})
    assert len(windows_sent(d)) == 2  # messages waiting: nothing is lost
    sweep(rt, queue_depth=lambda: {"cpu": 0, "gpu": 0})
    assert len(windows_sent(d)) == 2  # sent just now: a worker may be about to take them
    with rt.db.session() as s:
        for w in s.exec(select(Window).where(Window.job_id == job_id, col(Window.index) < 2)):
            w.dispatched_at = utcnow() - timedelta(seconds=rt.settings.window_lost_after_s + 1)
            s.add(w)
        s.commit()
    report = sweep(rt, queue_depth=lambda: {"cpu": 0, "gpu": 0})
    assert sorted(report.lost) == [(job_id, 0), (job_id, 1)]
    assert windows_sent(d)[2:] == [(job_id, 0), (job_id, 1)]
    assert [w.status for w in rt.store.windows(job_id)] == [WindowStatus.pending] * 3


def test_the_sweep_queues_again_a_proceedings_step_whose_message_vanished(
    rt: Runtime, tones: Recording
) -> None:
    collections.create(rt.db, None, "DevConf", JobOptions())
    job = create_job(rt, str(tones.path), JobOptions(collection="DevConf"))
    run_local(rt, job.id)  # its proceedings built: the build lists it
    assert rt.store.get(job.id).proceedings_at is not None
    rt.dispatcher = d = RecordingDispatcher()

    def lost(seconds_ago: float) -> None:
        """The job succeeded that long ago and its proceedings step never ran."""
        with rt.db.session() as s:
            row = s.get(Job, job.id)
            assert row is not None
            row.proceedings_at, row.updated_at = None, utcnow() - timedelta(seconds=seconds_ago)
            s.add(row)
            s.commit()

    def proceedings_sent() -> list[str]:
        return [s.job_id for s in d.sent if s.kind == "proceedings"]

    lost(1)
    sweep(rt, queue_depth=lambda: {"cpu": 0, "gpu": 0})
    assert proceedings_sent() == []  # just now: its message may be about to be taken
    lost(rt.settings.window_lost_after_s + 1)
    sweep(rt, queue_depth=lambda: {"cpu": 0, "gpu": 1})
    assert proceedings_sent() == []  # a message waits in the gpu queue: it may be this one
    report = sweep(rt, queue_depth=lambda: {"cpu": 0, "gpu": 0})
    assert report.proceedings == [job.id] and proceedings_sent() == [job.id]  # through the outbox
    assert rt.store.queued_steps() == []
    sweep(rt, queue_depth=lambda: {"cpu": 0, "gpu": 0})
    assert proceedings_sent() == [job.id]  # touched: the next sweep waits for this message
    proceedings.build(rt, job.id)  # what the gpu worker's task runs
    assert rt.store.get(job.id).proceedings_at is not None
    assert rt.store.proceedings_due(utcnow() + timedelta(days=1)) == []


# --- a job's end ------------------------------------------------------------------------------------


def test_a_cancel_queues_the_jobs_announcement_instead_of_delivering_it_itself(
    rt: Runtime, tones: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import runtime as worker_runtime
    from workers.drop_ledger import names_job

    rt.dispatcher = d = RecordingDispatcher()
    rt.announces = names_job
    rt.on_job_end.append(meter.wake_after_end)
    called: list[str] = []
    monkeypatch.setattr(worker_runtime, "notify", lambda _rt, job_id: called.append(job_id))
    monkeypatch.setattr(worker_runtime, "deliver_quietly", lambda _rt, job_id: called.append(job_id))
    hooked = create_job(rt, str(tones.path), JobOptions(webhook_url="https://example.com/hook"))
    plain = create_job(rt, str(tones.path), JobOptions())
    cancel(rt, hooked.id)
    cancel(rt, plain.id)
    # The process that ended the job sent one step and delivered nothing itself (an API cancel
    # does not wait on S3 or a webhook receiver); a job with nothing to announce queues nothing.
    assert [(s.kind, s.job_id) for s in d.sent] == [("announce", hooked.id)]
    assert called == []
    worker_runtime.announce_end(rt, hooked.id)  # what the cpu worker's announce task runs
    assert called == [hooked.id, hooked.id]
