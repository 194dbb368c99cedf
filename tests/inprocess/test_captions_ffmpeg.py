"""The SRT and VTT files voxbatch writes (jobs/captions.py), read back by ffmpeg."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jobs.captions import render_srt, render_vtt
from tests.core.test_captions import sample_cues

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed")


@needs_ffmpeg
@pytest.mark.parametrize("kind", ["srt", "vtt"])
def test_ffmpeg_reads_the_captions_and_converts_them_to_ass(tmp_path: Path, kind: str) -> None:
    _segments, cues = sample_cues()
    source = tmp_path / f"transcript.{kind}"
    source.write_text(render_srt(cues) if kind == "srt" else render_vtt(cues), encoding="utf-8")
    target = tmp_path / f"{kind}.ass"
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(source), str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not done.stderr.strip(), done.stderr
    dialogues = [
        line for line in target.read_text(encoding="utf-8").splitlines() if line.startswith("Dialogue:")
    ]
    assert len(dialogues) == len(cues)
    # ffmpeg read every cue's time (ASS keeps centiseconds) and its words.
    for line, cue in zip(dialogues, cues, strict=True):
        start = re.match(r"Dialogue: \d+,(\d+):(\d\d):(\d\d\.\d\d),", line)
        assert start, line
        h, m, s = start.groups()
        assert int(h) * 3600 + int(m) * 60 + float(s) == pytest.approx(cue.start_s, abs=0.011)
        assert cue.lines[0].split()[0].replace("<", "").replace("{", "")[:3] in line
