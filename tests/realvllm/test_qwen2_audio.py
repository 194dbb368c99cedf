"""The qwen2-audio profile against real vLLM serving a tiny random-weight Qwen2-Audio.

The checkpoint (make_qwen2_audio_checkpoint.py) keeps the real model's audio front end: Whisper
features of 128 mel bins, 3000 frames per 30 s, the encoder's stride 2 and pooling 2. So what
vLLM's Qwen2-Audio code does with audio (the item limit, the 30-second truncation, 25 tokens per
second, the chat template with a system turn, no transcription endpoint) is the real thing, and
each fact QWEN2_AUDIO in jobs/profiles.py states is checked here where the server shows it. Random
weights answer gibberish: the checks are on structure and on what the server counts.
"""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.errors import WindowTooLarge
from jobs.profiles import QWEN2_AUDIO
from jobs.settings import Settings
from tests.documents import check_document
from tests.realvllm import server as rv
from tests.speech import PARAGRAPHS, Recording, Silence, Speech, Tone, build_recording
from tests.standins.vllm_server import StandInVLLM
from workers.engines.vllm import VLLMEngine
from workers.vllm_launch import flag_values

PROMPT = "Transcribe the audio."
# What the real server answered when asked for one item more than --limit-mm-per-prompt allows.
TOO_MANY_AUDIOS = {
    "error": {
        "message": f"At most {QWEN2_AUDIO.items_per_prompt} audio(s) may be provided in one prompt. "
        "(parameter=audio)",
        "type": "BadRequestError",
        "param": "audio",
        "code": 400,
    }
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """Steady tones as 16 kHz mono WAV: their length, not their sound, sets the audio tokens."""
    d = tmp_path_factory.mktemp("clips")
    return {s: build_recording([Tone(440.0, s)], d / f"tone-{s:g}.wav").path for s in (2.0, 5.0, 30.0, 60.0)}


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """About a minute of espeak-ng speech: one window, several segments, a summary of several items."""
    parts: list[Speech | Silence] = []
    for text in PARAGRAPHS:
        parts += [Speech(text), Silence(0.8)]
    rec = build_recording(parts, tmp_path_factory.mktemp("talk") / "talk.mp3", codec_args=["-b:a", "64k"])
    return Recording(rec.path, [])


def part(path: Path) -> dict[str, Any]:
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": path.suffix.lstrip(".")}}


def chat(server: rv.RealVLLM, audio: list[Path], system: str | None = None) -> httpx.Response:
    return chat_at(server.url, audio, system)


def chat_at(url: str, audio: list[Path], system: str | None = None) -> httpx.Response:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append(
        {"role": "user", "content": [*(part(p) for p in audio), {"type": "text", "text": PROMPT}]}
    )
    body = {
        "model": rv.QWEN2_AUDIO_SERVED_NAME,
        "messages": messages,
        "max_tokens": 1,
        "temperature": 0.0,
    }
    return httpx.post(f"{url}/chat/completions", json=body, timeout=300)


def prompt_tokens(server: rv.RealVLLM, audio: list[Path], system: str | None = None) -> int:
    answer = chat(server, audio, system)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["usage"]["prompt_tokens"])


def engine_for(server: rv.RealVLLM, tmp: Path) -> VLLMEngine:
    return VLLMEngine(
        Settings(
            engine="vllm",
            vllm_url=server.url,
            model=rv.QWEN2_AUDIO_SERVED_NAME,
            data_dir=tmp / "data",
            engine_retries=1,
            request_timeout_s=300.0,
        ),
        backoff_base_s=0.1,
    )


