"""The split: probe the source, cut it into windows in one decode pass, store them.

Idempotent: a job whose windows are all registered is not split again. Windows are registered one
by one as they are cut, so they can run while the split goes on (the job stays ``splitting`` until
the last one; the reduce barrier waits for the total). A cancel that lands while the split runs
stops it at the next window (``JobCancelled``); windows already stored stay.

A split can stop between windows and be taken up again later (``make_room``: a cpu worker's slot
is wanted by a shorter job's split, ``workers/tasks.py``); so can one whose worker died. Either
way the next split of the job resumes after the windows already registered: it decodes from the
start again (the cuts depend on what came before them) but stores only the windows after those.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from jobs.engine import Samples
from jobs.errors import InputError
from jobs.models import Job, JobStatus, Window, utcnow, window_audio_key
from jobs.runtime import Runtime
from jobs.steps.ending import ensure_running
from jobs.steps.profiled import window_limit_s
from jobs.storage import put_file
from jobs.storage_urls import open_storage, parse_s3_url

log = logging.getLogger(__name__)


def source_for_ffmpeg(rt: Runtime, job: Job) -> str:
    """A path or presigned URL ffmpeg can read; never a user string ffmpeg would interpret."""
    if job.source_key:
        return rt.storage.readable_url(job.source_key)
    if job.source.startswith("s3://"):
        bucket, key = parse_s3_url(job.source)
        try:
            return open_storage(f"s3://{bucket}", rt.settings.s3_endpoint_url).readable_url(key)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{job.source} does not exist or is not readable") from exc
    return str(Path(job.source))


WindowStored = Callable[[int, Samples | None], None]


def split_job(
    rt: Runtime,
    job_id: str,
    on_window: WindowStored | None = None,
    keep_samples: bool = False,
    make_room: Callable[[], bool] | None = None,
) -> int | None:
    """Cut the job's recording into windows; returns their count, or None when it stopped early.

    Each window is stored and registered as soon as it is cut, and ``on_window`` is told its
    index, so the model can work on it while the split goes on; with ``keep_samples`` it is also
    handed the window's samples (else None), for a caller that transcribes in this process.
    ``make_room`` is asked after each window that is not the last: True stops the split there
    (the job stays ``splitting``; the caller sends its split again, which resumes). A resumed
    split is not asked: each stop costs a replay of the decode up to it, so a job stops once at
    most, however long its recording and however many shorter jobs come after it.
    """
    job = rt.store.get(job_id)
    ensure_running(job)
    if job.windows_total is not None:
        return job.windows_total
    started = rt.store.transition(
        job_id,
        [JobStatus.queued, JobStatus.splitting],
        JobStatus.splitting,
        split_started_at=job.split_started_at or utcnow(),
        started_at=job.started_at or utcnow(),
    )
    if not started:
        ensure_running(rt.store.get(job_id))
    src = source_for_ffmpeg(rt, job)
    # split() probes the source itself (and refuses what is not audio): no second ffprobe here.
    max_window_s = window_limit_s(rt, job)  # the job's length, or less where the model hears less
    rows = _stored_prefix(rt.store.windows(job_id))
    if rows:
        log.info("job %s: resuming the split after %d stored windows", job_id, len(rows))
        make_room = None
    else:
        log.info("job %s: splitting into windows of ≤ %g s", job_id, max_window_s)
    with tempfile.TemporaryDirectory(prefix=f"voxbatch-split-{job_id}-") as tmp:
        windows = rt.audio.split(src, Path(tmp), max_window_s, keep_samples, skip_windows=len(rows))
        try:
            for w in windows:
                if rows and len(rows) == w.index and abs(rows[-1].end_s - w.start_s) > 1e-6:
                    raise InputError(
                        f"{job.source_name} changed while it was being split: window {w.index} "
                        f"now starts at {w.start_s:.3f} s, the stored one before it ends at "
                        f"{rows[-1].end_s:.3f} s"
                    )
                put_file(rt.storage, window_audio_key(job_id, w.index), w.path)
                w.path.unlink(missing_ok=True)
                rows.append(Window(job_id=job_id, index=w.index, start_s=w.start_s, end_s=w.end_s))
                # A cancel stops the split between windows, not after the whole recording.
                ensure_running(rt.store.get(job_id))
                rt.store.add_window(rows[-1])
                if on_window is not None:
                    on_window(w.index, w.samples)
                del w  # else its samples stay alive while the next window is cut
                if make_room is not None and _more_to_cut(job, rows[-1]) and make_room():
                    log.info("job %s: split stopped after %d windows to make room", job_id, len(rows))
                    return None
        finally:
            close = getattr(windows, "close", None)
            if close is not None:
                close()  # stops the decoders now, not when the generator is collected
    if not rows:
        raise InputError(f"{job.source_name} contains no audio")
    if not rt.store.add_windows(job_id, rows, duration_s=rows[-1].end_s):
        ensure_running(rt.store.get(job_id))
    log.info("job %s: %d windows", job_id, len(rows))
    return len(rows)


def _stored_prefix(stored: list[Window]) -> list[Window]:
    """The windows an earlier split of the job registered, 0, 1, ... with no gap (it stored them
    in order; a gap would be a window registered by something else, cut again to be safe)."""
    prefix: list[Window] = []
    for w in stored:
        if w.index != len(prefix):
            break
        prefix.append(w)  # already registered: add_windows skips it
    return prefix


def _more_to_cut(job: Job, last: Window) -> bool:
    """Whether audio is left after ``last`` (by the probed length; unknown: assume not, so a
    split that cannot tell never stops early)."""
    return job.duration_s is not None and job.duration_s - last.end_s > 1.0
