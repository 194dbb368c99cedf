"""MistralEngine against the stand-in in "mistral" mode: hosted-API shapes, key and limits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.errors import EngineRejected, WindowTooLarge
from jobs.settings import Settings
from tests.fixtures.vllm import write_marker_window
from tests.standins.vllm_server import StandInVLLM
from workers.engines.mistral import MistralEngine

KEY = "test-key"


@pytest.fixture
def mistral_server(start_vllm: Callable[..., StandInVLLM]) -> StandInVLLM:
    return start_vllm(mode="mistral", api_key=KEY)


def engine_for(server: StandInVLLM, tmp_path: Path, key: str = KEY) -> MistralEngine:
    settings = Settings(
        engine="mistral",
        mistral_api_key=key,
        mistral_url=server.url,
        data_dir=tmp_path / "data",
        engine_retries=2,
    )
    return MistralEngine(settings, backoff_base_s=0.01)


def test_limits_are_known_before_any_request(mistral_server: StandInVLLM, tmp_path: Path) -> None:
    assert engine_for(mistral_server, tmp_path).max_audio_s() == 900


def test_transcribe_uses_the_transcription_model(mistral_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [3, 4])
    engine = engine_for(mistral_server, tmp_path)
    assert engine.transcribe(window, "en") == "marker-3 marker-4"
    [entry] = mistral_server.stats()["log"]
    assert entry["model"] == "voxtral-mini-latest"
    assert entry["temperature"] == 0.0
    assert entry["max_tokens"] is None  # the hosted endpoint takes no token limit


def test_summary_sends_input_audio_as_a_plain_string(mistral_server: StandInVLLM, tmp_path: Path) -> None:
    # The stand-in answers 422 in mistral mode when input_audio is vLLM's {"data", "format"}.
    window = write_marker_window(tmp_path / "w.flac", [6])
    prompt = "Name the speakers."
    answer = engine_for(mistral_server, tmp_path).summarize_audio(window, prompt)
    assert "marker-6" in answer and prompt in answer
    [entry] = mistral_server.stats()["log"]
    assert entry["model"] == "voxtral-small-latest"
    assert entry["roles"] == ["user"]


def test_summary_audio_is_a_plain_base64_string(mistral_server: StandInVLLM, tmp_path: Path) -> None:
    # The SDK's AudioChunk is Mistral's shape; the stand-in answers 422 to vLLM's {"data", "format"}.
    window = write_marker_window(tmp_path / "w.flac", [6])
    engine_for(mistral_server, tmp_path).summarize_audio(window, "Summarize.")
    [entry] = mistral_server.stats()["log"]
    assert entry["endpoint"] == "chat"


def test_long_window_is_refused_before_upload(mistral_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "long.flac", [1], total_s=905)
    with pytest.raises(WindowTooLarge) as refused:
        engine_for(mistral_server, tmp_path).transcribe(window, None)
    assert refused.value.max_duration_s == 900
    assert mistral_server.stats()["posts"] == 0


def test_wrong_key_is_rejected(mistral_server: StandInVLLM, tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [1])
    with pytest.raises(EngineRejected, match="API key"):
        engine_for(mistral_server, tmp_path, key="wrong").transcribe(window, None)
