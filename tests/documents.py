"""Checks on finished documents made from marker recordings (see tests/markers.py)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import srt
import webvtt

from tests.speech import Recording

MARKER = re.compile(r"marker-(\d+)")
# Segments are cut at pauses with ≤ 0.1 s of padding; a marker's segment holds its whole tone.
EDGE_S = 0.05


def markers_in(text: str) -> list[int]:
    return [int(m) for m in MARKER.findall(text)]


def check_document(out: Path, rec: Recording) -> dict[str, Any]:
    """Every marker once and in order, in the transcript, each window, the segments and the
    captions; each marker's segment holds the marker's true time."""
    doc: dict[str, Any] = json.loads((out / "document.json").read_text())
    expected = [m.k for m in rec.markers]
    assert markers_in(doc["transcript"]) == expected
    assert markers_in((out / "transcript.txt").read_text()) == expected
    previous_end = 0.0
    for w in doc["windows"]:
        assert w["start_s"] == pytest.approx(previous_end, abs=1e-3)
        previous_end = w["end_s"]
        inside = [m.k for m in rec.markers if w["start_s"] <= m.start_s and m.end_s <= w["end_s"]]
        assert markers_in(w["transcript"]) == inside, w
    check_segments(doc, rec)
    check_captions(out, expected)
    return doc


def check_segments(doc: dict[str, Any], rec: Recording) -> None:
    segments = doc["segments"]
    assert [s["index"] for s in segments] == list(range(len(segments)))
    windows = {w["index"]: w for w in doc["windows"]}
    for s in segments:
        w = windows[s["window"]]
        assert w["start_s"] - 1e-3 <= s["start_s"] < s["end_s"] <= w["end_s"] + 1e-3, s
        assert s["end_s"] - s["start_s"] <= 30.0 + 1e-3, s
    for a, b in itertools.pairwise(segments):
        assert a["end_s"] <= b["start_s"] + 1e-3, (a, b)
    heard = [(k, s) for s in segments for k in markers_in(s["text"])]
    assert [k for k, _ in heard] == [m.k for m in rec.markers]
    where = {m.k: m for m in rec.markers}
    for k, s in heard:
        assert s["start_s"] <= where[k].start_s + EDGE_S and where[k].end_s - EDGE_S <= s["end_s"], (k, s)


def check_captions(out: Path, expected: list[int]) -> None:
    """transcript.srt and transcript.vtt parse with maintained libraries and with ffmpeg, respect the
    cue limits, and hold every marker once, in order."""
    cues = list(srt.parse((out / "transcript.srt").read_text()))
    vtt = webvtt.read(str(out / "transcript.vtt"))
    assert markers_in(" ".join(c.content for c in cues)) == expected
    assert markers_in(" ".join(c.text for c in vtt)) == expected
    assert len(cues) == len(vtt.captions)
    for cue in cues:
        assert (cue.end - cue.start).total_seconds() <= 7.0 + 1e-3, cue
        lines = cue.content.split("\n")
        assert len(lines) <= 2 and all(len(line) <= 42 for line in lines), cue
    for name in ("transcript.srt", "transcript.vtt"):
        done = subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(out / name), "-f", "ass", "-"],
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0 and not done.stderr.strip(), (name, done.stderr[-500:])
