"""FfmpegAudio against real ffmpeg: probing formats, refusing bad inputs, splitting in silence."""

from __future__ import annotations

import hashlib
import http.server
import itertools
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.engine import WindowAudio
from jobs.errors import InputError, StorageUnavailable, TransientError
from tests.markers import detect
from tests.speech import (
    PARAGRAPHS,
    Recording,
    Speech,
    Tone,
    build_recording,
    decode,
    render,
    write_audio,
)
from tests.tiling import check_coverage
from workers.audio import SAMPLE_RATE, FfmpegAudio

audio = FfmpegAudio()

FORMATS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "m4a": ["-c:a", "aac", "-b:a", "64k"],
    "wav": [],
    "flac": [],
    "ogg": ["-c:a", "libvorbis"],
    "opus": ["-c:a", "libopus", "-b:a", "32k"],
    "webm": ["-c:a", "libopus", "-b:a", "32k"],
}


@pytest.fixture(scope="module")
def speech_samples() -> np.ndarray:
    samples, _ = render([Speech(PARAGRAPHS[3])])
    return samples


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_probe_reads_common_audio_formats(ext: str, speech_samples: np.ndarray, tmp_path: Path) -> None:
    path = write_audio(speech_samples, tmp_path / f"talk.{ext}", out_rate=48_000, channels=2,
                       codec_args=FORMATS[ext])  # fmt: skip
    info = audio.probe(str(path))
    assert info.duration_s == pytest.approx(len(speech_samples) / SAMPLE_RATE, abs=0.1)
    assert info.channels == 2
    assert info.sample_rate == 48_000
    assert info.size_bytes == path.stat().st_size
    assert info.codec


def test_probe_reads_the_audio_of_a_video(short_speech: Path, tmp_path: Path) -> None:
    path = tmp_path / "talk.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5",
         "-i", str(short_speech), "-shortest", "-c:v", "mpeg4", "-c:a", "aac", str(path)],
        check=True,
    )  # fmt: skip
    info = audio.probe(str(path))
    assert info.codec == "aac"
    assert info.duration_s > 3.0
    windows = list(audio.split(str(path), tmp_path / "out", 60.0))
    assert len(windows) == 1
    assert windows[0].end_s == pytest.approx(info.duration_s, abs=0.1)


