"""The offline engine: pocketsphinx on the CPU, English only, transcripts without summaries.

For machines with no GPU and no network, and for exercising the whole pipeline on real speech.
Accuracy is far below Voxtral's; the document says it has no summary rather than inventing one.

Audio flows ffmpeg → pipe (16 kHz mono s16le) → pocketsphinx's voice-activity endpointer →
decoder, one speech segment at a time (at most ``MAX_UTTERANCE_S``, about 2 MB of PCM), so memory
stays flat for a 30-minute window: neither the window's PCM nor one giant utterance's search
lattice is ever held whole. Silence never reaches the decoder.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from jobs.engine import Capabilities
from jobs.errors import EngineRejected, InputError, NotFound
from jobs.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000

# A speaker who never pauses (or steady music the detector takes for speech) would otherwise make
# one utterance as long as the window; the buffered segment and the decoder's memory grow with it.
MAX_UTTERANCE_S = 60.0

# Pocketsphinx marks alternate pronunciations as "word(2)" and emits fillers such as <sil>,
# <s>, [NOISE] or ++BREATH++; only dictionary words belong in a transcript.
_ALTERNATE = re.compile(r"\(\d+\)$")
_WORD = re.compile(r"^[a-z0-9][a-z0-9'.\-]*$")

_ENGLISH = frozenset({"en", "eng", "english"})


def _words(hypothesis: str) -> list[str]:
    words = []
    for token in hypothesis.split():
        word = _ALTERNATE.sub("", token.lower())
        if _WORD.match(word):
            words.append(word)
    return words


def _is_english(language: str | None) -> bool:
    if language is None:
        return True
    primary = re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]
    return primary in _ENGLISH


class OfflineEngine:
    """pocketsphinx with the US English model that ships in its wheel (no downloads).

    Language: ``None`` (auto) and English (``en``, ``en-US``, …) are transcribed; any other
    language is refused with ``EngineRejected``. The English model turns French or German speech
    into confident English nonsense, and a user who asked for French expects French or a clear
    refusal, not a document of wrong words.

    ``summarize_audio`` and ``complete`` are refused with ``EngineRejected`` (its capabilities say
    no summaries and the pipeline checks them first; the refusal guards other callers).

    Thread-safe: every ``transcribe`` call builds its own ``Decoder``. That costs about half a
    second of model loading, small beside decoding a window, and keeps calls independent: the
    decoder's running cepstral mean would otherwise carry from one window into the next.
    """

    name = "offline"
    model = "pocketsphinx-en-us"
    capabilities = Capabilities(
        summaries=False,
        # pocketsphinx decodes on this machine: one segment per core at a time.
        local_workers=os.cpu_count() or 1,
        no_summaries_note=(
            "No summaries: this document was made by the offline engine (pocketsphinx), which only "
            "transcribes. Point VOXBATCH_VLLM_URL at a vLLM server running Voxtral for summaries that "
            "follow your instructions."
        ),
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def max_audio_s(self) -> float | None:
        return None

    def transcribe(self, audio: Path, language: str | None, vocabulary: tuple[str, ...] = ()) -> str:
        if not _is_english(language):
            raise EngineRejected(
                f"the offline engine only understands English, not {language!r}: "
                "leave the language unset, or use the vllm or mistral engine"
            )
        if not audio.is_file():
            raise NotFound(f"no audio file at {audio}")
        from pocketsphinx import Decoder, Endpointer

        endpointer = Endpointer(sample_rate=SAMPLE_RATE)
        decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        frame_bytes = endpointer.frame_bytes
        max_bytes = int(MAX_UTTERANCE_S * SAMPLE_RATE) * 2
        utterances: list[str] = []
        segment = bytearray()

        def decode_segment() -> None:
            # Decoded as one whole utterance so that cepstral mean normalisation is computed over
            # the segment; fed frame by frame (live normalisation), the first words of every
            # segment came out garbled in our measurements.
            decoder.start_utt()
            decoder.process_raw(bytes(segment), False, True)
            decoder.end_utt()
            segment.clear()
            hyp = decoder.hyp()
            if hyp is not None:
                words = _words(hyp.hypstr)
                if words:
                    utterances.append(" ".join(words))

        with _pcm(audio) as pcm:
            while True:
                frame = _read_exactly(pcm, frame_bytes)
                if len(frame) < frame_bytes:
                    # end_stream only at the end of the input and only inside speech (its
                    # contract); it fails on an empty buffer, so the tail is padded with silence.
                    if endpointer.in_speech:
                        speech = endpointer.end_stream(frame.ljust(frame_bytes, b"\0"))
                        if speech:
                            segment += speech
                    break
                speech = endpointer.process(frame)
                if speech is None:
                    continue
                segment += speech
                if not endpointer.in_speech or len(segment) >= max_bytes:
                    decode_segment()
        if segment:
            decode_segment()
        log.debug("offline engine: %d utterances in %s", len(utterances), audio)
        return " ".join(utterances)

    def summarize_audio(self, audio: Path, prompt: str) -> str:
        raise EngineRejected("the offline engine only transcribes; summaries need the vllm or mistral engine")

    def complete(self, prompt: str) -> str:
        raise EngineRejected("the offline engine only transcribes; summaries need the vllm or mistral engine")


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    # A pipe read may return less than asked for long before the end of the stream.
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


@contextmanager
def _pcm(path: Path) -> Iterator[IO[bytes]]:
    """ffmpeg decoding ``path`` to 16 kHz mono s16le on a pipe; a failed decode is an InputError."""
    path = path.resolve()
    # stderr to a file, not a pipe: a chatty ffmpeg then cannot block on a full pipe.
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [
                "ffmpeg",
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                # An absolute local path, and only the file protocol: no URL tricks.
                "-protocol_whitelist",
                "file",
                "-i",
                str(path),
                "-vn",
                "-ac",
                "1",
                "-ar",
                str(SAMPLE_RATE),
                "-f",
                "s16le",
                "pipe:1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        assert proc.stdout is not None
        try:
            yield proc.stdout
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            code = proc.wait()
        if code != 0:
            stderr.seek(0)
            # The first line names the cause; later ones are consequences.
            lines = stderr.read().decode(errors="replace").strip().splitlines()
            first = lines[0] if lines else f"exit status {code}"
            raise InputError(f"ffmpeg could not decode {path.name}: {first}")
