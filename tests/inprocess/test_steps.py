"""The pipeline's steps in process: a whole run, re-cutting after a refusal, the reduce barrier,
retry and resume, the sweep, cancel (with the job-end side effects) and the state table."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from jobs.errors import JobCancelled, PermanentError
from jobs.models import DropObject, JobStatus, WindowStatus, utcnow
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.states import TRANSITIONS, InvalidTransition
from jobs.steps.control import retry
from jobs.steps.create import create_job
from jobs.steps.ending import cancel
from jobs.steps.leases import ProgressClock, lease_renewal
from jobs.steps.local import run_local
from jobs.steps.next import Step, next_steps
from jobs.steps.overall import needs_overall, summarize_job
from jobs.steps.reduce import reduce_job
from jobs.steps.split import split_job
from jobs.steps.window import run_window
from tests.inprocess.conftest import MARKERS, FakeEngine, RecordingDispatcher
from tests.speech import Recording, duration_s
from workers import meter
from workers.sweeper import sweep


def _job(rt: Runtime, tones: Recording) -> str:
    return create_job(rt, str(tones.path), JobOptions()).id


def _document(rt: Runtime, job_id: str) -> dict[str, object]:
    return json.loads(rt.storage.get_bytes(f"jobs/{job_id}/output/document.json"))


def test_a_local_run_goes_through_every_state_and_hears_every_marker_once(
    rt: Runtime, tones: Recording, engine: FakeEngine
) -> None:
    seen: list[str] = []
    rt.on_job_end.append(lambda _rt, job_id: seen.append(str(_rt.store.get(job_id).status)))
    job = run_local(rt, _job(rt, tones))
    assert job.status == JobStatus.succeeded
    assert job.windows_total == 3 and job.windows_done == 3
    assert sorted(engine.transcribed()) == MARKERS  # each heard once (segments run in parallel)
    doc = _document(rt, job.id)
    assert doc["transcript"] == "\n\n".join(w["transcript"] for w in doc["windows"])  # type: ignore[index,union-attr]
    assert " ".join(str(doc["transcript"]).split()) == " ".join(f"marker-{k}" for k in MARKERS)
    assert seen == ["succeeded"]  # the job-end hooks ran once


def test_a_refused_window_is_cut_smaller_and_nothing_is_lost(
    rt: Runtime, tones: Recording, engine: FakeEngine
) -> None:
    engine.max_s = 40.0
    job = run_local(rt, _job(rt, tones))
    assert job.status == JobStatus.succeeded
    assert sorted(engine.transcribed()) == MARKERS  # each heard once (segments run in parallel)
    windows = _document(rt, job.id)["windows"]
    assert isinstance(windows, list)
    results = [json.loads(rt.storage.get_bytes(f"jobs/{job.id}/windows/{i:04d}.json")) for i in range(3)]
    for result in results:
        pieces = result["pieces"]
        assert len(pieces) >= 2
        assert all(p["end_s"] - p["start_s"] <= 40.5 for p in pieces)
        assert pieces[0]["start_s"] == pytest.approx(result["start_s"], abs=0.01)
        assert pieces[-1]["end_s"] == pytest.approx(result["end_s"], abs=0.01)


def test_the_reduce_barrier_lets_exactly_one_caller_through(rt: Runtime, tones: Recording) -> None:
    job_id = _job(rt, tones)
    split_job(rt, job_id)
    assert not rt.store.claim_reduce(job_id)  # no window done yet
    for index in (0, 1):
        run_window(rt, job_id, index)
    assert not rt.store.claim_reduce(job_id)  # one window still pending
    assert next_steps(rt, job_id, after="window") == []
    run_window(rt, job_id, 2)
    barrier = threading.Barrier(8)

    def claim() -> bool:
        barrier.wait()
        return rt.store.claim_reduce(job_id)

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda _: claim(), range(8)))
    assert won.count(True) == 1
    assert rt.store.get(job_id).status == JobStatus.reducing
    assert next_steps(rt, job_id, after="window") == []


def test_retry_resumes_and_redoes_only_what_is_missing(
    rt: Runtime, tones: Recording, engine: FakeEngine
) -> None:
    engine.reject_markers = {5}  # window 2 (markers 5 and 6) fails for good
    job_id = _job(rt, tones)
    with pytest.raises(PermanentError, match="window 3"):
        run_local(rt, job_id)
    job = rt.store.get(job_id)
    assert job.status == JobStatus.failed and "window 3" in (job.error or "")
    assert [w.status for w in rt.store.windows(job_id)] == ["done", "done", "failed"]
    engine.reject_markers = set()
    engine.calls.clear()
    job = retry(rt, job_id)
    assert job.status == JobStatus.transcribing and job.error is None and job.attempt == 1
    assert next_steps(rt, job_id) == [Step("window", job_id, 2)]
    job = run_local(rt, job_id)
    assert job.status == JobStatus.succeeded
    # Windows done before were not sent again, nor was window 3's stored segment (marker 6); only
    # the segment the server had refused (marker 5) was asked again.
    assert sorted(engine.transcribed()) == [5]
    with pytest.raises(PermanentError, match="only failed or cancelled"):
        retry(rt, job_id)


def test_the_sweep_requeues_a_dead_workers_window_once(
    make_runtime: Callable[..., Runtime], tones: Recording
) -> None:
    rt = make_runtime(gpu_queue_target=3)  # room in the gpu queue for every window
    job_id = _job(rt, tones)
    split_job(rt, job_id)
    rt.dispatcher = RecordingDispatcher()
    meter.meter(rt)  # the three windows are sent, as the split task's meter would
    claimed = rt.store.claim_window(job_id, 1, "dead-host:1:task", lease_s=30)
    assert claimed is not None
    assert rt.store.claim_window(job_id, 1, "other:2:task", lease_s=30) is None  # lease still valid
    with rt.db.session() as s:  # the dead worker's lease runs out
        row = s.get(type(claimed), claimed.id)
        assert row is not None
        row.lease_expires_at = utcnow() - timedelta(seconds=1)
        s.add(row)
        s.commit()
    rt.dispatcher = dispatcher = RecordingDispatcher()
    report = sweep(rt, queue_depth=lambda: {"cpu": 0, "gpu": 5})
    assert report.windows == [(job_id, 1)]
    assert dispatcher.sent == [Step("window", job_id, 1)]
    rt.dispatcher = RecordingDispatcher()
    assert sweep(rt, queue_depth=lambda: {"cpu": 0, "gpu": 5}).windows == []
    assert rt.store.windows(job_id)[1].status == WindowStatus.pending


def test_the_sweep_enqueues_the_work_of_a_job_whose_messages_were_lost(rt: Runtime, tones: Recording) -> None:
    job_id = _job(rt, tones)
    split_job(rt, job_id)
    run_window(rt, job_id, 0)
    rt.store.update(job_id)  # bump, then age it past orphan_after_s
    aged = utcnow() - timedelta(seconds=rt.settings.orphan_after_s + 5)
    rt.store._update(type(rt.store.get(job_id)), [], updated_at=aged)
    rt.dispatcher = dispatcher = RecordingDispatcher()
    sweep(rt, queue_depth=lambda: {"cpu": 0, "gpu": 0})
    assert dispatcher.sent == [Step("window", job_id, 1), Step("window", job_id, 2)]


def test_cancel_stops_the_steps_and_announces_the_end_once(rt: Runtime, tones: Recording) -> None:
    ended: list[str] = []
    rt.on_job_end.append(lambda _rt, job_id: ended.append(job_id))
    job_id = _job(rt, tones)
    split_job(rt, job_id)
    run_window(rt, job_id, 0)
    job = cancel(rt, job_id)
    assert job.status == JobStatus.cancelled and job.error == "cancelled by user"
    cancel(rt, job_id)  # twice: still one ending
    assert ended == [job_id]
    with pytest.raises(JobCancelled):
        run_window(rt, job_id, 1)
    assert next_steps(rt, job_id) == []
    assert rt.store.windows(job_id)[0].status == WindowStatus.done  # finished work is kept
    assert retry(rt, job_id).status == JobStatus.transcribing


def test_a_split_that_makes_room_stops_between_windows_and_resumes_where_it_stopped(
    rt: Runtime, tones: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs.models import window_audio_key
    from jobs.steps import split as split_step

    whole = _job(rt, tones)
    assert split_job(rt, whole) == 3
    # As the API, the CLI and the watcher create it: probed (a split stops early only by its length).
    job_id = create_job(rt, str(tones.path), JobOptions(), duration_s=duration_s(tones.path)).id
    stored: list[str] = []
    real_put = split_step.put_file
    monkeypatch.setattr(
        split_step, "put_file", lambda st, key, path: (stored.append(key), real_put(st, key, path))
    )
    assert split_job(rt, job_id, make_room=lambda: True) is None  # stopped after window 0
    job = rt.store.get(job_id)
    assert job.status == JobStatus.splitting and job.windows_total is None
    assert [w.index for w in rt.store.windows(job_id)] == [0]
    # A cpu slot came free: the split resumes (its message sent again), storing only the rest,
    # and does not stop again (each stop replays the decode up to it).
    assert split_job(rt, job_id, make_room=lambda: True) == 3
    assert stored == [window_audio_key(job_id, i) for i in range(3)]  # window 0 once
    spans = [(w.start_s, w.end_s) for w in rt.store.windows(job_id)]
    assert spans == [(w.start_s, w.end_s) for w in rt.store.windows(whole)]  # as one unbroken pass
    for i in range(3):
        resumed = rt.audio.read_samples(Path(rt.storage.readable_url(window_audio_key(job_id, i))))
        unbroken = rt.audio.read_samples(Path(rt.storage.readable_url(window_audio_key(whole, i))))
        assert np.array_equal(resumed, unbroken)
    assert rt.store.get(job_id).status == JobStatus.transcribing


def test_a_split_never_stops_after_its_last_window(rt: Runtime, tones: Recording) -> None:
    asked: list[int] = []
    job_id = create_job(rt, str(tones.path), JobOptions(), duration_s=duration_s(tones.path)).id

    def make_room() -> bool:
        asked.append(len(rt.store.windows(job_id)))
        return False

    assert split_job(rt, job_id, make_room=make_room) == 3
    assert asked == [1, 2]  # not after the third: nothing is left to make room with


def test_cancel_during_the_split_stops_it(rt: Runtime, tones: Recording) -> None:
    job_id = _job(rt, tones)
    real_split = rt.audio.split

    def split_then_cancel(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for n, window in enumerate(real_split(*args, **kwargs)):  # type: ignore[arg-type]
            yield window
            if n == 0:
                cancel(rt, job_id)

    rt.audio.split = split_then_cancel  # type: ignore[method-assign]
    with pytest.raises(JobCancelled):
        split_job(rt, job_id)
    job = rt.store.get(job_id)
    assert job.status == JobStatus.cancelled and job.windows_total is None
    # Only the window cut before the cancel was registered; nothing is due any more.
    assert [w.index for w in rt.store.windows(job_id)] == [0]
    assert next_steps(rt, job_id) == []


def test_a_cancelled_drop_folder_job_gets_its_error_json(
    make_runtime: object, tones: Recording, tmp_path: Path
) -> None:
    from workers.runtime import announce_end

    outbox = tmp_path / "outbox"
    rt: Runtime = make_runtime(drop_url="s3://drops/inbox/", outbox_url=outbox.as_uri())  # type: ignore[operator]
    rt.on_job_end.append(announce_end)
    job_id = _job(rt, tones)
    with rt.db.session() as s:
        s.add(DropObject(bucket="drops", key="inbox/team/Panel.mp3", etag="e1", size=10, job_id=job_id))
        s.commit()
    cancel(rt, job_id)
    error = json.loads((outbox / "team" / "Panel.mp3" / "error.json").read_text())
    assert error["job_id"] == job_id and error["reason"] == "cancelled by user"


def test_every_state_change_outside_the_table_raises(rt: Runtime, tones: Recording) -> None:
    job_id = _job(rt, tones)
    for source, targets in TRANSITIONS.items():
        for target in JobStatus:
            if target not in targets:
                with pytest.raises(InvalidTransition):
                    rt.store.transition(job_id, [source], target)
    with pytest.raises(InvalidTransition):
        rt.store.update(job_id, status=JobStatus.succeeded)
    with pytest.raises(InvalidTransition):
        rt.store.compare_and_set(job_id, "status", JobStatus.queued, JobStatus.succeeded)
    # Allowed, but the job is not in the source state: no change, no error.
    assert not rt.store.transition(job_id, [JobStatus.reducing], JobStatus.succeeded)
    assert rt.store.get(job_id).status == JobStatus.queued


def test_a_transcript_cut_at_its_token_cap_is_kept_and_noted(
    rt: Runtime, tones: Recording, engine: FakeEngine
) -> None:
    engine.cut_markers = {3}
    job = run_local(rt, _job(rt, tones))
    assert job.status == JobStatus.succeeded
    doc = _document(rt, job.id)
    assert " ".join(str(doc["transcript"]).split()) == " ".join(f"marker-{k}" for k in MARKERS)
    notes = [n for n in doc["notes"] if "token cap" in n]  # type: ignore[union-attr]
    assert len(notes) == 1, doc["notes"]


def test_the_vllm_client_calls_a_transcript_as_long_as_its_cap_cut(tmp_path: Path) -> None:
    from jobs.errors import TranscriptCut
    from jobs.settings import Settings
    from workers.engines.vllm import VLLMEngine

    engine = VLLMEngine(Settings(engine="vllm", vllm_url="http://127.0.0.1:9/v1"))
    audio = tmp_path / "a.wav"
    import numpy as np

    from jobs.steps.segments import wav_bytes

    audio.write_bytes(wav_bytes(np.zeros(16_000 * 5, dtype=np.int16)))
    rng = np.random.default_rng(1)
    talk = " ".join("".join(rng.choice(list("abcdefghij"), 6)) for _ in range(400))
    engine._post = lambda *a, **k: {"text": talk[:300]}  # type: ignore[method-assign]
    assert engine.transcribe(audio, None) == talk[:300].strip()
    engine._post = lambda *a, **k: {"text": talk}  # type: ignore[method-assign]
    with pytest.raises(TranscriptCut) as cut:  # 2,800 characters: past a 512-token cap
        engine.transcribe(audio, None)
    assert cut.value.text == talk


def test_windows_run_while_the_split_goes_on(rt: Runtime, tones: Recording, engine: FakeEngine) -> None:
    job_id = _job(rt, tones)
    statuses: list[str] = []
    real = rt.engine.transcribe

    def transcribe(audio: Path, language: str | None, vocabulary: tuple[str, ...] = ()) -> str:
        statuses.append(str(rt.store.get(job_id).status))
        return real(audio, language, vocabulary)

    engine.transcribe = transcribe  # type: ignore[method-assign]
    assert run_local(rt, job_id).status == JobStatus.succeeded
    assert "splitting" in statuses  # the model heard a window before the split had finished
    assert sorted(engine.transcribed()) == MARKERS


def test_windows_handed_over_by_the_split_are_not_decoded_again_and_match_those_that_are(
    rt: Runtime, tones: Recording, engine: FakeEngine
) -> None:
    decoded: list[Path] = []
    read = rt.audio.read_samples

    def read_samples(path: Path) -> np.ndarray:
        decoded.append(path)
        return read(path)

    rt.audio.read_samples = read_samples  # type: ignore[method-assign]
    handed = run_local(rt, _job(rt, tones))
    # The windows thread waits for each window here (the fake engine is fast), so every window
    # arrives with its samples; the FLAC is read back only where the thread was busy.
    assert len(decoded) < 3
    # The same recording as another job, every window read back from its stored FLAC, as a
    # resumed run or a gpu worker does: the same segments and documents, byte for byte.
    decoded.clear()
    stored = create_job(rt, str(tones.path), JobOptions())
    split_job(rt, stored.id)
    for index in range(3):
        run_window(rt, stored.id, index)
    reduce_job(rt, stored.id)
    assert len(decoded) == 3
    for name in ("transcript.srt", "transcript.vtt", "transcript.txt"):
        assert rt.storage.get_bytes(f"jobs/{handed.id}/output/{name}") == rt.storage.get_bytes(
            f"jobs/{stored.id}/output/{name}"
        )
    assert _document(rt, handed.id)["segments"] == _document(rt, stored.id)["segments"]


def test_a_one_window_job_asks_for_the_overall_summary_with_its_window_and_makes_no_text_call(
    rt: Runtime, tones: Recording, engine: FakeEngine
) -> None:
    # The duration is probed before the job exists, as `voxbatch run`, submit and the API do.
    options = JobOptions(window_minutes=5)
    job = run_local(rt, create_job(rt, str(tones.path), options, duration_s=duration_s(tones.path)).id)
    assert job.windows_total == 1
    assert engine.completions == 0
    assert len(engine.summary_prompts) == 1 and "whole recording" in engine.summary_prompts[0]
    assert "Write the overall summary of the talk" in engine.summary_prompts[0]
    doc = _document(rt, job.id)
    assert doc["summary"] == doc["windows"][0]["summary"]  # type: ignore[index]
    markdown = rt.storage.get_bytes(f"jobs/{job.id}/output/document.md").decode()
    assert markdown.count(str(doc["summary"])) == 1  # written once, not again under the window


def test_the_overall_summary_is_a_step_of_its_own_stored_once(
    rt: Runtime, tones: Recording, engine: FakeEngine
) -> None:
    job_id = _job(rt, tones)
    split_job(rt, job_id)
    for index in range(3):
        run_window(rt, job_id, index)
    assert rt.store.claim_reduce(job_id)
    job = rt.store.get(job_id)
    assert needs_overall(rt, job)
    assert summarize_job(rt, job_id) == "overall summary"
    assert not needs_overall(rt, job)
    summarize_job(rt, job_id)  # run twice (a redelivered message): no second model call
    assert engine.completions == 1
    reduce_job(rt, job_id)  # reads the stored summary: no model call in the reduce
    assert engine.completions == 1
    assert _document(rt, job_id)["summary"] == "overall summary"


def test_a_window_whose_requests_make_no_progress_stops_renewing_its_lease(
    rt: Runtime, tones: Recording
) -> None:
    job_id = _job(rt, tones)
    split_job(rt, job_id)
    window = rt.store.claim_window(job_id, 0, "worker-1", rt.settings.lease_seconds)
    assert window is not None

    def lease() -> datetime:
        expires = next(w.lease_expires_at for w in rt.store.windows(job_id) if w.index == 0)
        assert expires is not None
        return expires

    clock = ProgressClock()
    renew = lease_renewal(rt, window, "worker-1", clock)
    claimed = lease()
    renew()  # progress was just made: renewed
    renewed = lease()
    assert renewed > claimed
    clock.last -= rt.settings.window_stall_s + 1  # no answer for longer than the stall limit
    renew()
    assert lease() == renewed
    clock.tick()  # an answer again: renewed again
    renew()
    assert lease() > renewed


def test_after_the_last_window_the_overall_summary_is_due_then_the_reduce(
    rt: Runtime, tones: Recording
) -> None:
    job_id = _job(rt, tones)
    split_job(rt, job_id)
    for index in (0, 1):
        run_window(rt, job_id, index)
    run_window(rt, job_id, 2)
    assert [s.kind for s in next_steps(rt, job_id, after="window")] == ["overall"]  # a gpu worker's
    assert [s.kind for s in next_steps(rt, job_id)] == ["overall"]  # the sweep, while it is missing
    summarize_job(rt, job_id)
    assert [s.kind for s in next_steps(rt, job_id, after="overall")] == ["reduce"]
    assert [s.kind for s in next_steps(rt, job_id)] == ["reduce"]  # stored: only the reduce is left


def test_a_one_window_job_goes_from_its_window_to_the_reduce(rt: Runtime, tones: Recording) -> None:
    job = create_job(rt, str(tones.path), JobOptions(window_minutes=5), duration_s=duration_s(tones.path))
    split_job(rt, job.id)
    run_window(rt, job.id, 0)
    assert [s.kind for s in next_steps(rt, job.id, after="window")] == ["reduce"]


class _HeldSegments(FakeEngine):
    """Segments wait for ``release``; the order of the calls is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self.segment_waiting = threading.Event()
        self.summary_sent = threading.Event()
        self.release = threading.Event()

    def transcribe(self, audio: Path, language: str | None, vocabulary: tuple[str, ...] = ()) -> str:
        with self._lock:
            self.order.append("segment sent")
        self.segment_waiting.set()
        self.release.wait()
        text = super().transcribe(audio, language, vocabulary)
        with self._lock:
            self.order.append("segment back")
        return text

    def summarize_audio(self, audio: Path, prompt: str) -> str:
        with self._lock:
            self.order.append("summary sent")
        self.summary_sent.set()
        return super().summarize_audio(audio, prompt)


