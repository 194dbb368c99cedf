"""One window: claim its lease, transcribe and summarise it, store the result, mark it done.

Safe to run twice: a window whose result is stored is marked done without calling the engine.
Permanent errors fail the window and the job; transient ones hand the window back (pending) and
propagate for the caller to retry. While the engine works, a thread renews the lease, so only a
dead worker's window is taken over by the sweep.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from jobs.errors import PermanentError, WindowTooLarge
from jobs.models import Job, Window
from jobs.presets import get_preset, merge_prompt, window_prompt
from jobs.runtime import Runtime
from jobs.steps.ending import ensure_running, fail
from jobs.steps.leases import lease_kept
from jobs.steps.recut import Recutter
from jobs.stitching import WindowResult
from jobs.timecodes import span

log = logging.getLogger(__name__)


def run_window(rt: Runtime, job_id: str, index: int, owner: str = "local") -> bool:
    """Transcribe and summarise one window. Returns True when every window of the job is done."""
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
    try:
        with lease_kept(rt, window, owner):
            if not rt.storage.exists(window.result_key):
                result = process_window(rt, job, window)
                rt.storage.put_bytes(window.result_key, result.to_json())
    except (PermanentError, WindowTooLarge) as exc:
        reason = f"{where} failed: {exc}"
        _fail_window(rt, window, reason)
        raise PermanentError(reason) from exc
    except Exception as exc:
        # Transient: pending again so a retry (or the sweep) takes it, unless another worker has
        # taken it over meanwhile (our lease was handed back at shutdown).
        rt.store.hand_back_window(window.id, owner, str(exc)[:2000])
        raise
    elapsed = time.monotonic() - started
    rt.store.finish_window(window.id, elapsed)
    log.info("job %s: window %d done in %.1f s", job_id, index, elapsed)
    return rt.store.count_done(job_id)


def _fail_window(rt: Runtime, window: Window, reason: str) -> None:
    rt.store.fail_window(window.id, reason)
    fail(rt, window.job_id, reason)


def process_window(rt: Runtime, job: Job, window: Window) -> WindowResult:
    engine = rt.engine
    preset = get_preset(job.preset)
    total = job.windows_total or 1
    with tempfile.TemporaryDirectory(prefix=f"voxbatch-{job.id}-{window.index}-") as tmp_name:
        tmp = Path(tmp_name)
        audio = tmp / "window.flac"
        rt.storage.download(window.audio_key, audio)
        recut = Recutter(rt, tmp, job.id)
        length = window.end_s - window.start_s
        pieces = recut.over(lambda p: engine.transcribe(p, job.language), audio, 0.0, length)
        transcript = "\n".join(p.text.strip() for p in pieces if p.text.strip())
        summary: str | None = None
        # No speech, nothing to summarise: asking anyway invites the model to invent content.
        if engine.can_summarize and transcript:
            prompt = window_prompt(
                preset, job.instructions, window.index, total, span(window.start_s, window.end_s)
            )
            parts = recut.over(lambda p: engine.summarize_audio(p, prompt), audio, 0.0, length)
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
