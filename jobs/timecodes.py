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