def posts(server: rv.RealVLLM, handler: str) -> int:
    """POSTs the server counted for ``handler`` (its route; "none" for a path it has no route for).

    vLLM's Prometheus instrumentator counts every HTTP request by route, status class included.
    """
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("http_requests_total{")
            and f'handler="{handler}"' in line
            and 'method="POST"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_the_server_runs_the_flags_voxbatch_vllm_prints_for_the_profile(qwen2_audio: rv.RealVLLM) -> None:
    checkpoint, extra = rv.QWEN2_AUDIO_CHECKPOINT, rv.QWEN2_AUDIO_EXTRA_ARGS
    argv = rv.runs_what_voxbatch_vllm_prints(qwen2_audio, checkpoint, extra)
    flags = flag_values(argv)
    assert flags["--max-model-len"] == str(QWEN2_AUDIO.context_tokens)
    assert json.loads(flags["--limit-mm-per-prompt"]) == {"audio": QWEN2_AUDIO.items_per_prompt}
    assert "--tokenizer-mode" not in flags  # HF format: none of Voxtral's Mistral flags
    served = httpx.get(f"{qwen2_audio.url}/models", timeout=10).json()["data"][0]
    assert served["id"] == rv.QWEN2_AUDIO_SERVED_NAME
    assert served["max_model_len"] == QWEN2_AUDIO.context_tokens


def test_audio_costs_25_tokens_a_second_and_is_cut_at_30_seconds(
    qwen2_audio: rv.RealVLLM, clips: dict[float, Path]
) -> None:
    tokens = {s: prompt_tokens(qwen2_audio, [clips[s]]) for s in (5.0, 30.0, 60.0)}
    # The text around the audio is the same in each prompt: differences are audio tokens alone.
    assert tokens[30.0] - tokens[5.0] == QWEN2_AUDIO.audio_tokens(30.0) - QWEN2_AUDIO.audio_tokens(5.0) == 625
    assert QWEN2_AUDIO.audio_tokens(30.0) == 750 and QWEN2_AUDIO.pad_item_to_s is None  # no padding
    # 60 s in one item is accepted, but costs what 30 s does: the rest never reaches the model.
    assert QWEN2_AUDIO.truncates_items and QWEN2_AUDIO.max_item_s == 30.0
    assert tokens[60.0] == tokens[30.0]


def test_a_system_message_beside_audio_is_accepted(
    qwen2_audio: rv.RealVLLM, clips: dict[float, Path]
) -> None:
    assert QWEN2_AUDIO.system_with_audio and QWEN2_AUDIO.system_prompt
    answer = chat(qwen2_audio, [clips[2.0]], system=QWEN2_AUDIO.system_prompt)
    assert answer.status_code == 200, answer.text
    # The chat template writes that very system turn when none is given: the prompts are equal.
    assert answer.json()["usage"]["prompt_tokens"] == prompt_tokens(qwen2_audio, [clips[2.0]])
    assert (
        prompt_tokens(qwen2_audio, [clips[2.0]], system="Be brief.")
        != answer.json()["usage"]["prompt_tokens"]
    )


def test_the_item_limit_is_the_launchers_and_one_more_is_refused(
    qwen2_audio: rv.RealVLLM, clips: dict[float, Path]
) -> None:
    n = QWEN2_AUDIO.items_per_prompt
    assert chat(qwen2_audio, [clips[2.0]] * n).status_code == 200
    refused = chat(qwen2_audio, [clips[2.0]] * (n + 1))
    assert refused.status_code == 400
    assert refused.json() == TOO_MANY_AUDIOS


def test_the_standins_qwen2_audio_mode_refuses_as_the_real_server_does(
    qwen2_audio: rv.RealVLLM, clips: dict[float, Path]
) -> None:
    # The pipeline tests run every profile against the stand-in: its refusal must be this one,
    # word for word (vLLM adds "Set `--limit-mm-per-prompt`..." only below the model's own limit).
    with StandInVLLM(profile=QWEN2_AUDIO.name, model=rv.QWEN2_AUDIO_SERVED_NAME) as standin:
        for server_url in (qwen2_audio.url, standin.url):
            refused = chat_at(server_url, [clips[2.0]] * (QWEN2_AUDIO.items_per_prompt + 1))
            assert (refused.status_code, refused.json()) == (400, TOO_MANY_AUDIOS), server_url


