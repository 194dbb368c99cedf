"""`voxbatch run` against the stand-in serving each model profile (jobs/profiles.py) by its rules.

The stand-in in a profile's mode refuses what vLLM refuses for that model (no transcription route,
more audios than the launcher allows, a system message beside Voxtral's audio) and hears only what
the model's processor keeps of each item; the marker tones prove every segment was heard whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.profiles import PROFILES, ModelProfile
from tests.documents import check_document, markers_in
from tests.pipeline.test_run import vllm_env, voxbatch
from tests.speech import Recording
from tests.standins.vllm_server import StandInVLLM


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_every_profile_makes_the_marker_document(
    tmp_path: Path, marker_recording: Recording, profile: ModelProfile
) -> None:
    rec = marker_recording
    out = tmp_path / "out"
    with StandInVLLM(profile=profile.name) as server:
        done = voxbatch(
            ["run", str(rec.path), "--window-minutes", "1", "--output-dir", str(out)],
            vllm_env(tmp_path, server, VOXBATCH_MODEL=profile.repos[0]),
            tmp_path,
        )
        log = server.stats()["log"]
    assert done.returncode == 0, done.stderr
    doc = check_document(out, rec)
    assert doc["model"] == profile.repos[0] and len(doc["windows"]) >= 2
    refused = [e for e in log if e.get("status") != 200]
    assert refused == [], refused
    transcriptions = [e for e in log if e["endpoint"] == "transcriptions"]
    chats = [e for e in log if e["endpoint"] == "chat"]
    with_audio = [e for e in chats if e.get("audios")]
    segments = len(doc["segments"])
    if profile.transcription_endpoint:
        assert len(transcriptions) == segments
    else:
        # Each segment went as a chat carrying it and the verbatim prompt, at temperature 0.
        assert transcriptions == []
        asked = [e for e in with_audio if profile.transcribe_prompt in e["prompt"]]
        assert len(asked) == segments and all(e["temperature"] == 0.0 for e in asked)
    for e in with_audio:
        assert e["audios"] <= profile.items_per_prompt
        if profile.max_item_s is not None:
            assert e["duration_s"] <= e["audios"] * profile.max_item_s + 0.5
        assert ("system" in e["roles"]) == bool(profile.system_prompt and profile.system_with_audio)
    if profile.max_item_s is not None and profile.max_item_s < 60 and profile.summary_source() == "audio":
        # 1-minute windows are longer than one item: the summary carried several, in one request.
        assert any(e["audios"] > 1 for e in with_audio)
    summaries = [w["summary"] for w in doc["windows"] if w["transcript"]]
    assert summaries and all(summaries)
    if profile.summary_source() == "transcripts":
        # One audio per prompt: the window summaries read the transcripts (text-only chats).
        assert all(s.startswith("Overall: ") for s in summaries)
        assert [e for e in with_audio if profile.transcribe_prompt not in e["prompt"]] == []
    else:
        assert all(s.startswith("Summary of ") for s in summaries)
    # The overall summary (text-only) names every marker the window summaries named, in order.
    assert markers_in(doc["summary"].split(". Prompt:")[0]) == [m.k for m in rec.markers]


def test_a_chat_only_model_has_no_transcription_route() -> None:
    import httpx

    with StandInVLLM(profile="qwen2-audio") as server:
        answer = httpx.post(f"{server.url}/audio/transcriptions", files={"file": ("a.wav", b"RIFF")})
        chat = httpx.post(
            f"{server.url}/chat/completions",
            json={
                "model": "Qwen/Qwen2-Audio-7B-Instruct",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
                    }
                    for _ in range(7)
                ],
            },
        )
    assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}
    assert chat.status_code == 400 and "At most 6 audio(s)" in chat.json()["error"]["message"]
