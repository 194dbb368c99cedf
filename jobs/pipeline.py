"""The pipeline's use cases: create, split, run a window, claim and run the reduce, cancel, retry.

Each step takes ids, reads and writes the database and object storage, and is safe to run twice:
results go to deterministic keys and a step whose result exists is skipped. The same functions run
in one process (``voxbatch run``) or as Celery tasks on many machines (``workers.tasks``).

Fan-in is a database barrier: after a window is done the caller asks ``claim_reduce``; one
conditional UPDATE lets exactly one caller through.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, or_, update
from sqlmodel import col, select

from jobs.db import Database
from jobs.documents import RENDERERS, Document
from jobs.engine import AudioTool, Engine, WindowAudio
from jobs.errors import (
    EngineRejected,
    InputError,
    JobCancelled,
    NotFound,
    PermanentError,
    TransientError,
    VoxbatchError,
    WindowTooLarge,
)
from jobs.languages import check_language
from jobs.models import (
    Job,
    JobStatus,
    Window,
    WindowStatus,
    utcnow,
    window_audio_key,
)
from jobs.presets import get_preset, merge_prompt, overall_prompt, window_prompt
from jobs.settings import MAX_WINDOW_MINUTES, Settings
from jobs.stitching import WindowResult, check_tiling
from jobs.storage import S3Storage, Storage, parse_s3_url
from jobs.timecodes import span

log = logging.getLogger(__name__)

# Below this a refused piece is not worth cutting again: the server's refusal is about something else.
MIN_PIECE_S = 10.0
MAX_RESPLIT_DEPTH = 5
# Characters of window summaries reduced in one text call (~12k tokens, well inside 32k).
REDUCE_BUDGET_CHARS = 48_000

OFFLINE_NOTE = (
    "No summaries: this document was made by the offline engine (pocketsphinx), which only "
    "transcribes. Point VOXBATCH_VLLM_URL at a vLLM server running Voxtral for summaries that "
    "follow your instructions."
)


@dataclass(frozen=True)
class JobOptions:
    instructions: str | None = None
    preset: str | None = None
    language: str | None = None
    window_minutes: float | None = None
    webhook_url: str | None = None

    def validated(self, settings: Settings) -> JobOptions:
        preset = get_preset(self.preset).name
        minutes = self.window_minutes if self.window_minutes is not None else settings.window_minutes
        if not 1 <= minutes <= MAX_WINDOW_MINUTES:
            raise InputError(
                f"--window-minutes must be between 1 and {MAX_WINDOW_MINUTES} (Voxtral's context "
                f"holds at most {MAX_WINDOW_MINUTES} minutes of audio), not {minutes:g}"
            )
        instructions = (self.instructions or "").strip() or None
        if instructions and len(instructions) > 8000:
            raise InputError("instructions are longer than 8000 characters")
        return JobOptions(
            instructions=instructions,
            preset=preset,
            language=check_language(self.language),
            window_minutes=float(minutes),
            webhook_url=self.webhook_url,
        )


@dataclass
class Runtime:
    """What the steps need; built once per process at the edge (CLI, worker, API)."""

    db: Database
    storage: Storage
    audio: AudioTool
    settings: Settings
    engine_factory: Callable[[], Engine]
    _engine: Engine | None = field(default=None, repr=False)
    _engine_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = self.engine_factory()
            return self._engine


# --- jobs ---------------------------------------------------------------------------------------


def create_job(
    rt: Runtime,
    source: str,
    options: JobOptions,
    *,
    source_name: str | None = None,
    source_key: str | None = None,
    tenant: str | None = None,
    fingerprint: str | None = None,
) -> Job:
    opts = options.validated(rt.settings)
    job = Job(
        source=source,
        source_key=source_key,
        source_name=source_name or Path(source).name,
        tenant=tenant,
        fingerprint=fingerprint,
        instructions=opts.instructions,
        preset=opts.preset or "conference-talk",
        language=opts.language,
        window_minutes=opts.window_minutes or MAX_WINDOW_MINUTES,
        webhook_url=opts.webhook_url,
    )
    with rt.db.session() as s:
        s.add(job)
        s.commit()
        s.refresh(job)
    log.info("job %s: created for %s", job.id, job.source_name)
    return job


def get_job(rt: Runtime, job_id: str, tenant: str | None = None) -> Job:
    with rt.db.session() as s:
        job = s.get(Job, job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        raise NotFound(f"no job {job_id}")
    return job


def get_windows(rt: Runtime, job_id: str) -> list[Window]:
    with rt.db.session() as s:
        return list(s.exec(select(Window).where(Window.job_id == job_id).order_by(col(Window.index))))


def find_resumable(rt: Runtime, fingerprint: str) -> Job | None:
    """The newest job for the same recording and options, so that a re-run resumes it."""
    with rt.db.session() as s:
        return s.exec(
            select(Job)
            .where(Job.fingerprint == fingerprint)
            .where(col(Job.status) != JobStatus.cancelled)
            .order_by(col(Job.created_at).desc())
        ).first()


def _set(rt: Runtime, job_id: str, **values: object) -> None:
    with rt.db.session() as s:
        s.execute(update(Job).where(col(Job.id) == job_id).values(updated_at=utcnow(), **values))
        s.commit()


def _ensure_running(job: Job) -> None:
    if job.status == JobStatus.cancelled:
        raise JobCancelled(f"job {job.id} was cancelled")


def fail_job(rt: Runtime, job_id: str, reason: str) -> bool:
    """Mark a job failed with one sentence; finished windows and stored results are kept.

    The first reason wins: a job that already ended keeps its state. Returns True if this call
    ended the job.
    """
    with rt.db.session() as s:
        res = s.execute(
            update(Job)
            .where(col(Job.id) == job_id)
            .where(col(Job.status).not_in([JobStatus.succeeded, JobStatus.cancelled, JobStatus.failed]))
            .values(status=JobStatus.failed, error=reason, finished_at=utcnow(), updated_at=utcnow())
        )
        s.commit()
        ended = bool(res.rowcount == 1)  # type: ignore[attr-defined]
    if ended:
        log.info("job %s: failed: %s", job_id, reason)
    return ended


def cancel_job(rt: Runtime, job_id: str, tenant: str | None = None) -> Job:
    job = get_job(rt, job_id, tenant)
    if not JobStatus(job.status).finished:
        _set(rt, job_id, status=JobStatus.cancelled, finished_at=utcnow(), error="cancelled by user")
        log.info("job %s: cancelled", job_id)
    return get_job(rt, job_id)


def retry_job(rt: Runtime, job_id: str, tenant: str | None = None) -> Job:
    """Put a failed or cancelled job back in the queue; windows already done are kept."""
    job = get_job(rt, job_id, tenant)
    if job.status not in (JobStatus.failed, JobStatus.cancelled):
        raise InputError(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
    with rt.db.session() as s:
        s.execute(
            update(Window)
            .where(col(Window.job_id) == job_id)
            .where(col(Window.status) != WindowStatus.done)
            .values(
                status=WindowStatus.pending, attempts=0, error=None, lease_owner=None, lease_expires_at=None
            )
        )
        status = JobStatus.queued if job.windows_total is None else JobStatus.transcribing
        s.execute(
            update(Job)
            .where(col(Job.id) == job_id)
            .values(
                status=status,
                error=None,
                finished_at=None,
                reduce_claimed=False,
                attempt=Job.attempt + 1,
                updated_at=utcnow(),
            )
        )
        s.commit()
    log.info("job %s: retry requested", job_id)
    return get_job(rt, job_id)


# --- split --------------------------------------------------------------------------------------


def source_for_ffmpeg(rt: Runtime, job: Job) -> str:
    """A path or presigned URL ffmpeg can read; never a user string ffmpeg would interpret."""
    if job.source_key:
        local = rt.storage.local_path(job.source_key)
        if local is not None:
            return str(local)
        url = rt.storage.presigned_url(job.source_key, expires_s=24 * 3600)
        if url is None:
            raise PermanentError(f"storage cannot serve {job.source_key}")
        return url
    if job.source.startswith("s3://"):
        bucket, key = parse_s3_url(job.source)
        s3 = S3Storage(bucket, "", endpoint_url=rt.settings.s3_endpoint_url)
        if not s3.exists(key):
            raise InputError(f"{job.source} does not exist or is not readable")
        url = s3.presigned_url(key, expires_s=24 * 3600)
        assert url is not None
        return url
    return str(Path(job.source))


def split_job(rt: Runtime, job_id: str) -> int:
    """Probe the source, cut it into windows in one decode pass, store them; returns their count.

    Idempotent: when the windows already exist the split is skipped.
    """
    job = get_job(rt, job_id)
    _ensure_running(job)
    if job.windows_total is not None:
        return job.windows_total
    _set(
        rt,
        job_id,
        status=JobStatus.splitting,
        split_started_at=utcnow(),
        started_at=job.started_at or utcnow(),
    )
    src = source_for_ffmpeg(rt, job)
    # split() probes the source itself (and refuses what is not audio): no second ffprobe here.
    log.info("job %s: splitting into windows of ≤ %g min", job_id, job.window_minutes)
    rows: list[Window] = []
    with tempfile.TemporaryDirectory(prefix=f"voxbatch-split-{job_id}-") as tmp:
        for w in rt.audio.split(src, Path(tmp), job.window_minutes * 60.0):
            rt.storage.put_file(window_audio_key(job_id, w.index), w.path)
            w.path.unlink(missing_ok=True)
            rows.append(Window(job_id=job_id, index=w.index, start_s=w.start_s, end_s=w.end_s))
    if not rows:
        raise InputError(f"{job.source_name} contains no audio")
    duration = rows[-1].end_s
    with rt.db.session() as s:
        existing = {w.index for w in s.exec(select(Window).where(Window.job_id == job_id))}
        for row in rows:
            if row.index not in existing:
                s.add(row)
        s.execute(
            update(Job)
            .where(col(Job.id) == job_id)
            .where(col(Job.status) == JobStatus.splitting)
            .values(
                windows_total=len(rows),
                duration_s=duration,
                status=JobStatus.transcribing,
                split_finished_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        s.commit()
    log.info("job %s: %d windows", job_id, len(rows))
    return len(rows)


# --- windows ------------------------------------------------------------------------------------


def claim_window(rt: Runtime, job_id: str, index: int, owner: str) -> Window | None:
    """Take the window's lease; None when it is done or another worker's lease is still valid."""
    now = utcnow()
    lease = timedelta(seconds=rt.settings.lease_seconds)
    with rt.db.session() as s:
        res = s.execute(
            update(Window)
            .where(col(Window.job_id) == job_id)
            .where(col(Window.index) == index)
            .where(
                or_(
                    col(Window.status) == WindowStatus.pending,
                    (col(Window.status) == WindowStatus.running)
                    & ((col(Window.lease_expires_at) < now) | (col(Window.lease_owner) == owner)),
                )
            )
            .values(
                status=WindowStatus.running,
                lease_owner=owner,
                lease_expires_at=now + lease,
                attempts=Window.attempts + 1,
                started_at=now,
            )
        )
        s.commit()
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return s.exec(select(Window).where(Window.job_id == job_id).where(Window.index == index)).one()


@contextmanager
def _every(period_s: float, fn: Callable[[], None], name: str) -> Iterator[None]:
    """Call ``fn`` every ``period_s`` in a thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period_s):
            try:
                fn()
            except Exception:
                # A missed beat is survivable (the next one may work); a dead thread is not.
                log.warning("%s failed", name, exc_info=True)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _renew_period(rt: Runtime) -> float:
    return max(1.0, rt.settings.lease_seconds / 3)