def _held_window(rt: Runtime, tones: Recording, priority: str) -> tuple[_HeldSegments, str]:
    """A split job of ``priority`` whose engine holds every segment until released."""
    held = _HeldSegments()
    rt.engine_factory = lambda: held
    job_id = create_job(rt, str(tones.path), JobOptions(priority=priority)).id
    split_job(rt, job_id)
    return held, job_id


def test_a_windows_summary_is_sent_after_its_first_segment_is_back(rt: Runtime, tones: Recording) -> None:
    # The summary's long prefill must not stand in front of the window's segments at the server.
    held, job_id = _held_window(rt, tones, "batch")
    with ThreadPoolExecutor(max_workers=1) as pool:
        done = pool.submit(run_window, rt, job_id, 0)
        assert held.segment_waiting.wait(timeout=60)
        held.release.set()
        done.result(timeout=120)
    assert "summary sent" in held.order
    assert held.order.index("summary sent") > held.order.index("segment back"), held.order
    assert rt.store.windows(job_id)[0].status == WindowStatus.done


def test_a_clips_summary_is_not_held_behind_its_segments(rt: Runtime, tones: Recording) -> None:
    # A clip (short, interactive): its summary is its longest chain and someone waits on it.
    held, job_id = _held_window(rt, tones, "interactive")
    with ThreadPoolExecutor(max_workers=1) as pool:
        done = pool.submit(run_window, rt, job_id, 0)
        assert held.summary_sent.wait(timeout=60)  # while every segment is still held
        assert "segment back" not in held.order
        held.release.set()
        done.result(timeout=120)
    assert rt.store.windows(job_id)[0].status == WindowStatus.done
