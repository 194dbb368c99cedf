"""VLLMEngine against the stand-in vLLM server over real HTTP, and the stand-in's own rules."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from jobs.errors import (
    EngineRejected,
    EngineUnavailable,
    InputError,
    RepetitionLoop,
    WindowTooLarge,
)
from jobs.settings import Settings
from tests.fixtures.vllm import write_marker_window
from tests.standins.vllm_server import StandInVLLM
from workers.engines import build_engine
from workers.engines.vllm import MAX_MODEL_LEN, VLLMEngine


def engine_for(server: StandInVLLM, tmp_path: Path, **overrides: object) -> VLLMEngine:
    fields: dict[str, object] = {
        "engine": "vllm",
        "vllm_url": server.url,
        "model": server.config.model,
        "data_dir": tmp_path / "data",
        "engine_retries": 3,
        "request_timeout_s": 60.0,
    }
    fields.update(overrides)
    return VLLMEngine(Settings(**fields), backoff_base_s=0.01)  # type: ignore[arg-type]


def log_of(server: StandInVLLM, endpoint: str) -> list[dict[str, object]]:
    return [e for e in server.stats()["log"] if e["endpoint"] == endpoint]


def test_transcribe_returns_the_markers_heard(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [3, 4, 5])
    engine = engine_for(vllm_server, tmp_path)

    assert engine.transcribe(window, "en") == "marker-3 marker-4 marker-5"

    [entry] = log_of(vllm_server, "transcriptions")
    assert entry["temperature"] == 0.0
    assert entry["language"] == "en"
    assert entry["response_format"] == "json"
    assert entry["model"] == vllm_server.config.model
    max_tokens = entry["max_tokens"]
    assert isinstance(max_tokens, int) and 0 < max_tokens <= MAX_MODEL_LEN - 375


def test_transcribe_without_language_lets_voxtral_detect(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [])
    assert engine_for(vllm_server, tmp_path).transcribe(window, None) == ""
    [entry] = log_of(vllm_server, "transcriptions")
    assert entry["language"] is None


def test_unknown_language_is_rejected_with_the_servers_message(
    vllm_server: StandInVLLM, tmp_path: Path
) -> None:
    window = write_marker_window(tmp_path / "w.flac", [1])
    with pytest.raises(EngineRejected, match="Unsupported language: 'xx'"):
        engine_for(vllm_server, tmp_path).transcribe(window, "xx")


def test_wrong_model_name_is_rejected(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [1])
    engine = engine_for(vllm_server, tmp_path, model="mistralai/Voxtral-Mini-3B-2507")
    with pytest.raises(EngineRejected, match="does not exist"):
        engine.transcribe(window, None)


def test_duration_cap_refusal_is_learned(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "long.flac", [1], total_s=610)
    engine = engine_for(vllm_server, tmp_path)
    assert engine.max_audio_s() is None

    with pytest.raises(WindowTooLarge) as refused:
        engine.transcribe(window, None)
    assert refused.value.max_duration_s == 600
    assert "VLLM_MAX_AUDIO_DECODE_DURATION_S" in str(refused.value)
    assert engine.max_audio_s() == 600

    # Known now: the next long window is refused before it is uploaded.
    with pytest.raises(WindowTooLarge) as again:
        engine.summarize_audio(window, "Summarize.")
    assert again.value.max_duration_s == 600
    assert vllm_server.stats()["posts"] == 1


def test_raised_caps_take_the_same_window(vllm_server_raised_caps: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "long.flac", [7, 8], total_s=610)
    engine = engine_for(vllm_server_raised_caps, tmp_path)
    assert engine.transcribe(window, None) == "marker-7 marker-8"
    [entry] = log_of(vllm_server_raised_caps, "transcriptions")
    assert entry["duration_s"] == pytest.approx(610, abs=0.01)


def test_configured_cap_refuses_locally(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [1], total_s=40)
    engine = engine_for(vllm_server, tmp_path, vllm_max_audio_s=30.0)
    assert engine.max_audio_s() == 30.0
    with pytest.raises(WindowTooLarge) as refused:
        engine.transcribe(window, None)
    assert refused.value.max_duration_s == 30.0
    assert vllm_server.stats()["posts"] == 0


def test_upload_size_refusal_is_learned(start_vllm: Callable[..., StandInVLLM], tmp_path: Path) -> None:
    server = start_vllm(max_file_mb=0.1)
    window = write_marker_window(tmp_path / "noisy.flac", [2], total_s=10, noise=True)
    assert window.stat().st_size > 0.1 * 1024 * 1024
    engine = engine_for(server, tmp_path)

    with pytest.raises(WindowTooLarge, match="Maximum file size exceeded") as refused:
        engine.transcribe(window, None)
    learned = engine.max_audio_s()
    assert learned is not None and 0 < learned < 10
    assert refused.value.max_duration_s == learned

    with pytest.raises(WindowTooLarge):
        engine.transcribe(window, None)
    assert server.stats()["posts"] == 1


def test_context_length_refusal_teaches_the_servers_context(
    start_vllm: Callable[..., StandInVLLM], tmp_path: Path
) -> None:
    # A server launched with --max-model-len 4096 cannot take 10 min of audio (7,500 tokens).
    server = start_vllm(max_model_len=4096, max_duration_s=2400)
    window = write_marker_window(tmp_path / "w.flac", [1], total_s=600)
    engine = engine_for(server, tmp_path)
    with pytest.raises(WindowTooLarge, match="maximum context length is 4096") as refused:
        engine.transcribe(window, None)
    assert refused.value.max_duration_s == 270  # 9 chunks of 375 tokens leave room for 512
    assert engine.max_audio_s() == 270


def test_503_on_every_second_request_is_retried(
    start_vllm: Callable[..., StandInVLLM], tmp_path: Path
) -> None:
    server = start_vllm(fail_every=2)
    window = write_marker_window(tmp_path / "w.flac", [4])
    engine = engine_for(server, tmp_path)

    for _ in range(3):
        assert engine.transcribe(window, None) == "marker-4"

    entries = log_of(server, "transcriptions")
    assert [e["status"] for e in entries] == [200, 503, 200, 503, 200]
    assert server.stats()["counts"] == {"transcriptions": 5}


def test_persistent_503_becomes_engine_unavailable(
    start_vllm: Callable[..., StandInVLLM], tmp_path: Path
) -> None:
    server = start_vllm(fail_every=1)
    window = write_marker_window(tmp_path / "w.flac", [4])
    with pytest.raises(EngineUnavailable, match="after 4 attempts"):
        engine_for(server, tmp_path).transcribe(window, None)
    assert server.stats()["posts"] == 4


def test_no_server_becomes_engine_unavailable(tmp_path: Path) -> None:
    with StandInVLLM() as server:
        url = server.url
    window = write_marker_window(tmp_path / "w.flac", [4])
    settings = Settings(vllm_url=url, data_dir=tmp_path, engine_retries=1)
    with pytest.raises(EngineUnavailable):
        VLLMEngine(settings, backoff_base_s=0.01).transcribe(window, None)


def test_error_body_under_200_is_a_rejection(start_vllm: Callable[..., StandInVLLM], tmp_path: Path) -> None:
    server = start_vllm(error_200_every=1)
    window = write_marker_window(tmp_path / "w.flac", [4])
    with pytest.raises(EngineRejected, match="Format not recognised"):
        engine_for(server, tmp_path).transcribe(window, None)


def test_loop_is_retried_with_a_penalty(
    vllm_server: StandInVLLM, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    window = write_marker_window(tmp_path / "music.flac", [5, 6], loop=True)
    engine = engine_for(vllm_server, tmp_path)
    with caplog.at_level(logging.WARNING):
        assert engine.transcribe(window, None) == "marker-5 marker-6"

    first, second = log_of(vllm_server, "transcriptions")
    assert first["loop"] and first["frequency_penalty"] is None and first["temperature"] == 0.0
    assert second["frequency_penalty"] == 0.5 and second["temperature"] == 0.2
    assert "loops" in caplog.text


def test_summary_loop_is_retried_with_a_penalty(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "music.flac", [5], loop=True)
    answer = engine_for(vllm_server, tmp_path).summarize_audio(window, "Summarize.")
    assert answer.startswith("Summary of")
    assert [e["frequency_penalty"] for e in log_of(vllm_server, "chat")] == [None, 0.5]


def test_loop_that_persists_raises_repetition_loop(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "music.flac", [5], loop=True)
    engine = engine_for(vllm_server, tmp_path)
    # A stand-in that ignores penalties: the retry loops too.
    engine.transcribe_loop_retry = {"temperature": 0.2}
    with pytest.raises(RepetitionLoop) as looped:
        engine.transcribe(window, None)
    assert isinstance(looped.value, WindowTooLarge)
    assert len(log_of(vllm_server, "transcriptions")) == 2


def test_summary_carries_instructions_in_the_user_turn(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [9, 10])
    prompt = "List every decision about the Hamburg office as bullet points."
    answer = engine_for(vllm_server, tmp_path).summarize_audio(window, prompt)

    assert answer.startswith("Summary of")
    assert "marker-9 marker-10" in answer
    assert prompt in answer
    [entry] = log_of(vllm_server, "chat")
    assert entry["roles"] == ["user"]
    assert entry["prompt"] == prompt
    assert entry["audios"] == 1
    assert (entry["temperature"], entry["top_p"]) == (0.2, 0.95)
    max_tokens = entry["max_tokens"]
    assert isinstance(max_tokens, int) and 0 < max_tokens <= 2048


def test_complete_is_text_only(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    prompt = "Combine: window 1 says marker-1 marker-2; window 2 says marker-2 marker-3."
    answer = engine_for(vllm_server, tmp_path).complete(prompt)
    assert answer.startswith("Overall: marker-1 marker-2 marker-3.")
    [entry] = log_of(vllm_server, "chat")
    assert entry["roles"] == ["user"] and entry["audios"] == 0


def test_complete_refuses_a_prompt_beyond_the_context(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    with pytest.raises(EngineRejected, match="context"):
        engine_for(vllm_server, tmp_path).complete("word " * 40_000)
    assert vllm_server.stats()["posts"] == 0


def test_api_key_is_sent(start_vllm: Callable[..., StandInVLLM], tmp_path: Path) -> None:
    server = start_vllm(api_key="s3cret")
    window = write_marker_window(tmp_path / "w.flac", [1])
    assert engine_for(server, tmp_path, vllm_api_key="s3cret").transcribe(window, None) == "marker-1"
    with pytest.raises(EngineRejected, match="API key"):
        engine_for(server, tmp_path, vllm_api_key="wrong").transcribe(window, None)


# --- build_engine -------------------------------------------------------------------------


def test_build_engine_auto_prefers_vllm(tmp_path: Path) -> None:
    settings = Settings(vllm_url="http://127.0.0.1:9/v1", mistral_api_key="k", data_dir=tmp_path)
    engine = build_engine(settings)
    assert (engine.name, engine.model) == ("vllm", settings.model)


def test_build_engine_auto_falls_back_to_mistral(tmp_path: Path) -> None:
    settings = Settings(vllm_url=None, mistral_api_key="k", data_dir=tmp_path)
    engine = build_engine(settings)
    assert (engine.name, engine.model) == ("mistral", settings.mistral_chat_model)


def test_build_engine_auto_without_servers_warns_and_goes_offline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(vllm_url=None, mistral_api_key=None, data_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        engine = build_engine(settings)
    assert engine.name == "offline"
    assert "offline engine" in caplog.text


@pytest.mark.parametrize(
    ("engine", "missing"), [("vllm", "VOXBATCH_VLLM_URL"), ("mistral", "VOXBATCH_MISTRAL_API_KEY")]
)
def test_build_engine_names_the_missing_setting(engine: str, missing: str, tmp_path: Path) -> None:
    settings = Settings(engine=engine, vllm_url=None, mistral_api_key=None, data_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=missing):
        build_engine(settings)


# --- the stand-in enforces what vLLM enforces ------------------------------------------------


def _chat(server: StandInVLLM, messages: list[dict[str, object]]) -> httpx.Response:
    body = {"model": server.config.model, "messages": messages, "max_tokens": 100}
    return httpx.post(f"{server.url}/chat/completions", json=body, timeout=60)


def _audio_part(window: Path) -> dict[str, object]:
    data = base64.b64encode(window.read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "flac"}}


def test_standin_refuses_system_prompts_beside_audio(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    # As mistral-common's v7 tokenizer under real vLLM: text-only system prompts pass.
    system = {"role": "system", "content": "Be brief."}
    assert _chat(vllm_server, [system, {"role": "user", "content": "Hi"}]).status_code == 200
    window = write_marker_window(tmp_path / "w.flac", [1])
    user = {"role": "user", "content": [_audio_part(window), {"type": "text", "text": "Hi"}]}
    answer = _chat(vllm_server, [system, user])
    assert answer.status_code == 400
    assert "Found system messages at indexes [0]" in answer.json()["error"]["message"]


def test_standin_refuses_more_than_five_audios(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [1])
    parts = [_audio_part(window) for _ in range(6)] + [{"type": "text", "text": "Compare."}]
    answer = _chat(vllm_server, [{"role": "user", "content": parts}])
    assert answer.status_code == 400
    assert "At most 5 audio(s)" in answer.json()["error"]["message"]
    five = [_audio_part(window) for _ in range(5)] + [{"type": "text", "text": "Compare."}]
    assert _chat(vllm_server, [{"role": "user", "content": five}]).status_code == 200


def test_standin_accepts_audio_url_data_urls(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [11])
    url = "data:audio/flac;base64," + base64.b64encode(window.read_bytes()).decode()
    parts = [{"type": "audio_url", "audio_url": {"url": url}}, {"type": "text", "text": "Go."}]
    answer = _chat(vllm_server, [{"role": "user", "content": parts}])
    assert "marker-11" in answer.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("fmt", "message"),
    [("verbose_json", "Currently do not support verbose_json"), ("srt", "only support")],
)
def test_standin_refuses_response_formats(
    vllm_server: StandInVLLM, tmp_path: Path, fmt: str, message: str
) -> None:
    window = write_marker_window(tmp_path / "w.flac", [1])
    with window.open("rb") as f:
        answer = httpx.post(
            f"{vllm_server.url}/audio/transcriptions",
            data={"model": vllm_server.config.model, "response_format": fmt},
            files={"file": ("w.flac", f, "audio/flac")},
        )
    assert answer.status_code == 400
    assert message in answer.json()["error"]["message"]


def test_standin_text_format_and_models(vllm_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [12])
    with window.open("rb") as f:
        answer = httpx.post(
            f"{vllm_server.url}/audio/transcriptions",
            data={"response_format": "text"},
            files={"file": ("w.flac", f, "audio/flac")},
        )
    assert answer.json()["text"] == "marker-12"  # vLLM answers JSON even for response_format=text
    models = httpx.get(f"{vllm_server.url}/models").json()
    assert [m["id"] for m in models["data"]] == [vllm_server.config.model]


def test_a_full_30_minute_window_fits_the_context(
    vllm_server_raised_caps: StandInVLLM, tmp_path: Path
) -> None:
    window = write_marker_window(tmp_path / "30min.flac", [1, 2, 3], total_s=1800)
    engine = engine_for(vllm_server_raised_caps, tmp_path)
    assert engine.transcribe(window, "en") == "marker-1 marker-2 marker-3"
    [entry] = log_of(vllm_server_raised_caps, "transcriptions")
    max_tokens = entry["max_tokens"]
    # 60 chunks of 375 audio tokens; the answer gets what is left of 32k, not more.
    assert isinstance(max_tokens, int) and 9_000 < max_tokens <= MAX_MODEL_LEN - 22_500 - 6