def _lease_kept(rt: Runtime, window: Window, owner: str) -> AbstractContextManager[None]:
    """Renew the lease while the window runs, so only a dead worker's window is taken over."""

    def renew() -> None:
        with rt.db.session() as s:
            s.execute(
                update(Window)
                .where(col(Window.id) == window.id)
                .where(col(Window.lease_owner) == owner)
                .values(lease_expires_at=utcnow() + timedelta(seconds=rt.settings.lease_seconds))
            )
            s.commit()

    return _every(_renew_period(rt), renew, f"lease-{window.job_id}-{window.index}")


def job_heartbeat(rt: Runtime, job_id: str) -> AbstractContextManager[None]:
    """Keep the job's ``updated_at`` fresh while a split or reduce runs, so the sweep leaves it be."""

    def beat() -> None:
        with rt.db.session() as s:
            s.execute(
                update(Job)
                .where(col(Job.id) == job_id)
                .where(col(Job.status).in_([JobStatus.splitting, JobStatus.reducing]))
                .values(updated_at=utcnow())
            )
            s.commit()

    return _every(_renew_period(rt), beat, f"heartbeat-{job_id}")


def run_window(rt: Runtime, job_id: str, index: int, owner: str = "local") -> bool:
    """Transcribe and summarise one window. Returns True when every window of the job is done.

    Safe to call twice: a window whose result is stored is marked done without calling the engine.
    Permanent errors fail the window and the job; transient ones propagate for the caller to retry.
    """
    job = get_job(rt, job_id)
    _ensure_running(job)
    window = claim_window(rt, job_id, index, owner)
    if window is None:
        return _all_done(rt, job_id)
    if window.attempts > rt.settings.max_window_attempts:
        reason = (
            f"window {index + 1} ({span(window.start_s, window.end_s)}) failed "
            f"{window.attempts - 1} times; the last error was: {window.error or 'worker lost'}"
        )
        _fail_window(rt, window, reason)
        raise PermanentError(reason)
    started = time.monotonic()
    try:
        with _lease_kept(rt, window, owner):
            if not rt.storage.exists(window.result_key):
                result = _process_window(rt, job, window)
                rt.storage.put_bytes(window.result_key, result.to_json())
    except (PermanentError, WindowTooLarge) as exc:
        reason = f"window {index + 1} ({span(window.start_s, window.end_s)}) failed: {exc}"
        _fail_window(rt, window, reason)
        raise PermanentError(reason) from exc
    except Exception as exc:
        # Transient: leave the window pending so a retry (or the sweep) takes it again, unless
        # another worker has taken it over meanwhile (our lease was handed back at shutdown).
        with rt.db.session() as s:
            s.execute(
                update(Window)
                .where(col(Window.id) == window.id)
                .where(col(Window.lease_owner) == owner)
                .values(
                    status=WindowStatus.pending,
                    lease_owner=None,
                    lease_expires_at=None,
                    error=str(exc)[:2000],
                )
            )
            s.commit()
        raise
    elapsed = time.monotonic() - started
    with rt.db.session() as s:
        s.execute(
            update(Window)
            .where(col(Window.id) == window.id)
            .values(
                status=WindowStatus.done,
                lease_owner=None,
                lease_expires_at=None,
                error=None,
                engine_s=elapsed,
                finished_at=utcnow(),
            )
        )
        s.commit()
    log.info("job %s: window %d done in %.1f s", job_id, index, elapsed)
    return _all_done(rt, job_id)