def _bad_inputs(root: Path, short_speech: Path) -> list[tuple[str, str]]:
    """(source, message fragment) for every kind of unusable input."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.wav").write_text("these are meeting notes, not audio\n" * 50)
    (root / "folder.wav").mkdir()
    picture = root / "photo.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48",
                    "-frames:v", "1", "-f", "image2", "-c:v", "png", str(picture)], check=True)  # fmt: skip
    video = root / "silent-film.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5",
                    "-t", "2", "-c:v", "mpeg4", str(video)], check=True)  # fmt: skip
    zero = root / "zero.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "s16le", "-ar", "16000", "-ac", "1",
                    "-i", "/dev/null", str(zero)], check=True)  # fmt: skip
    # Containers that point at other files must never be followed, even to a readable one.
    (root / "list.m3u8").write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:5.0,\n{short_speech}\n#EXT-X-ENDLIST\n"
    )
    (root / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile '{short_speech}'\n")
    return [
        (str(root / "missing.mp3"), "missing.mp3 does not exist"),
        (str(root / "folder.wav"), "folder.wav is a directory"),
        (str(root / "empty.wav"), "empty.wav is empty"),
        (str(root / "notes.wav"), "notes.wav is not an audio or video file ffmpeg can read"),
        (str(picture), "photo.wav is not an audio or video file ffmpeg can read"),
        (str(video), "silent-film.mp4 has no audio stream"),
        (str(zero), "zero.wav has no audio duration"),
        (str(root / "list.m3u8"), "list.m3u8 is not an audio or video file"),
        (str(root / "list.ffconcat"), "list.ffconcat is not an audio or video file"),
        (f"concat:{short_speech}|{short_speech}", "does not exist"),
        (f"file:{short_speech}", "does not exist"),
        ("ftp://example.com/talk.mp3", "ftp:// sources are not supported"),
        ("s3://bucket/talk.mp3", "s3:// sources are not supported"),
        ("", "no recording was given"),
    ]


BAD_KINDS = [
    "missing", "directory", "empty", "text", "picture", "video-only", "zero-duration",
    "hls-playlist", "ffconcat", "concat-protocol", "file-protocol", "ftp", "s3", "blank",
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory, short_speech: Path) -> dict[str, tuple[str, str]]:
    cases = _bad_inputs(tmp_path_factory.mktemp("bad"), short_speech)
    assert len(cases) == len(BAD_KINDS)
    return dict(zip(BAD_KINDS, cases, strict=True))


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_is_one_clear_input_error_and_writes_nothing(
    kind: str, bad_inputs: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    source, message = bad_inputs[kind]
    with pytest.raises(InputError, match=message.replace(".", r"\.")) as probed:
        audio.probe(source)
    assert "\n" not in str(probed.value)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        list(audio.split(source, out, 20.0))
    assert not out.exists()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_windows(
    windows: list[WindowAudio], recording: Recording, max_window_s: float, out_dir: Path
) -> None:
    """Each window ≤ max, exact coverage, 16 kHz mono FLAC, every marker whole in its window."""
    assert [w.index for w in windows] == list(range(len(windows)))
    assert [w.path.name for w in windows] == [f"{i:04d}.flac" for i in range(len(windows))]
    assert sorted(p.name for p in out_dir.iterdir()) == [w.path.name for w in windows]
    total = 0
    for w in windows:
        info = audio.probe(str(w.path))
        assert (info.codec, info.sample_rate, info.channels) == ("flac", SAMPLE_RATE, 1)
        samples = decode(w.path)
        # The times are sample counts: the file holds exactly the span it claims.
        assert len(samples) == round((w.end_s - w.start_s) * SAMPLE_RATE)
        total += len(samples)
        inside = [m.k for m in recording.markers if w.start_s <= m.start_s < w.end_s]
        for m in recording.markers:
            if m.k in inside:
                assert m.end_s <= w.end_s, f"marker {m.k} is cut by the end of window {w.index}"
        heard, loop = detect(samples)
        assert heard == inside, f"window {w.index} ({w.start_s:.2f}–{w.end_s:.2f} s)"
        assert not loop
    check_coverage([(w.start_s, w.end_s) for w in windows], max_window_s, total / SAMPLE_RATE)
    source = decode(recording.path)
    for w in windows[:-1]:
        cut = round(w.end_s * SAMPLE_RATE)
        around = source[cut - SAMPLE_RATE // 10 : cut + SAMPLE_RATE // 10].astype(np.float64)
        level = 10 * np.log10(np.mean(around**2) + 1e-12)
        assert level < -40.0, f"the cut at {w.end_s:.2f} s is not in silence ({level:.1f} dBFS)"
    assert len(windows) >= 5  # the test really exercised cuts
    assert all(w.end_s - w.start_s > 0.75 * max_window_s for w in windows[:-1])


@pytest.mark.parametrize("fixture", ["marker_recording", "marker_recording_mp3"])
def test_split_cuts_in_silence_and_keeps_every_marker_whole(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    recording: Recording = request.getfixturevalue(fixture)
    before = _sha256(recording.path)
    out = tmp_path / "windows"
    windows = list(audio.split(str(recording.path), out, 20.0))
    _check_windows(windows, recording, 20.0, out)
    assert windows[-1].end_s == pytest.approx(audio.probe(str(recording.path)).duration_s, abs=0.1)
    assert _sha256(recording.path) == before


def test_kept_samples_are_exactly_what_each_window_file_holds(
    marker_recording_mp3: Recording, tmp_path: Path
) -> None:
    # `voxbatch run` transcribes the kept samples instead of decoding the FLAC again; a resumed
    # run decodes the FLAC. Both must see the same audio, or a re-run would not be byte-identical.
    kept = list(audio.split(str(marker_recording_mp3.path), tmp_path / "kept", 20.0, keep_samples=True))
    plain = list(audio.split(str(marker_recording_mp3.path), tmp_path / "plain", 20.0))
    assert len(kept) == len(plain) >= 3
    for w, p in zip(kept, plain, strict=True):
        assert w.samples is not None and p.samples is None
        assert (w.start_s, w.end_s) == (p.start_s, p.end_s)
        assert len(w.samples) == round((w.end_s - w.start_s) * SAMPLE_RATE)
        assert np.array_equal(w.samples, audio.read_samples(w.path))
        assert _sha256(w.path) == _sha256(p.path)


def test_a_window_can_be_split_again_smaller(marker_recording: Recording, tmp_path: Path) -> None:
    first = list(audio.split(str(marker_recording.path), tmp_path / "a", 40.0))[1]
    again = list(audio.split(str(first.path), tmp_path / "b", 12.0))
    shifted = Recording(
        first.path,
        [
            m._replace(start_s=m.start_s - first.start_s, end_s=m.end_s - first.start_s)
            for m in marker_recording.markers
            if first.start_s <= m.start_s < first.end_s
        ],
    )
    assert len(shifted.markers) >= 3
    assert len(again) >= 3
    for w in again:
        assert w.end_s - w.start_s <= 12.0
    total = sum(len(decode(w.path)) for w in again)
    assert total == round((first.end_s - first.start_s) * SAMPLE_RATE)
    for w in again:
        inside = [m.k for m in shifted.markers if w.start_s <= m.start_s < w.end_s]
        assert detect(decode(w.path))[0] == inside


def test_splitting_into_the_sources_own_directory_is_refused(
    marker_recording: Recording, tmp_path: Path
) -> None:
    first = next(iter(audio.split(str(marker_recording.path), tmp_path, 40.0)))
    with pytest.raises(ValueError, match="holds the source"):
        audio.split(str(first.path), tmp_path, 12.0)


def test_without_silence_the_cut_goes_to_the_quietest_point(tmp_path: Path) -> None:
    # A loud tone with noise and no silence anywhere, except a quieter (still not silent) dip.
    loud = partial(Tone, 300.0, amplitude=0.5, noise=0.05)
    recording = build_recording(
        [loud(seconds=17.0), Tone(300.0, 0.6, amplitude=0.1, noise=0.05), loud(seconds=23.0)],
        tmp_path / "hum.wav",
    )
    windows = list(audio.split(str(recording.path), tmp_path / "out", 20.0))
    assert 17.0 <= windows[0].end_s <= 17.6
    total = sum(len(decode(w.path)) for w in windows)
    check_coverage([(w.start_s, w.end_s) for w in windows], 20.0, total / SAMPLE_RATE)
    assert len(windows) == 3


def test_constant_noise_still_splits_within_the_limit(tmp_path: Path) -> None:
    recording = build_recording([Tone(150.0, 50.0, amplitude=0.3, noise=0.1)], tmp_path / "n.ogg",
                                codec_args=["-c:a", "libvorbis"])  # fmt: skip
    windows = list(audio.split(str(recording.path), tmp_path / "out", 20.0))
    total = sum(len(decode(w.path)) for w in windows)
    check_coverage([(w.start_s, w.end_s) for w in windows], 20.0, total / SAMPLE_RATE)
    assert len(windows) == 3
    assert total == pytest.approx(50.0 * SAMPLE_RATE, abs=0.05 * SAMPLE_RATE)


def test_closing_the_generator_stops_ffmpeg_and_leaves_only_finished_windows(
    marker_recording: Recording, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    windows = audio.split(str(marker_recording.path), out, 20.0)
    first = next(iter(windows))
    windows.close()  # type: ignore[attr-defined]
    assert [p.name for p in out.iterdir()] == [first.path.name]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; files named ``cut-*`` break off halfway, like a dropped download, and
    files named ``busy-*`` get S3's answer under load (503 SlowDown)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_head(self) -> Any:
        if "/busy-" in self.path:
            self.send_error(503, "Slow Down")
            return None
        return super().send_head()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if "/cut-" not in self.path:
            super().copyfile(source, outputfile)
            return
        data = source.read()
        outputfile.write(data[: len(data) // 2])
        self.close_connection = True


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_probe_and_split_an_http_url(
    http_root: tuple[Path, str], marker_recording_mp3: Recording, tmp_path: Path
) -> None:
    root, base = http_root
    (root / "talk.mp3").write_bytes(marker_recording_mp3.path.read_bytes())
    url = f"{base}/talk.mp3?X-Amz-Signature=secret&X-Amz-Expires=600"
    info = audio.probe(url)
    assert info.codec == "mp3"
    windows = list(audio.split(url, tmp_path / "out", 30.0))
    assert windows[-1].end_s == pytest.approx(info.duration_s, abs=0.1)
    with pytest.raises(InputError, match=r"gone\.mp3 could not be fetched") as missing:
        audio.probe(f"{base}/gone.mp3?X-Amz-Signature=secret")
    assert "secret" not in str(missing.value)


def test_a_server_that_answers_503_is_a_transient_error(
    http_root: tuple[Path, str], marker_recording_mp3: Recording, tmp_path: Path
) -> None:
    """S3 under load answers 503 to a presigned GET: the job must retry, not fail as bad input."""
    root, base = http_root
    (root / "busy-talk.mp3").write_bytes(marker_recording_mp3.path.read_bytes())
    url = f"{base}/busy-talk.mp3?X-Amz-Signature=secret"
    with pytest.raises(StorageUnavailable, match=r"busy-talk\.mp3 could not be fetched now") as probing:
        audio.probe(url)
    with pytest.raises(StorageUnavailable, match=r"busy-talk\.mp3 could not be fetched now") as splitting:
        list(audio.split(url, tmp_path / "out", 30.0))
    for refused in (probing, splitting):
        assert isinstance(refused.value, TransientError)
        assert "secret" not in str(refused.value)


def test_a_download_that_breaks_off_is_an_input_error(
    http_root: tuple[Path, str], marker_recording_mp3: Recording, tmp_path: Path
) -> None:
    root, base = http_root
    (root / "cut-talk.mp3").write_bytes(marker_recording_mp3.path.read_bytes())
    with pytest.raises(InputError, match=r"cut-talk\.mp3 could only be decoded up to") as broken:
        list(audio.split(f"{base}/cut-talk.mp3?X-Amz-Signature=secret", tmp_path / "out", 30.0))
    assert "secret" not in str(broken.value)


def test_the_bundled_sample_splits_in_its_pauses(tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parents[1] / "data" / "sample-talk.mp3"
    info = audio.probe(str(sample))
    assert 90.0 <= info.duration_s <= 150.0
    assert sample.stat().st_size < 1_000_000
    windows = list(audio.split(str(sample), tmp_path / "out", 40.0))
    assert len(windows) == 3
    source = decode(sample)
    for w in windows[:-1]:
        cut = round(w.end_s * SAMPLE_RATE)
        around = source[cut - SAMPLE_RATE // 5 : cut + SAMPLE_RATE // 5].astype(np.float64)
        assert 10 * np.log10(np.mean(around**2) + 1e-12) < -40.0


@pytest.mark.parametrize("block", [1_000, 7_919, 160_000, 1_000_000])
def test_window_planner_is_exact_whatever_the_block_size(block: int) -> None:
    """Samples pass through unchanged and cuts land in the gaps, however reads are chunked."""
    from jobs.planning import WindowCut as _Cut
    from jobs.planning import WindowPlanner

    rng = np.random.default_rng(1)
    pieces, gaps, position = [], [], 0
    for i in range(60):
        loud = rng.integers(-8000, 8000, int(rng.uniform(1.0, 2.5) * SAMPLE_RATE), dtype=np.int16)
        quiet = np.zeros(int(0.5 * SAMPLE_RATE), dtype=np.int16) if i % 4 else loud[:0]
        pieces += [loud, quiet]
        position += len(loud)
        if len(quiet):
            gaps.append((position, position + len(quiet)))
        position += len(quiet)
    signal = np.concatenate(pieces)
    planner = WindowPlanner(12.0, SAMPLE_RATE)
    out: list[np.ndarray] = []
    cuts: list[int] = []
    for start in range(0, len(signal), block):
        for event in planner.feed(signal[start : start + block]):
            if isinstance(event, _Cut):
                cuts.append(event.at)
            else:
                out.append(event)
    out.append(planner.flush())
    assert np.array_equal(np.concatenate(out), signal)
    bounds = [0, *cuts, len(signal)]
    check_coverage(
        [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in itertools.pairwise(bounds)],
        12.0,
        len(signal) / SAMPLE_RATE,
    )
    assert len(cuts) >= 8
    in_gap = sum(any(a <= c <= b for a, b in gaps) for c in cuts)
    # Each 12-s window has a 3-s lookback range and gaps come every 1.5-3 s (but every fourth
    # is missing), so nearly every range holds a whole gap.
    assert in_gap >= len(cuts) * 0.8
    for c in cuts:
        for a, b in gaps:
            if a <= c <= b:  # the middle of the part of the gap inside the lookback range
                assert min(c - a, b - c) >= 0.14 * SAMPLE_RATE


def test_a_streamed_webm_without_a_duration_header_is_probed_from_its_packets(
    short_speech: Path, tmp_path: Path
) -> None:
    # What a browser's MediaRecorder uploads: WebM written to a pipe, so no duration in the header.
    path = tmp_path / "recorded.webm"
    with path.open("wb") as out:
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(short_speech), "-c:a", "libopus", "-f", "webm", "pipe:1"],
            stdout=out,
            check=True,
        )
    header = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert header.stdout.strip() in ("", "N/A")
    from tests.speech import duration_s

    expected = duration_s(short_speech)
    info = FfmpegAudio().probe(str(path))
    assert info.duration_s == pytest.approx(expected, abs=0.1)
    windows = list(FfmpegAudio().split(str(path), tmp_path / "w", 60))
    assert windows[-1].end_s == pytest.approx(expected, abs=0.1)
