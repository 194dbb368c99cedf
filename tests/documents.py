"""Checks on finished documents made from marker recordings (see tests/markers.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.speech import Recording

MARKER = re.compile(r"marker-(\d+)")


def markers_in(text: str) -> list[int]:
    return [int(m) for m in MARKER.findall(text)]


def check_document(out: Path, rec: Recording) -> dict[str, Any]:
    """Every marker once and in order, and each window holding exactly the markers in its range."""
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
    return doc