def _fail_window(rt: Runtime, window: Window, reason: str) -> None:
    with rt.db.session() as s:
        s.execute(
            update(Window)
            .where(col(Window.id) == window.id)
            .values(status=WindowStatus.failed, error=reason, lease_owner=None, lease_expires_at=None)
        )
        s.commit()
    fail_job(rt, window.job_id, reason)


def _all_done(rt: Runtime, job_id: str) -> bool:
    with rt.db.session() as s:
        done = s.exec(
            select(func.count(func.distinct(Window.index)))
            .where(Window.job_id == job_id)
            .where(Window.status == WindowStatus.done)
        ).one()
        # updated_at doubles as the job's last sign of progress for the orphan sweep.
        s.execute(update(Job).where(col(Job.id) == job_id).values(windows_done=done, updated_at=utcnow()))
        s.commit()
        total = s.exec(select(Job.windows_total).where(Job.id == job_id)).one()
    return total is not None and done >= total


def pending_windows(rt: Runtime, job_id: str) -> list[int]:
    with rt.db.session() as s:
        return list(
            s.exec(
                select(Window.index)
                .where(Window.job_id == job_id)
                .where(col(Window.status) != WindowStatus.done)
                .order_by(col(Window.index))
            )
        )


def expired_leases(rt: Runtime) -> list[tuple[str, int]]:
    """Windows whose worker stopped renewing its lease (killed, lost its network)."""
    with rt.db.session() as s:
        rows = s.exec(
            select(Window.job_id, Window.index)
            .join(Job, col(Job.id) == col(Window.job_id))
            .where(Window.status == WindowStatus.running)
            .where(col(Window.lease_expires_at) < utcnow())
            .where(Job.status == JobStatus.transcribing)
        ).all()
    return [(j, i) for j, i in rows]


