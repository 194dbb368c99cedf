"""Time formats for people and subtitle files."""

from __future__ import annotations


def hms(seconds: float) -> str:
    """``00:27:14``: the window headings in document.md."""
    total = round(seconds)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def span(start_s: float, end_s: float) -> str:
    return f"{hms(start_s)} – {hms(end_s)}"


def clock(seconds: float, decimal_mark: str = ".") -> str:
    """``01:02:03.456``: hours, minutes, seconds and milliseconds (rounded to the millisecond).

    Hours grow past 99 rather than wrap. Negative times are refused.
    """
    if seconds < 0:
        raise ValueError(f"a time cannot be negative, got {seconds}")
    total_ms = round(seconds * 1000)
    h, rem = divmod(total_ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal_mark}{ms:03d}"


def srt_time(seconds: float) -> str:
    """``00:12:31,040``: a SubRip cue time."""
    return clock(seconds, ",")


def vtt_time(seconds: float) -> str:
    """``00:12:31.040``: a WebVTT cue time."""
    return clock(seconds, ".")


def stamp(seconds: float) -> str:
    """``[00:12:31]``: the time a transcript paragraph in document.md starts with.

    Rounded down, so a player seeking there starts just before the paragraph, never inside it.
    """
    if seconds < 0:
        raise ValueError(f"a time cannot be negative, got {seconds}")
    total = int(seconds + 1e-9)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"[{h:02d}:{m:02d}:{s:02d}]"