def test_there_is_no_transcription_endpoint(qwen2_audio: rv.RealVLLM, clips: dict[float, Path]) -> None:
    assert not QWEN2_AUDIO.transcription_endpoint
    answer = httpx.post(
        f"{qwen2_audio.url}/audio/transcriptions",
        data={"model": rv.QWEN2_AUDIO_SERVED_NAME},
        files={"file": ("tone.wav", clips[2.0].read_bytes(), "audio/wav")},
        timeout=60,
    )
    # vLLM registers the route only for models that implement SupportsTranscription.
    assert answer.status_code == 404
    assert answer.json() == {"detail": "Not Found"}
    assert (
        "/v1/audio/transcriptions"
        not in httpx.get(f"{qwen2_audio.base}/openapi.json", timeout=10).json()["paths"]
    )


def test_a_window_as_long_as_the_profile_allows_goes_as_items_and_is_answered(
    qwen2_audio: rv.RealVLLM, tmp_path: Path
) -> None:
    engine = engine_for(qwen2_audio, tmp_path)
    longest = engine.max_audio_s()
    # The context binds before the item limit: (8192 - 4096) / 25 = 163.84 s, which is 6 items.
    assert longest == QWEN2_AUDIO.chat_audio_s() == 163.84
    assert math.ceil(longest / QWEN2_AUDIO.segment_s()) == QWEN2_AUDIO.items_per_prompt
    window = build_recording([Tone(440.0, QWEN2_AUDIO.max_window_s())], tmp_path / "window.flac").path
    before = qwen2_audio.metric("vllm:request_success_total")
    tokens_before = qwen2_audio.metric("vllm:prompt_tokens_total")
    summary = engine.summarize_audio(window, "Summarize this talk in one sentence.")
    assert isinstance(summary, str) and summary
    assert qwen2_audio.metric("vllm:request_success_total") - before == 1
    # All of it was heard: one item would have been cut to 750 tokens; 6 items of 27 s are ~4,075.
    heard = qwen2_audio.metric("vllm:prompt_tokens_total") - tokens_before
    assert heard >= 0.98 * QWEN2_AUDIO.max_window_s() * QWEN2_AUDIO.audio_tokens_per_s
    # Longer is refused by the client itself, before upload: the server never sees it.
    longer = build_recording([Tone(440.0, longest + 10)], tmp_path / "longer.flac").path
    sent = posts(qwen2_audio, "/v1/chat/completions")
    with pytest.raises(WindowTooLarge):
        engine.summarize_audio(longer, "Summarize this talk in one sentence.")
    assert posts(qwen2_audio, "/v1/chat/completions") == sent


def test_voxbatch_run_with_the_qwen2_audio_profile(
    qwen2_audio: rv.RealVLLM, talk: Recording, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
    env.update(
        VOXBATCH_DATA_DIR=str(tmp_path / "data"),
        VOXBATCH_ENGINE="vllm",
        VOXBATCH_VLLM_URL=qwen2_audio.url,
        VOXBATCH_MODEL=rv.QWEN2_AUDIO_SERVED_NAME,  # selects the profile by name
    )
    chats, unrouted = posts(qwen2_audio, "/v1/chat/completions"), posts(qwen2_audio, "none")
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-m", "api.cli", "-v", "run", str(talk.path),
            "--preset", "conference-talk", "--output-dir", str(out),
        ],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = check_document(out, talk)
    for name in ("document.json", "document.md", "transcript.srt", "transcript.vtt"):
        assert (out / name).read_text().strip(), name
    assert doc["model"] == rv.QWEN2_AUDIO_SERVED_NAME
    assert doc["duration_s"] > QWEN2_AUDIO.max_item_s  # so segmenting mattered
    windows = doc["windows"]
    assert len(windows) == 1 and windows[0]["summary"].strip()
    # Every segment the client cut and sent (its stored record, text or not) is one item heard whole.
    records = sorted((tmp_path / "data" / "store" / "jobs").glob("*/windows/*/segments/*.json"))
    spans = [json.loads(r.read_text()) for r in records]
    assert len(spans) >= 2
    assert all(0 < s["end_s"] - s["start_s"] <= QWEN2_AUDIO.segment_s() for s in spans), spans
    # Transcripts went by chat, never to the endpoint the server lacks (a POST to a path without a
    # route is counted as "none"): one chat per segment (a looping answer is asked again), the
    # window's summary and the document's.
    assert posts(qwen2_audio, "none") == unrouted
    assert posts(qwen2_audio, "/v1/chat/completions") - chats >= len(spans) + 2