# --- what a window does -------------------------------------------------------------------------


@dataclass
class _Piece:
    start_s: float  # relative to the window
    end_s: float
    text: str


class _WindowWork:
    """Runs one engine operation over a window, cutting it smaller whenever the server refuses."""

    def __init__(self, rt: Runtime, tmp: Path, job_id: str) -> None:
        self.rt = rt
        self.tmp = tmp
        self.job_id = job_id
        self._splits: dict[tuple[Path, float], list[WindowAudio]] = {}

    def over(
        self, op: Callable[[Path], str], path: Path, start: float, end: float, depth: int = 0
    ) -> list[_Piece]:
        limit = self.rt.engine.max_audio_s()
        if limit is not None and end - start > limit + 0.5:
            return self._cut(op, path, start, end, limit * 0.97, depth)
        try:
            return [_Piece(start, end, op(path))]
        except WindowTooLarge as exc:
            length = end - start
            if depth >= MAX_RESPLIT_DEPTH or length < 2 * MIN_PIECE_S:
                raise EngineRejected(f"the model server refused even a {length:.0f} s piece: {exc}") from exc
            target = length / 2
            if exc.max_duration_s and exc.max_duration_s < length:
                target = max(MIN_PIECE_S, exc.max_duration_s * 0.97)
            log.info(
                "job %s: server refused %.0f s of audio (%s); cutting into ≤ %.0f s pieces",
                self.job_id,
                length,
                exc,
                target,
            )
            return self._cut(op, path, start, end, target, depth + 1)

    def _cut(
        self, op: Callable[[Path], str], path: Path, start: float, end: float, max_s: float, depth: int
    ) -> list[_Piece]:
        pieces: list[_Piece] = []
        for w in self._split(path, max_s):
            pieces += self.over(op, w.path, start + w.start_s, start + w.end_s, depth)
        return pieces

    def _split(self, path: Path, max_s: float) -> list[WindowAudio]:
        # The summary pass meets the same refusal as the transcript pass: cut each file once.
        key = (path, round(max_s, 3))
        if key not in self._splits:
            out_dir = self.tmp / f"pieces-{len(self._splits)}"
            out_dir.mkdir()
            self._splits[key] = list(self.rt.audio.split(str(path), out_dir, max_s))
        return self._splits[key]


