"""The stand-in's GPU mode: answers wait for the modelled GPU, /stats reports it, refusals don't."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.speech import PARAGRAPHS, Speech, build_recording
from tests.standins.gpu_model import GpuFigures, GpuModel, GpuRequest
from tests.standins.vllm_server import VOXTRAL_SMALL, StandInVLLM


def test_gpu_mode_holds_answers_and_reports_the_model(tmp_path: Path) -> None:
    audio = build_recording([Speech(PARAGRAPHS[0])], tmp_path / "speech.flac").path.read_bytes()
    figures = GpuFigures(max_sequences=4)
    with StandInVLLM(gpu=figures, gpu_time_scale=0.001) as server:

        def post(model: str) -> httpx.Response:
            return httpx.post(
                f"{server.url}/audio/transcriptions",
                files={"file": ("speech.flac", audio)},
                data={"model": model},
                timeout=60,
            )

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(post, [VOXTRAL_SMALL] * 6))
        assert [a.status_code for a in answers] == [200] * 6
        assert post("no-such-model").status_code == 404  # refused at once, not modelled
        stats = server.stats()
    gpu = stats["gpu"]
    assert gpu["requests"] == 6
    assert 1 <= gpu["max_active"] <= 4
    duration = next(e["duration_s"] for e in stats["log"] if e.get("status") == 200)
    model = GpuModel(figures)
    assert gpu["ideal_s"] == model.ideal_s([GpuRequest(duration)] * 6)
    # Busy time is at least the ideal (the model never beats itself), and every answer has a finish.
    assert gpu["busy_s"] >= gpu["ideal_s"] - 1e-9
    assert gpu["span_s"] >= gpu["ideal_s"] - 1e-9
    assert all("gpu_finish_s" in e for e in stats["log"] if e.get("status") == 200)


def test_default_mode_has_no_gpu() -> None:
    with StandInVLLM() as server:
        assert "gpu" not in server.stats()
