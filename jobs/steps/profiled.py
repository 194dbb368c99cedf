"""Sizes and summary sources the steps take from the model's profile (jobs/profiles.py).

Only a vLLM-served model has a profile (the engine's ``capabilities.profile``); other engines
(hosted APIs, offline) keep the defaults: 30-s segments, the job's window length, a summary that
hears the window.
"""

from __future__ import annotations

from jobs.models import Job, Window
from jobs.options import parse_vocabulary
from jobs.presets import get_preset, whole_recording_prompt, window_prompt
from jobs.profiles import MAX_SEGMENT_S, ModelProfile
from jobs.runtime import Runtime
from jobs.timecodes import span


def model_profile(rt: Runtime) -> ModelProfile | None:
    """The profile of the model the engine serves, when it has one (a vLLM-served model)."""
    return rt.engine.capabilities.profile


def window_limit_s(rt: Runtime, job: Job) -> float:
    """The job's window length, cut to what the model's summary request can take."""
    limit = job.window_minutes * 60.0
    profile = model_profile(rt)
    return min(limit, profile.max_window_s()) if profile else limit


def segment_limit_s(rt: Runtime) -> float:
    profile = model_profile(rt)
    return profile.segment_s() if profile else MAX_SEGMENT_S


def summary_from_transcripts(rt: Runtime) -> bool:
    """True when the model cannot hear a window in one request: the summary reads its transcript."""
    profile = model_profile(rt)
    summaries = rt.engine.capabilities.summaries
    return profile is not None and summaries and profile.summary_source() == "transcripts"


def is_whole_recording(job: Job, window: Window) -> bool:
    """The job's only window: the first, ending where the recording ends (by the length probed
    when the job was made, known before the split counts the windows: the answer is the same
    whether the window runs while the split goes on or after it)."""
    if window.index != 0:
        return False
    if job.duration_s is not None:
        return window.end_s >= job.duration_s - 0.5
    return job.windows_total == 1


def window_prompt_for(job: Job, window: Window) -> str:
    """What the window's summary is asked for: the preset, the user's instructions, the vocabulary;
    for a job's only window, the preset's overall form (it is the overall summary)."""
    if is_whole_recording(job, window):
        return whole_recording_prompt(
            get_preset(job.preset),
            job.instructions,
            span(window.start_s, window.end_s),
            vocabulary=parse_vocabulary(job.vocabulary),
        )
    return window_prompt(
        get_preset(job.preset),
        job.instructions,
        window.index,
        span(window.start_s, window.end_s),
        vocabulary=parse_vocabulary(job.vocabulary),
    )


def transcript_summary(rt: Runtime, job: Job, window: Window, texts: list[str]) -> str | None:
    """The window's summary from its segment transcripts, in one text-only request."""
    prompt = window_prompt_for(job, window)
    transcript = "\n".join(t.strip() for t in texts if t.strip())
    if not transcript:
        return None
    text = (
        f"{prompt}\n\nThe model cannot listen to this part; here is its verbatim transcript:\n\n{transcript}"
    )
    return rt.engine.complete(text).strip() or None