def _process_window(rt: Runtime, job: Job, window: Window) -> WindowResult:
    engine = rt.engine
    preset = get_preset(job.preset)
    total = job.windows_total or 1
    with tempfile.TemporaryDirectory(prefix=f"voxbatch-{job.id}-{window.index}-") as tmp_name:
        tmp = Path(tmp_name)
        audio = tmp / "window.flac"
        local = rt.storage.local_path(window.audio_key)
        if local is not None and local.is_file():
            audio = local
        else:
            rt.storage.download(window.audio_key, audio)
        work = _WindowWork(rt, tmp, job.id)
        length = window.end_s - window.start_s
        pieces = work.over(lambda p: engine.transcribe(p, job.language), audio, 0.0, length)
        transcript = "\n".join(p.text.strip() for p in pieces if p.text.strip())
        summary: str | None = None
        # No speech, nothing to summarise: asking anyway invites the model to invent content.
        if engine.can_summarize and transcript:
            prompt = window_prompt(
                preset, job.instructions, window.index, total, span(window.start_s, window.end_s)
            )
            parts = work.over(lambda p: engine.summarize_audio(p, prompt), audio, 0.0, length)
            said = [
                (span(window.start_s + p.start_s, window.start_s + p.end_s), p.text.strip())
                for p in parts
                if p.text.strip()
            ]
            if len(said) == 1:
                summary = said[0][1]
            elif said:
                summary = engine.complete(merge_prompt(said))
    return WindowResult(
        index=window.index,
        start_s=window.start_s,
        end_s=window.end_s,
        transcript=transcript,
        summary=summary,
        pieces=[{"start_s": window.start_s + p.start_s, "end_s": window.start_s + p.end_s} for p in pieces]
        if len(pieces) > 1
        else [],
        engine=engine.name,
        model=engine.model,
    )


