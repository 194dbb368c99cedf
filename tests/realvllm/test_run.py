"""`voxbatch run` end to end against real vLLM: a ~2.5-minute talk of generated speech."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.documents import check_document
from tests.realvllm import server as rv
from tests.speech import PARAGRAPHS, Recording, Silence, Speech, build_recording


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    parts: list[Speech | Silence] = []
    for text in PARAGRAPHS * 2:
        parts += [Speech(text), Silence(1.0)]
    rec = build_recording(parts, tmp_path_factory.mktemp("talk") / "talk.mp3", codec_args=["-b:a", "64k"])
    return Recording(rec.path, [])  # speech only: no marker may appear in the document


def run(server: rv.RealVLLM, talk: Recording, tmp: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
    env.update(
        VOXBATCH_DATA_DIR=str(tmp / "data"),
        VOXBATCH_ENGINE="vllm",
        VOXBATCH_VLLM_URL=server.url,
        VOXBATCH_MODEL=rv.SERVED_NAME,
    )
    if server.api_key:
        env["VOXBATCH_VLLM_API_KEY"] = server.api_key
    out = tmp / "out"
    done = subprocess.run(
        [
            sys.executable, "-m", "api.cli", "-v", "run", str(talk.path),
            "--window-minutes", "2", "--preset", "conference-talk", "--output-dir", str(out),
        ],
        env=env, cwd=tmp, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done, out


def check(out: Path, talk: Recording) -> dict[str, object]:
    doc = check_document(out, talk)
    windows = doc["windows"]
    assert windows and windows[-1]["end_s"] == pytest.approx(doc.get("duration_s", windows[-1]["end_s"]))
    assert all(w["transcript"].strip() for w in windows)
    assert (out / "document.md").read_text().strip()
    assert json.loads((out / "document.json").read_text()) == doc
    return doc


def test_run_with_vllm_caps_learns_the_real_refusal_and_recuts(
    capped: rv.RealVLLM, talk: Recording, tmp_path: Path
) -> None:
    # 2-minute windows; the server takes at most CAPPED_DURATION_S: it refuses, the client re-cuts.
    done, out = run(capped, talk, tmp_path)
    assert f"maximum allowed duration of {rv.CAPPED_DURATION_S}s" in done.stderr
    check(out, talk)


def test_run_with_the_launchers_raised_caps_is_never_refused(
    launched: rv.RealVLLM, talk: Recording, tmp_path: Path
) -> None:
    done, out = run(launched, talk, tmp_path)
    assert "refused" not in done.stderr
    doc = check(out, talk)
    assert all(not w.get("pieces") for w in doc["windows"])
