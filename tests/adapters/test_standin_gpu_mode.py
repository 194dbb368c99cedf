"""The stand-in's GPU mode: answers wait for the modelled GPU, /stats reports it, refusals don't."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.services import wait_until
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


def test_cost_scale_multiplies_every_cost() -> None:
    from tests.standins.vllm_server import scaled_costs

    base = GpuFigures()
    slow = scaled_costs(base, 10.0)
    requests = [GpuRequest(30.0)] * 50
    assert GpuModel(slow).ideal_s(requests) == pytest.approx(10 * GpuModel(base).ideal_s(requests))
    assert slow.max_sequences == base.max_sequences and slow.tokens_per_speech_s == base.tokens_per_speech_s


def test_fast_mode_measures_without_hearing_and_refuses_alike(tmp_path: Path) -> None:
    audio = build_recording([Speech(PARAGRAPHS[0])], tmp_path / "speech.wav").path.read_bytes()
    long = build_recording([Speech(PARAGRAPHS[1])], tmp_path / "long.flac").path.read_bytes()
    answers = {}
    for fast in (False, True):
        with StandInVLLM(fast=fast, max_duration_s=3.0) as server:
            ok = httpx.post(
                f"{server.url}/audio/transcriptions",
                files={"file": ("a.wav", audio[:44] + audio[44 : 44 + 2 * 32000])},
                data={"model": VOXTRAL_SMALL},
                timeout=60,
            )
            refused = httpx.post(
                f"{server.url}/audio/transcriptions",
                files={"file": ("b.flac", long)},
                data={"model": VOXTRAL_SMALL},
                timeout=60,
            )
            answers[fast] = (ok.status_code, refused.status_code, refused.json())
            if fast:
                assert ok.json()["text"].startswith("speech ")
                entry = server.stats()["log"][0]
                assert entry["markers"] == [] and entry["duration_s"] > 0
    assert answers[True][1:] == answers[False][1:]
    assert answers[True][0] == answers[False][0] == 200


def _settled(server: StandInVLLM) -> dict[str, Any]:
    """The server's traffic once every request has left: a client has its answer before the server
    has recorded the request's end (its fate), and a held one ends when the server sees its client
    gone."""

    def ended() -> dict[str, Any] | None:
        traffic: dict[str, Any] = server.stats()["traffic"]
        return traffic if traffic["in_flight"] == 0 else None

    return wait_until(ended, 30, "every request to end")


def test_dropped_and_held_requests_are_counted(tmp_path: Path) -> None:
    audio = build_recording([Speech(PARAGRAPHS[0])], tmp_path / "speech.wav").path.read_bytes()

    def post(server: StandInVLLM, timeout: float = 30) -> httpx.Response:
        return httpx.post(
            f"{server.url}/audio/transcriptions",
            files={"file": ("a.wav", audio)},
            data={"model": VOXTRAL_SMALL},
            timeout=timeout,
        )

    with StandInVLLM(drop_upload_every=1, fast=True) as server:
        with pytest.raises(httpx.TransportError):
            post(server)
        traffic = server.stats()["traffic"]
        assert traffic["dropped"] == 1 and traffic["answers"] == 0 and traffic["in_flight"] == 0
        assert traffic["max_sends"] == 1
    with StandInVLLM(drop_upload_every=2, fault_seed=5, fast=True) as server:
        outcomes = []
        for _ in range(4):
            try:
                outcomes.append(post(server).status_code)
            except httpx.TransportError:
                outcomes.append(0)
        assert sorted(outcomes) == [0, 0, 200, 200]
        traffic = _settled(server)
        # Both drops are attributed to the one request they began: four attempts in all.
        assert traffic["dropped"] == 2 and traffic["distinct_requests"] == 1 and traffic["max_sends"] == 4
        (most,) = traffic["most_sent"]  # and each arrival's fate, to trace the count
        assert most["sends"] == 4 and sorted(fate for _, fate in most["fates"]) == [
            "answered",
            "answered",
            "drop",
            "drop",
        ]
    with StandInVLLM(hold_every=2, fault_seed=3, fast=True) as server:
        results = []
        for _ in range(4):
            try:
                results.append(post(server, timeout=1.0).status_code)
            except httpx.ReadTimeout:
                results.append(0)
        assert sorted(results) == [0, 0, 200, 200]  # one in every two, never answered
        stats = _settled(server)
        assert stats["held"] == 2 and stats["max_sends"] == 4 and stats["distinct_requests"] == 1
        assert sorted(fate for _, fate in stats["most_sent"][0]["fates"]) == [
            "answered",
            "answered",
            "hold",
            "hold",
        ]
        assert stats["longest_gap_s"] >= 0.9
        httpx.post(f"{server.url.removesuffix('/v1')}/stats/reset", timeout=10)
        assert server.stats()["traffic"]["arrivals"] == 0


def test_a_client_that_leaves_takes_its_request_off_the_gpu(tmp_path: Path) -> None:
    # vLLM aborts a request whose client disconnected (its with_cancellation on both endpoints):
    # the request scheduler relies on that when it cuts other work for a clip.
    audio = build_recording([Speech(PARAGRAPHS[0])], tmp_path / "speech.wav").path.read_bytes()
    with StandInVLLM(gpu=True, gpu_time_scale=1000.0, fast=True) as server:  # minutes per answer
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.url}/audio/transcriptions",
                files={"file": ("a.wav", audio)},
                data={"model": VOXTRAL_SMALL},
                timeout=httpx.Timeout(30.0, read=1.0),
            )
        waited = threading.Event()
        for _ in range(600):
            gpu = server.stats()["gpu"]
            if gpu["aborted"] == 1:
                break
            waited.wait(0.05)
        traffic = server.stats()["traffic"]
    assert gpu["aborted"] == 1 and gpu["requests"] == 0  # not in the ideal either
    assert traffic["answers"] == 0 and traffic["in_flight"] == 0
