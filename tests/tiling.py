"""Checks the tests make of a split: windows that tile a recording in order, each within the limit."""

from __future__ import annotations

from collections.abc import Sequence


class CoverageError(ValueError):
    """Windows that do not tile a recording: out of order, overlapping, gapped or too long."""


def check_coverage(
    windows: Sequence[tuple[float, float]],
    max_window_s: float,
    duration_s: float | None = None,
    tolerance_s: float = 1e-6,
) -> None:
    """Raise CoverageError unless ``windows`` tile ``[0, duration_s)`` in order, each ≤ the max.

    ``duration_s=None`` checks everything but the end of the last window.
    """
    if not windows:
        raise CoverageError("there are no windows")
    expected_start = 0.0
    for index, (start, end) in enumerate(windows):
        if abs(start - expected_start) > tolerance_s:
            kind = "a gap" if start > expected_start else "an overlap"
            raise CoverageError(
                f"window {index} starts at {start:.6f} s but the previous one ends at "
                f"{expected_start:.6f} s ({kind})"
            )
        if end <= start:
            raise CoverageError(f"window {index} is empty or reversed ({start:.6f}–{end:.6f} s)")
        if end - start > max_window_s + tolerance_s:
            raise CoverageError(
                f"window {index} lasts {end - start:.3f} s, more than the {max_window_s:g} s allowed"
            )
        expected_start = end
    if duration_s is not None and abs(expected_start - duration_s) > tolerance_s:
        raise CoverageError(
            f"the windows end at {expected_start:.6f} s but the recording lasts {duration_s:.6f} s"
        )
