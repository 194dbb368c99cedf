"""One window: claim its lease, transcribe its segments and summarise it, store the result, mark it
done.

Safe to run twice: a window whose result is stored is marked done without calling the engine.
Permanent errors fail the window and the job; transient ones hand the window back (pending) and
propagate for the caller to retry. While the engine works, a thread renews the lease, so only a
dead worker's window is taken over by the sweep.
"""

from __future__ import annotations

import errno
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from jobs.engine import Samples, TimedEngine, timed_engine
from jobs.errors import PermanentError, TransientError, WindowTooLarge
from jobs.models import Job, Window
from jobs.presets import merge_prompt
from jobs.runtime import Runtime
from jobs.segmenting import SAMPLE_RATE, segment_samples
from jobs.shares import Share, charged_to, current_share, share_of
from jobs.steps.ending import ensure_running, fail
from jobs.steps.leases import ProgressClock, lease_kept
from jobs.steps.profiled import (
    segment_limit_s,
    summary_from_transcripts,
    transcript_summary,
    window_prompt_for,
)
from jobs.steps.recut import Recutter
from jobs.steps.segments import SegmentWork
from jobs.steps.timed import hints_for, timed_segments
from jobs.stitching import WindowResult
from jobs.timecodes import span

log = logging.getLogger(__name__)

PROGRESS_EVERY = 8
_T = TypeVar("_T")


def run_window(
    rt: Runtime, job_id: str, index: int, owner: str = "local", samples: Samples | None = None
) -> bool:
    """Transcribe and summarise one window. Returns True when every window of the job is done.

    ``samples``: the window's audio as the split cut it, when the caller has it; else its FLAC
    is read back from storage."""
    job = rt.store.get(job_id)
    ensure_running(job)
    window = rt.store.claim_window(job_id, index, owner, rt.settings.lease_seconds)
    if window is None:
        return rt.store.count_done(job_id)
    where = f"window {index + 1} ({span(window.start_s, window.end_s)})"
    if window.attempts > rt.settings.max_window_attempts:
        reason = (
            f"{where} failed {window.attempts - 1} times; the last error was: {window.error or 'worker lost'}"
        )
        _fail_window(rt, window, reason)
        raise PermanentError(reason)
    started = time.monotonic()
    clock = ProgressClock()
    try:
        with lease_kept(rt, window, owner, clock), charged_to(share_of(job, index)):
            if not rt.storage.exists(window.result_key):
                result = process_window(rt, job, window, samples, clock)
                rt.storage.put_bytes(window.result_key, result.to_json())
    except (PermanentError, WindowTooLarge) as exc:
        reason = f"{where} failed: {exc}"
        _fail_window(rt, window, reason)
        raise PermanentError(reason) from exc
    except Exception as exc:
        # Transient: pending again so a retry (or the sweep) takes it, unless another worker has
        # taken it over meanwhile (our lease was handed back at shutdown).
        rt.store.hand_back_window(window.id, owner, str(exc)[:2000], refund=_outside(exc))
        raise
    elapsed = time.monotonic() - started
    rt.store.finish_window(window.id, elapsed)
    log.info("job %s: window %d done in %.1f s", job_id, index, elapsed)
    for hook in rt.on_window_done:
        hook(rt, job_id, index)
    return rt.store.count_done(job_id)


def _outside(exc: BaseException) -> bool:
    """The outside world's failure (a server away, a full disk), not the window's."""
    if isinstance(exc, TransientError):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _fail_window(rt: Runtime, window: Window, reason: str) -> None:
    rt.store.fail_window(window.id, reason)
    fail(rt, window.job_id, reason)


