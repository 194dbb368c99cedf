"""The offline engine on real generated speech: pocketsphinx through a real ffmpeg pipe.

Accuracy is scored as content-word recall (words outside a small stop list, as sets). Measured on
the passage below (espeak-ng ``en-us+f5``, 150-175 wpm): recall 0.77-0.88, and 0.00-0.07 against
an unrelated text of similar length; with utterances capped at 2 s, 0.50-0.77. espeak-ng's
default voice scores far lower (0.1-0.4) with pocketsphinx's model, hence the chosen variant.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

import workers.engines.offline as offline
from jobs.errors import EngineRejected, InputError, NotFound
from jobs.settings import Settings
from tests.speech import Silence, Speech, Tone, build_recording, render, write_audio
from workers.engines.offline import OfflineEngine

VOICE = "en-us+f5"
FRAME_SAMPLES = 480  # the endpointer's 30 ms frame at 16 kHz
SENTENCES = [
    "Yesterday we discussed the budget for the new building project and agreed to meet again next week.",
    "Please call me tomorrow morning about the meeting with the board of directors.",
    "The quick brown fox jumps over the lazy dog.",
]
UNRELATED = (
    "My sister bought a new car last year and drives it to work every day. "
    "The train to London leaves at seven o'clock in the evening."
)
STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "is",
        "it",
        "that",
        "this",
        "so",
        "we",
        "i",
        "you",
        "be",
        "are",
        "was",
        "were",
        "with",
        "as",
        "by",
        "from",
        "not",
        "no",
        "has",
        "have",
        "do",
        "me",
        "my",
    ]
)


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if w not in STOP}


def recall(reference: str, transcript: str) -> float:
    ref = content_words(reference)
    return len(ref & content_words(transcript)) / len(ref)


@pytest.fixture(scope="module")
def engine() -> OfflineEngine:
    return OfflineEngine(Settings())


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("offline-speech")


@pytest.fixture(scope="module")
def passage(speech_dir: Path) -> Path:
    parts: list[Silence | Speech] = [Silence(0.5)]
    for sentence in SENTENCES:
        parts += [Speech(sentence, voice=VOICE, speed=160), Silence(1.0)]
    return build_recording(parts, speech_dir / "passage.flac").path


@pytest.fixture(scope="module")
def sentence(speech_dir: Path) -> Path:
    parts: list[Silence | Speech] = [Silence(0.3), Speech(SENTENCES[1], voice=VOICE, speed=160), Silence(0.3)]
    return build_recording(parts, speech_dir / "sentence.flac").path


@pytest.fixture(scope="module")
def passage_transcript(engine: OfflineEngine, passage: Path) -> str:
    return engine.transcribe(passage, None)


def test_identity(engine: OfflineEngine) -> None:
    assert engine.name == "offline"
    assert engine.model == "pocketsphinx-en-us"
    assert engine.capabilities.summaries is False
    assert engine.max_audio_s() is None


def test_transcript_shares_most_words_with_the_spoken_text(passage_transcript: str) -> None:
    assert recall(" ".join(SENTENCES), passage_transcript) >= 0.6, passage_transcript
    # The score means something: an unrelated text of similar length scores near zero.
    assert recall(UNRELATED, passage_transcript) < 0.25, passage_transcript


def test_transcript_keeps_the_spoken_order(passage_transcript: str) -> None:
    words = passage_transcript.split()
    assert words.index("budget") < words.index("directors") < words.index("dog"), passage_transcript


def test_transcript_is_plain_lowercase_words(passage_transcript: str) -> None:
    assert passage_transcript == passage_transcript.strip()
    assert "\n" not in passage_transcript
    for word in passage_transcript.split():
        assert re.fullmatch(r"[a-z0-9][a-z0-9'.\-]*", word), word


def test_digital_silence_gives_an_empty_transcript(engine: OfflineEngine, speech_dir: Path) -> None:
    path = build_recording([Silence(8.0)], speech_dir / "silence.flac").path
    assert engine.transcribe(path, None) == ""


def test_faint_hum_gives_an_empty_transcript(engine: OfflineEngine, speech_dir: Path) -> None:
    # A quiet mains hum with a little hiss, like a room with nobody talking.
    path = build_recording([Tone(50.0, 8.0, amplitude=0.003, noise=0.0005)], speech_dir / "hum.flac").path
    assert engine.transcribe(path, None) == ""


@pytest.mark.parametrize("frames", [300, 300.5])
def test_recording_that_ends_mid_speech(engine: OfflineEngine, speech_dir: Path, frames: float) -> None:
    # Cut inside the second sentence: the stream ends while the detector is in speech, on a
    # frame boundary (an empty last read) or inside a frame (a short one).
    samples, _ = render([Silence(0.5), *(Speech(s, voice=VOICE, speed=160) for s in SENTENCES)])
    cut = int(frames * FRAME_SAMPLES)
    assert cut < len(samples) * 0.75
    path = write_audio(samples[:cut], speech_dir / f"cut-{frames}.flac")
    transcript = engine.transcribe(path, None)
    assert "budget" in transcript.split(), transcript


def test_english_codes_are_accepted(engine: OfflineEngine, sentence: Path) -> None:
    # None (auto) is covered by the other tests; a region suffix must not matter.
    assert recall(SENTENCES[1], engine.transcribe(sentence, "en-US")) >= 0.5


def test_other_languages_are_refused_clearly(engine: OfflineEngine, sentence: Path) -> None:
    with pytest.raises(EngineRejected, match="only understands English"):
        engine.transcribe(sentence, "fr")


def test_summaries_are_refused_clearly(engine: OfflineEngine, sentence: Path) -> None:
    with pytest.raises(EngineRejected, match="only transcribes"):
        engine.summarize_audio(sentence, "Summarize this meeting.")
    with pytest.raises(EngineRejected, match="only transcribes"):
        engine.complete("Merge these summaries.")


def test_missing_file_is_not_found(engine: OfflineEngine, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        engine.transcribe(tmp_path / "nope.flac", None)


def test_undecodable_file_names_ffmpegs_reason(engine: OfflineEngine, tmp_path: Path) -> None:
    path = tmp_path / "broken.flac"
    path.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(InputError, match=r"ffmpeg could not decode broken\.flac: \S"):
        engine.transcribe(path, None)


def test_long_utterances_are_cut_without_losing_speech(
    engine: OfflineEngine, passage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 2 s cap cuts every sentence several times, mid-word; words near the cuts suffer but the
    # speech on both sides of every cut must still be decoded.
    monkeypatch.setattr(offline, "MAX_UTTERANCE_S", 2.0)
    transcript = engine.transcribe(passage, None)
    assert recall(" ".join(SENTENCES), transcript) >= 0.4, transcript
    assert "budget" in transcript.split() and "dog" in transcript.split(), transcript


def test_concurrent_calls_do_not_interfere(engine: OfflineEngine, sentence: Path) -> None:
    expected = engine.transcribe(sentence, None)
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(engine.transcribe(sentence, None))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [expected] * 2
