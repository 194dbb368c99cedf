"""`voxbatch run` with each hosted engine, its SDK pointed at a local server speaking the vendor's
protocol (tests/standins/hosted_servers.py): the marker checks hold on the vendor's own segment
times, speakers reach document.json, document.md and the VTT's voice tags, and the vocabulary
reaches the request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.documents import check_document
from tests.pipeline.test_run import env_for, voxbatch
from tests.speech import Recording
from tests.standins.hosted_servers import HostedServer

KEY = "test-key"


@pytest.mark.parametrize("vendor", ["mistral", "gemini", "openai"])
def test_run_with_a_hosted_engine(vendor: str, tmp_path: Path, marker_recording_mp3: Recording) -> None:
    rec = marker_recording_mp3
    out = tmp_path / "out"
    extra = {"VOXBATCH_OPENAI_TRANSCRIBE_MODEL": "gpt-4o-transcribe-diarize"} if vendor == "openai" else {}
    with HostedServer(vendor, key=KEY) as server:
        env = env_for(
            tmp_path,
            VOXBATCH_ENGINE=vendor,
            **{f"VOXBATCH_{vendor.upper()}_API_KEY": KEY, f"VOXBATCH_{vendor.upper()}_URL": server.url},
            **extra,
        )
        done = voxbatch(
            [
                "run",
                str(rec.path),
                "--window-minutes",
                "1",
                "--preset",
                "panel",
                "--vocabulary",
                "Voxtral, Alder Creek Design",
                "--output-dir",
                str(out),
            ],
            env,
            tmp_path,
        )
        log = server.log
    assert done.returncode == 0, done.stderr
    doc = check_document(out, rec)
    assert doc["engine"] == vendor
    speakers = [s.get("speaker") for s in doc["segments"]]
    assert speakers and all(s and s.startswith("Speaker ") for s in speakers), speakers
    assert "<v Speaker 1>" in (out / "transcript.vtt").read_text()
    assert "**Speaker 1:**" in (out / "document.md").read_text()
    if vendor == "mistral":
        timed = [e for e in log if e["endpoint"] == "transcriptions"]
        assert timed and all(e["context_bias"] == ["Voxtral", "Alder Creek Design"] for e in timed)
    chat = [
        e for e in log if e["endpoint"] in ("chat", "generateContent") and "part 1" in e.get("prompt", "")
    ]
    assert chat and "Voxtral, Alder Creek Design" in chat[0]["prompt"]
    assert json.loads((out / "document.json").read_text())["segments"][0]["window"] == 0
