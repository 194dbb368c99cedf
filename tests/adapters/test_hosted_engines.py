"""The hosted engines through their vendors' SDKs, against local servers speaking each vendor's
protocol (tests/standins/hosted_servers.py): request fields, timed and diarized transcripts, the
Files API, error bodies, and 429 answers whose retry hints the clients honour."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.engine import Hints, timed_engine
from jobs.errors import EngineRejected, WindowTooLarge
from jobs.settings import Settings
from tests.fixtures.vllm import write_marker_window
from tests.standins.hosted_servers import HostedServer
from workers.engines.gemini import GeminiEngine
from workers.engines.mistral import MistralEngine
from workers.engines.openai import OpenAIEngine

KEY = "test-key"
VENDORS = ("mistral", "openai", "gemini")


@pytest.fixture
def servers() -> Iterator[dict[str, Any]]:
    started: list[HostedServer] = []

    def start(vendor: str, **options: Any) -> HostedServer:
        server = HostedServer(vendor, key=KEY, **options).__enter__()
        started.append(server)
        return server

    yield {"start": start}
    for server in started:
        server.__exit__(None, None, None)


def engine_for(server: HostedServer, tmp_path: Path, key: str = KEY, **settings: Any) -> Any:
    base = Settings(data_dir=tmp_path / "data", engine_retries=2, request_timeout_s=60, **settings)
    if server.vendor == "mistral":
        return MistralEngine(
            base.model_copy(update={"mistral_api_key": key, "mistral_url": server.url}), backoff_base_s=0.01
        )
    if server.vendor == "openai":
        return OpenAIEngine(base.model_copy(update={"openai_api_key": key, "openai_url": server.url}))
    return GeminiEngine(
        base.model_copy(update={"gemini_api_key": key, "gemini_url": server.url}), backoff_base_s=0.01
    )


def markers_of(pieces: list[Any]) -> list[str]:
    return [p.text.strip() for p in pieces]


@pytest.mark.parametrize("vendor", VENDORS)
def test_timed_transcript_names_each_marker_where_it_sounds(
    vendor: str, servers: dict[str, Any], tmp_path: Path
) -> None:
    # write_marker_window: 1 s of silence, then each 1-s marker followed by 1 s of silence.
    window = write_marker_window(tmp_path / "w.flac", [3, 4, 9])
    engine = timed_engine(engine_for(servers["start"](vendor), tmp_path))
    assert engine is not None
    pieces = engine.transcribe_timed(window, Hints(vocabulary=("Voxtral",)))
    assert markers_of(pieces) == ["marker-3", "marker-4", "marker-9"]
    for n, piece in enumerate(pieces):
        true_start = 1.0 + 2.0 * n
        assert piece.start_s <= true_start and true_start + 1.0 <= piece.end_s <= true_start + 1.6, piece
        assert piece.speaker is None  # not asked for


@pytest.mark.parametrize("vendor", VENDORS)
def test_speakers_when_asked(vendor: str, servers: dict[str, Any], tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [2, 3, 4])
    extra = {"openai_transcribe_model": "gpt-4o-transcribe-diarize"} if vendor == "openai" else {}
    engine = engine_for(servers["start"](vendor), tmp_path, **extra)
    pieces = engine.transcribe_timed(window, Hints(speakers=True))
    labels = [p.speaker for p in pieces]
    assert None not in labels and labels[0] == labels[2] != labels[1], labels


def test_mistral_request_fields(servers: dict[str, Any], tmp_path: Path) -> None:
    server = servers["start"]("mistral")
    window = write_marker_window(tmp_path / "w.flac", [5])
    hints = Hints(language="en", vocabulary=("Voxtral", "Alder Creek Design"), speakers=True)
    engine_for(server, tmp_path).transcribe_timed(window, hints)
    [entry] = server.log
    assert entry["model"] == "voxtral-mini-latest"
    assert entry["granularities"] == ["segment"]
    assert entry["diarize"] is True
    assert entry["context_bias"] == ["Voxtral", "Alder Creek Design"]
    # Mistral refuses timestamps together with a language: the timed path leaves the language out.
    assert entry["language"] is None


def test_mistral_refuses_timestamps_with_a_language(servers: dict[str, Any], tmp_path: Path) -> None:
    # What the engine avoids, as the vendor answers it (the error body reaches the user).
    import mistralai.client

    server = servers["start"]("mistral")
    window = write_marker_window(tmp_path / "w.flac", [5])
    client = mistralai.client.Mistral(api_key=KEY, server_url=server.url.removesuffix("/v1"))
    with pytest.raises(mistralai.client.errors.SDKError) as refused:
        client.audio.transcriptions.complete(
            model="voxtral-mini-latest",
            file={"file_name": "w.flac", "content": window.read_bytes()},
            language="en",
            timestamp_granularities=["segment"],
        )
    assert refused.value.status_code == 400 and "not compatible with language" in refused.value.body


def test_openai_fields_per_model(servers: dict[str, Any], tmp_path: Path) -> None:
    server = servers["start"]("openai")
    window = write_marker_window(tmp_path / "w.flac", [5])
    hints = Hints(language="en", vocabulary=("Voxtral", "Kubernetes"))
    whisper = engine_for(server, tmp_path)
    assert timed_engine(whisper) is whisper
    whisper.transcribe_timed(window, hints)
    plain = engine_for(server, tmp_path, openai_transcribe_model="gpt-4o-transcribe")
    assert timed_engine(plain) is None  # no timestamps: the window step sends it our segments
    assert plain.transcribe(window, "en", vocabulary=hints.vocabulary) == "marker-5"
    diarize = engine_for(server, tmp_path, openai_transcribe_model="gpt-4o-transcribe-diarize")
    diarize.transcribe_timed(window, hints)
    first, second, third = server.log
    assert first["response_format"] == "verbose_json" and "Voxtral, Kubernetes" in first["prompt"]
    assert second["response_format"] == "json" and "Kubernetes" in second["prompt"]
    assert third["response_format"] == "diarized_json" and third["prompt"] is None  # refused there


def test_gemini_large_audio_goes_through_the_files_api(servers: dict[str, Any], tmp_path: Path) -> None:
    server = servers["start"]("gemini")
    window = write_marker_window(tmp_path / "w.flac", [7, 8])
    engine = engine_for(server, tmp_path)
    engine.inline_max_bytes = 0  # every file counts as large
    pieces = engine.transcribe_timed(window, Hints())
    assert markers_of(pieces) == ["marker-7", "marker-8"]
    assert [e["endpoint"] for e in server.log] == ["upload", "generateContent", "delete"]
    assert server.log[1]["sources"] == ["file"] and server.log[1]["json"] is True


@pytest.mark.parametrize("vendor", VENDORS)
def test_summary_hears_the_audio(vendor: str, servers: dict[str, Any], tmp_path: Path) -> None:
    server = servers["start"](vendor)
    window = write_marker_window(tmp_path / "w.flac", [6])
    engine = engine_for(server, tmp_path)
    assert engine.summarize_audio(window, "Name the speakers.") == "Summary: marker-6"
    assert engine.complete("Merge: marker-1 marker-2") == "Summary: marker-1 marker-2"


@pytest.mark.parametrize("vendor", VENDORS)
def test_429_retry_hint_is_waited_out(vendor: str, servers: dict[str, Any], tmp_path: Path) -> None:
    server = servers["start"](vendor, rate_limited=2, retry_after_s=1.0)
    window = write_marker_window(tmp_path / "w.flac", [1])
    engine = engine_for(server, tmp_path)
    assert markers_of(engine.transcribe_timed(window, Hints())) == ["marker-1"]
    calls = [e for e in server.log if e["endpoint"] not in ("upload", "delete")]
    assert [e["limited"] for e in calls] == [True, True, False]
    # The client's own backoff would be ~0.01 s here: each wait of a second is the server's hint.
    for before, after in itertools.pairwise(calls):
        assert after["at"] - before["at"] >= 0.95


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_wrong_key_is_named(vendor: str, servers: dict[str, Any], tmp_path: Path) -> None:
    window = write_marker_window(tmp_path / "w.flac", [1])
    engine = engine_for(servers["start"](vendor), tmp_path, key="wrong")
    expected = "refused the request" if vendor == "gemini" else "API key"  # Google answers 400
    with pytest.raises(EngineRejected, match=expected):
        engine.transcribe_timed(window, Hints())


def test_over_the_cap_is_refused_before_upload(servers: dict[str, Any], tmp_path: Path) -> None:
    server = servers["start"]("mistral")
    window = write_marker_window(tmp_path / "long.flac", [1], total_s=905)
    with pytest.raises(WindowTooLarge) as refused:
        engine_for(server, tmp_path).transcribe_timed(window, Hints())
    assert refused.value.max_duration_s == 900
    assert server.log == []


def test_a_refusal_naming_a_duration_lowers_the_cap(servers: dict[str, Any], tmp_path: Path) -> None:
    server = servers["start"]("mistral", transcribe_max_s=60.0)
    window = write_marker_window(tmp_path / "w.flac", [1], total_s=90)
    engine = engine_for(server, tmp_path)
    with pytest.raises(WindowTooLarge) as refused:
        engine.transcribe_timed(window, Hints())
    assert refused.value.max_duration_s == 60
    assert engine.max_audio_s() == 60