def process_window(
    rt: Runtime,
    job: Job,
    window: Window,
    samples: Samples | None = None,
    clock: ProgressClock | None = None,
) -> WindowResult:
    """The window's segments transcribed in parallel, and its summary (which hears the whole
    window, as one chat call) alongside them once the first segment is back. Requests are charged
    to the calling thread's share (``jobs.shares``); each answer ticks ``clock``.

    Why the summary waits for the first segment: the model server prefills requests in the order
    they arrive, and a 30-minute window's summary is 22,500 audio tokens (2.4 s of prefill on an
    H100, sixty segments' worth). Sent with the segments, the summaries of a backlog's first
    windows were prefilled before the segments beside them could finish, and the server answered
    nothing for over a minute (at costs x4, bench/fleet.py). Sent after the first segment, they
    are prefilled while the segments of the first wave decode and answer. The hold is one
    segment's latency; the summary (300 tokens to decode) still ends after the segments. Not for a
    clip (``Share.clip``): its one summary is its longest chain, and someone is waiting on it."""
    clock = clock or ProgressClock()
    share = current_share()
    engine = rt.engine
    with tempfile.TemporaryDirectory(prefix=f"voxbatch-{job.id}-{window.index}-") as tmp_name:
        tmp = Path(tmp_name)
        audio = tmp / "window.flac"
        began = time.monotonic()
        rt.storage.download(window.audio_key, audio)
        fetched = time.monotonic()
        timed = timed_engine(engine)
        if timed is not None:
            return _timed_window(rt, timed, job, window, audio, tmp, share)
        if samples is None:
            samples = rt.audio.read_samples(audio)
        segments = segment_samples(samples, SAMPLE_RATE, max_segment_s=segment_limit_s(rt))
        # When a window's requests go out: a clip slow behind a backlog shows where it waited.
        log.info(
            "job %s: window %d: %d segments; fetched in %.1f s, read and cut in %.1f s",
            job.id,
            window.index,
            len(segments),
            fetched - began,
            time.monotonic() - fetched,
        )
        done: set[int] = set()
        lock = threading.Lock()

        def progress(index: int) -> None:
            clock.tick()
            with lock:
                done.add(index)
                count = len(done)
            # Every few segments is enough for a progress bar; the last one always counts.
            if count == len(segments) or count % PROGRESS_EVERY == 0:
                rt.store.record_segments(window, count, len(segments))

        rt.store.record_segments(window, 0, len(segments))
        work = SegmentWork(
            rt,
            job.id,
            window.index,
            window.start_s,
            samples,
            tmp,
            hints_for(rt, job),
            share,
        )
        first_back = threading.Event()  # a segment is done (answered, refused or failed)
        if share.clip:
            first_back.set()  # a clip's summary is its longest chain, and someone waits on it
        with ThreadPoolExecutor(max_workers=_parallel(rt), thread_name_prefix=f"seg-{job.id}") as pool:
            hears = bool(segments) and not summary_from_transcripts(rt)
            # Submitted first so that it has its pool thread; it waits there for the first segment.
            summary_future = (
                pool.submit(_charged, share, clock, _after, first_back, _summary, rt, job, window, audio, tmp)
                if hears
                else None
            )
            try:
                futures = work.run(segments, pool, progress)
            except BaseException:
                first_back.set()  # no segment will come back: the summary must not wait forever
                raise
            for future in futures:
                future.add_done_callback(lambda _done: first_back.set())
            results = [f.result() for f in futures]
            summary, pieces = summary_future.result() if summary_future else (None, [])
    texts = [r.text for r in results if r.text.strip()]
    if texts and summary_from_transcripts(rt):  # the model cannot hear the whole window
        summary = transcript_summary(rt, job, window, texts)
    stored = [
        {"index": r.index, "start_s": r.start_s, "end_s": r.end_s, "text": r.text, "speech": r.speech}
        for r in results
    ]
    return _result(rt, window, stored, summary, pieces, [r.note for r in results if r.note])


def _after(event: threading.Event, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` once ``event`` is set."""
    event.wait()
    return fn(*args)


def _charged(share: Share, clock: ProgressClock, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a pool thread, its requests charged to ``share``; its answer ticks ``clock``."""
    with charged_to(share):
        result = fn(*args)
    clock.tick()
    return result


def _timed_window(
    rt: Runtime, engine: TimedEngine, job: Job, window: Window, audio: Path, tmp: Path, share: Share
) -> WindowResult:
    """An engine that times its own transcript hears the whole window (jobs/steps/timed.py)."""
    rt.store.record_segments(window, 0, 1)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"timed-{job.id}") as pool:
        summary_future = pool.submit(_charged, share, ProgressClock(), _summary, rt, job, window, audio, tmp)
        segments = timed_segments(
            rt, engine, job.id, window.start_s, audio, window.end_s - window.start_s, tmp, hints_for(rt, job)
        )
        summary, pieces = summary_future.result()
    rt.store.record_segments(window, len(segments), len(segments))
    return _result(rt, window, segments, summary, pieces, [])


def _result(
    rt: Runtime,
    window: Window,
    segments: list[dict[str, Any]],
    summary: str | None,
    pieces: list[dict[str, float]],
    notes: list[str],
) -> WindowResult:
    texts = [s["text"] for s in segments if s["text"].strip()]
    return WindowResult(
        index=window.index,
        start_s=window.start_s,
        end_s=window.end_s,
        transcript="\n".join(texts),
        summary=summary if texts else None,  # nothing said, nothing to summarise
        pieces=pieces,
        engine=rt.engine.name,
        model=rt.engine.model,
        segments=segments,
        notes=notes,
    )


def _parallel(rt: Runtime) -> int:
    """Segments in flight: the setting for a server that batches, the cores for one that does not."""
    local = rt.engine.capabilities.local_workers
    return max(1, int(local) if local else rt.settings.segment_concurrency) + 1  # + the summary


def _summary(
    rt: Runtime, job: Job, window: Window, audio: Path, tmp: Path
) -> tuple[str | None, list[dict[str, float]]]:
    """The window's summary from one chat call carrying its audio (cut smaller if refused)."""
    engine = rt.engine
    if not engine.capabilities.summaries:
        return None, []
    prompt = window_prompt_for(job, window)
    recut = Recutter(rt, tmp, job.id)
    parts = recut.over(lambda p: engine.summarize_audio(p, prompt), audio, 0.0, window.end_s - window.start_s)
    pieces = [{"start_s": window.start_s + p.start_s, "end_s": window.start_s + p.end_s} for p in parts]
    said = [
        (span(window.start_s + p.start_s, window.start_s + p.end_s), p.text.strip())
        for p in parts
        if p.text.strip()
    ]
    if len(said) == 1:
        return said[0][1], []
    return (engine.complete(merge_prompt(said)) if said else None), pieces
