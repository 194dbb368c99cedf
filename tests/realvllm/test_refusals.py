"""Every refusal the stand-in imitates, sent to the real vLLM and to the stand-in configured alike.

Status, error type, param and message (numbers aside) must match: the stand-in
(tests/standins/vllm_server.py) cannot drift from the real server again.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.realvllm import server as rv
from tests.speech import PARAGRAPHS, Silence, Speech, Tone, build_recording
from tests.standins.vllm_server import StandInVLLM


@dataclass(frozen=True)
class Audio:
    short: Path  # a few seconds of speech, 16 kHz mono FLAC
    long: Path  # over CAPPED_DURATION_S, FLAC
    long_mp3: Path  # the same, as MP3 (vLLM reads it with PyAV, not soundfile)
    big: Path  # over CAPPED_FILE_MB, WAV
    wide: Path  # under the duration cap but over CAPPED_DECODE_BYTES decoded (48 kHz stereo)
    garbage: Path


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Audio:
    d = tmp_path_factory.mktemp("refusals")
    garbage = d / "garbage.flac"
    garbage.write_bytes(b"not audio at all" * 64)
    long_parts = [Speech(PARAGRAPHS[0]), Silence(rv.CAPPED_DURATION_S + 10)]
    return Audio(
        short=build_recording([Speech(PARAGRAPHS[1])], d / "short.flac").path,
        long=build_recording(long_parts, d / "long.flac").path,
        long_mp3=build_recording(long_parts, d / "long.mp3", codec_args=["-c:a", "libmp3lame"]).path,
        big=build_recording([Tone(440.0, 200.0)], d / "big.wav").path,
        wide=build_recording([Tone(440.0, 40.0)], d / "wide.flac", out_rate=48_000, channels=2).path,
        garbage=garbage,
    )


@pytest.fixture(scope="module")
def standin() -> Iterator[StandInVLLM]:
    """The stand-in with the capped server's configuration."""
    with StandInVLLM(
        model=rv.SERVED_NAME,
        api_key=rv.CAPPED_API_KEY,
        max_duration_s=float(rv.CAPPED_DURATION_S),
        max_file_mb=float(rv.CAPPED_FILE_MB),
        max_decode_bytes=rv.CAPPED_DECODE_BYTES,
        max_audios=1,  # the launcher's --limit-mm-per-prompt '{"audio": 1}'
    ) as server:
        yield server


Send = Callable[[str, dict[str, str]], httpx.Response]


def transcription(file: str | None, **fields: str) -> Callable[[Audio, str, dict[str, str]], httpx.Response]:
    def send(audio: Audio, url: str, headers: dict[str, str]) -> httpx.Response:
        data = {"model": rv.SERVED_NAME, "max_completion_tokens": "1", **fields}
        files = None
        if file is not None:
            path: Path = getattr(audio, file)
            files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
        return httpx.post(f"{url}/audio/transcriptions", data=data, files=files, headers=headers, timeout=120)

    return send


def chat(
    messages: Callable[[Audio], list[dict[str, Any]]], **body: Any
) -> Callable[[Audio, str, dict[str, str]], httpx.Response]:
    def send(audio: Audio, url: str, headers: dict[str, str]) -> httpx.Response:
        payload = {"model": rv.SERVED_NAME, "messages": messages(audio), "max_tokens": 1, **body}
        return httpx.post(f"{url}/chat/completions", json=payload, headers=headers, timeout=120)

    return send


def part(path: Path) -> dict[str, Any]:
    fmt = path.suffix.lstrip(".")
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


def user_audio(path_of: Callable[[Audio], Path], n: int = 1) -> Callable[[Audio], list[dict[str, Any]]]:
    return lambda a: [
        {
            "role": "user",
            "content": [*(part(path_of(a)) for _ in range(n)), {"type": "text", "text": "Sum up."}],
        }
    ]


CASES = {
    "transcription-unknown-model": transcription("short", model="no-such-model"),
    "transcription-no-file": transcription(None),
    "transcription-verbose-json": transcription("short", response_format="verbose_json"),
    "transcription-srt": transcription("short", response_format="srt"),
    "transcription-language-jw": transcription("short", language="jw"),
    "transcription-language-xx": transcription("short", language="xx"),
    "transcription-file-too-big": transcription("big"),
    "transcription-too-long-flac": transcription("long"),
    "transcription-too-long-mp3": transcription("long_mp3"),
    "transcription-decode-bytes": transcription("wide"),
    "transcription-not-audio": transcription("garbage"),
    "chat-unknown-model": chat(lambda a: [{"role": "user", "content": "Hi"}], model="no-such-model"),
    "chat-too-long": chat(user_audio(lambda a: a.long)),
    "chat-file-too-big": chat(user_audio(lambda a: a.big)),
    "chat-system-beside-audio": chat(
        lambda a: [{"role": "system", "content": "Be brief."}, *user_audio(lambda b: b.short)(a)]
    ),
    "chat-too-many-audios": chat(user_audio(lambda a: a.short, n=2)),
    "chat-prompt-over-context": chat(lambda a: [{"role": "user", "content": "hello " * 40_000}]),
    "no-api-key": transcription("short"),
}


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return "#"
    return re.sub(r"\d+(?:\.\d+)?", "#", str(value))


def shape(answer: httpx.Response) -> dict[str, Any]:
    """Status and body with every number replaced by #, so 25.63 and 25.6 compare equal."""
    try:
        body: Any = answer.json()
    except ValueError:
        body = answer.text
    return {"status": answer.status_code, "body": _masked(body)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_standin_refuses_as_the_real_server_does(
    case: str, capped: rv.RealVLLM, standin: StandInVLLM, audio: Audio
) -> None:
    send = CASES[case]
    headers = {} if case == "no-api-key" else {"Authorization": f"Bearer {rv.CAPPED_API_KEY}"}
    real = send(audio, capped.url, headers)
    assert 400 <= real.status_code < 500, (real.status_code, real.text[:500])
    stand = send(audio, standin.url, headers)
    assert shape(stand) == shape(real)