# --- reduce -------------------------------------------------------------------------------------


def claim_reduce(rt: Runtime, job_id: str) -> bool:
    """The fan-in barrier: True for exactly one caller once every window is done."""
    _all_done(rt, job_id)
    with rt.db.session() as s:
        res = s.execute(
            update(Job)
            .where(col(Job.id) == job_id)
            .where(col(Job.reduce_claimed).is_(False))
            .where(col(Job.status) == JobStatus.transcribing)
            .where(col(Job.windows_total).is_not(None))
            .where(col(Job.windows_done) >= col(Job.windows_total))
            .values(
                reduce_claimed=True,
                status=JobStatus.reducing,
                reduce_started_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        s.commit()
        return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def reduce_job(rt: Runtime, job_id: str) -> Job:
    """Stitch the windows, write the overall summary, render and store the documents."""
    job = get_job(rt, job_id)
    _ensure_running(job)
    windows = get_windows(rt, job_id)
    results = [WindowResult.from_json(rt.storage.get_bytes(w.result_key)) for w in windows]
    results.sort(key=lambda r: r.index)
    check_tiling(results, job.duration_s)
    engine = rt.engine
    notes: list[str] = []
    summary: str | None = None
    if engine.can_summarize:
        summary = _overall_summary(rt, job, results)
    else:
        notes.append(OFFLINE_NOTE)
    if not any(r.transcript.strip() for r in results):
        notes.append("No speech was detected in this recording.")
    doc = Document(
        job_id=job.id,
        source=job.source,
        title=Path(job.source_name).stem or job.source_name or job.id,
        duration_s=job.duration_s or (results[-1].end_s if results else 0.0),
        language=job.language,
        engine=engine.name,
        model=engine.model,
        preset=job.preset,
        instructions=job.instructions,
        summary=summary,
        windows=results,
        notes=notes,
    )
    for name, render in RENDERERS.items():
        rt.storage.put_bytes(job.output_prefix + name, render(doc))
    with rt.db.session() as s:
        s.execute(
            update(Job)
            .where(col(Job.id) == job_id)
            .where(col(Job.status) == JobStatus.reducing)
            .values(
                status=JobStatus.succeeded,
                engine=engine.name,
                model=engine.model,
                finished_at=utcnow(),
                updated_at=utcnow(),
                error=None,
            )
        )
        s.commit()
    log.info("job %s: succeeded", job_id)
    return get_job(rt, job_id)


def _overall_summary(rt: Runtime, job: Job, results: list[WindowResult]) -> str | None:
    items = [(span(r.start_s, r.end_s), r.summary) for r in results if r.summary]
    if not items:
        return None
    preset = get_preset(job.preset)
    pairs: list[tuple[str, str]] = [(s, t) for s, t in items if t]
    # Map-reduce: merge runs of summaries until all of them fit one prompt.
    while len(pairs) > 1 and sum(len(t) for _, t in pairs) > REDUCE_BUDGET_CHARS:
        merged: list[tuple[str, str]] = []
        group: list[tuple[str, str]] = []
        size = 0
        for pair in pairs:
            if group and size + len(pair[1]) > REDUCE_BUDGET_CHARS // 2:
                merged.append(_merge(rt, group))
                group, size = [], 0
            group.append(pair)
            size += len(pair[1])
        if group:
            merged.append(_merge(rt, group))
        if len(merged) >= len(pairs):
            break
        pairs = merged
    return rt.engine.complete(overall_prompt(preset, job.instructions, pairs)).strip() or None


def _merge(rt: Runtime, group: list[tuple[str, str]]) -> tuple[str, str]:
    first, last = group[0][0], group[-1][0]
    label = f"{first.split(' – ')[0]} – {last.split(' – ')[-1]}"
    if len(group) == 1:
        return group[0]
    return label, rt.engine.complete(merge_prompt(group))


# --- in one process -----------------------------------------------------------------------------


def run_local(rt: Runtime, job_id: str, progress: Callable[[int, int], None] | None = None) -> Job:
    """The whole pipeline in this process: split, every window in order, reduce.

    A failure marks the job failed with its reason and re-raises; what was done stays stored,
    so running the same job again resumes after the last finished window.
    """
    try:
        total = split_job(rt, job_id)
        done = total - len(pending_windows(rt, job_id))
        if progress:
            progress(done, total)
        for index in pending_windows(rt, job_id):
            run_window(rt, job_id, index)
            done += 1
            if progress:
                progress(done, total)
        job = get_job(rt, job_id)
        if job.status == JobStatus.succeeded:
            return job
        if not claim_reduce(rt, job_id) and get_job(rt, job_id).status != JobStatus.reducing:
            raise PermanentError(f"job {job_id} is {get_job(rt, job_id).status}; nothing to reduce")
        return reduce_job(rt, job_id)
    except JobCancelled:
        raise
    except VoxbatchError as exc:
        if not isinstance(exc, TransientError):
            fail_job(rt, job_id, str(exc))
        else:
            fail_job(rt, job_id, f"{exc} (run the same command again to resume)")
        raise
    except Exception as exc:
        fail_job(rt, job_id, f"internal error: {exc!r}")
        raise


def prepare_rerun(rt: Runtime, job: Job) -> Job:
    """A job found by fingerprint: let a failed or half-done run continue where it stopped."""
    if job.status == JobStatus.failed:
        return retry_job(rt, job.id)
    if job.status == JobStatus.reducing:
        # The previous process died while reducing: the reduce is idempotent, take it again.
        _set(rt, job.id, status=JobStatus.transcribing, reduce_claimed=False)
    if job.status == JobStatus.splitting:
        _set(rt, job.id, status=JobStatus.queued)
    with rt.db.session() as s:
        # A local run is the only worker: leases left by a killed process are stale.
        s.execute(
            update(Window)
            .where(col(Window.job_id) == job.id)
            .where(col(Window.status) == WindowStatus.running)
            .values(status=WindowStatus.pending, lease_owner=None, lease_expires_at=None)
        )
        s.commit()
    return get_job(rt, job.id)
