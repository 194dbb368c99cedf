"""Real vLLM, met through voxbatch's own client (workers/engines/vllm.py) and launcher."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from jobs.errors import TranscriptCut, WindowTooLarge
from jobs.languages import ACCEPTED
from jobs.settings import Settings
from tests.realvllm import server as rv
from tests.speech import PARAGRAPHS, Speech, Tone, build_recording
from workers.engines.loops import is_loop
from workers.engines.vllm import VLLMEngine
from workers.vllm_launch import REQUIRED_FLAGS


def engine_for(server: rv.RealVLLM, tmp: Path, retries: int = 1) -> VLLMEngine:
    return VLLMEngine(
        Settings(
            engine="vllm",
            vllm_url=server.url,
            vllm_api_key=server.api_key,
            model=rv.SERVED_NAME,
            data_dir=tmp / "data",
            engine_retries=retries,
            request_timeout_s=300.0,
        ),
        backoff_base_s=0.1,
    )


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few seconds of espeak-ng speech, 16 kHz mono FLAC (what the splitter sends)."""
    out = tmp_path_factory.mktemp("speech") / "speech.flac"
    return build_recording([Speech(PARAGRAPHS[3])], out).path


def test_the_server_runs_what_voxbatch_vllm_prints(launched: rv.RealVLLM) -> None:
    argv = rv.runs_what_voxbatch_vllm_prints(launched, rv.CHECKPOINT, rv.EXTRA_ARGS)
    assert all(flag in argv for flag in REQUIRED_FLAGS)


def test_transcription_chat_and_reduce_are_answered(
    launched: rv.RealVLLM, speech: Path, tmp_path: Path
) -> None:
    engine = engine_for(launched, tmp_path)
    # Random weights never say end-of-sequence: the transcript runs to the client's token cap, and
    # the client says so (TranscriptCut, carrying the text) instead of passing it off as complete.
    with pytest.raises(TranscriptCut) as cut:
        engine.transcribe(speech, "en")
    transcript = cut.value.text
    summary = engine.summarize_audio(speech, "Summarize this talk in one sentence.")
    overall = engine.complete("Merge these summaries into one paragraph:\n- one\n- two")
    # Random weights: gibberish, but text, and never a loop (the guard asked again if it was).
    for text in (transcript, summary, overall):
        assert isinstance(text, str) and text and not is_loop(text)
    assert engine.max_audio_s() is None  # nothing was refused, nothing learned


def test_every_language_voxbatch_accepts_is_accepted(
    launched: rv.RealVLLM, speech: Path, tmp_path: Path
) -> None:
    engine = engine_for(launched, tmp_path)
    data = speech.read_bytes()

    def send(code: str) -> tuple[str, int, str]:
        fields = {k: str(v) for k, v in engine._transcription_fields(code, 1).items()}
        r = httpx.post(
            f"{launched.url}/audio/transcriptions",
            data=fields,
            files={"file": (speech.name, data, "audio/flac")},
            timeout=300,
        )
        return code, r.status_code, r.text[:300]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, sorted(ACCEPTED)))
    refused = [a for a in answers if a[1] != 200]
    assert refused == []
    # ...and what the old list took from Whisper is what the real server refuses.
    for code in ("jw", "haw", "yue", "jv"):
        assert send(code)[1] == 400


def test_concurrent_requests_all_succeed_and_are_batched(
    launched: rv.RealVLLM, speech: Path, tmp_path: Path
) -> None:
    engine = engine_for(launched, tmp_path)
    seen_running: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen_running.append(launched.metric("vllm:num_requests_running"))
            done.wait(0.05)

    before = launched.metric("vllm:request_success_total")
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: engine.summarize_audio(speech, f"Summary {i}."), range(12)))
    finally:
        done.set()
        watcher.join()
    assert len(answers) == 12 and all(isinstance(a, str) and a for a in answers)
    assert launched.metric("vllm:request_success_total") - before >= 12
    assert max(seen_running) > 1, seen_running


def test_the_repetition_guard_on_real_looping_output(
    launched: rv.RealVLLM, speech: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Greedy decoding of random weights repeats one token: "这么这么这么…" (no spaces).
    engine = engine_for(launched, tmp_path)
    fields = {k: str(v) for k, v in engine._transcription_fields("en", 200).items()}
    first = httpx.post(
        f"{launched.url}/audio/transcriptions",
        data=fields,
        files={"file": (speech.name, speech.read_bytes(), "audio/flac")},
        timeout=300,
    ).json()["text"]
    assert is_loop(first), first[:200]
    with caplog.at_level("WARNING", logger="workers.engines.vllm"), pytest.raises(TranscriptCut) as cut:
        engine.transcribe(speech, "en")
    assert any("loops; asking again" in r.getMessage() for r in caplog.records)
    # The second answer no longer loops; it still runs to the cap (random weights), and says so.
    assert not is_loop(cut.value.text)


def test_the_upload_cap_refusal_is_learned(capped: rv.RealVLLM, tmp_path: Path) -> None:
    # Over CAPPED_FILE_MB as 16 kHz mono WAV, and a tone (so no speech to speak of).
    wav = build_recording([Tone(440.0, 200.0)], tmp_path / "big.wav").path
    assert wav.stat().st_size > rv.CAPPED_FILE_MB * 1024 * 1024
    engine = engine_for(capped, tmp_path)
    with pytest.raises(WindowTooLarge, match="Maximum file size exceeded"):
        engine.transcribe(wav, None)
    learned = engine.max_audio_s()
    assert learned is not None and learned < 200
    with pytest.raises(WindowTooLarge):  # refused before upload now
        engine.transcribe(wav, None)
