"""`voxbatch run` as a user runs it: a subprocess, embedded defaults, a stand-in vLLM server.

The recordings carry marker tones (tests/markers.py); the stand-in transcribes exactly the markers
it hears, so each window's transcript proves which slice of the recording it carried.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.captions import stamped
from jobs.documents import DOCUMENT_NAMES
from tests.documents import check_document, markers_in
from tests.fixtures.services import wait_until
from tests.speech import Marker, Recording, Silence, Speech, Tone, build_recording, marker_talk
from tests.standins.vllm_server import StandInVLLM

VOXBATCH = [sys.executable, "-m", "api.cli"]


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
    env.update(VOXBATCH_DATA_DIR=str(tmp / "data"), **extra)
    return env


def voxbatch(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VOXBATCH, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def standin() -> Iterator[StandInVLLM]:
    with StandInVLLM() as server:
        yield server


def vllm_env(tmp: Path, server: StandInVLLM, **extra: str) -> dict[str, str]:
    return env_for(tmp, VOXBATCH_ENGINE="vllm", VOXBATCH_VLLM_URL=server.url, **extra)


def test_run_makes_the_documents_from_every_window(
    tmp_path: Path, marker_recording_mp3: Recording, standin: StandInVLLM
) -> None:
    rec = marker_recording_mp3
    out = tmp_path / "out"
    done = voxbatch(
        [
            "run",
            str(rec.path),
            "--window-minutes",
            "1",
            "--preset",
            "panel",
            "--instructions",
            "Name every marker you hear.",
            "--output-dir",
            str(out),
        ],
        vllm_env(tmp_path, standin),
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str((out / "document.md").absolute())
    doc = check_document(out, rec)
    assert len(doc["windows"]) >= 2
    assert doc["engine"] == "vllm" and doc["model"] == "mistralai/Voxtral-Small-24B-2507"
    assert doc["instructions"] == "Name every marker you hear."
    # Window summaries came from chat calls that carried the window's audio and the instructions,
    # in the user turn (Voxtral has no system prompt).
    for w in doc["windows"]:
        if w["transcript"]:
            assert w["summary"].startswith("Summary of ")
            assert markers_in(w["summary"]) == markers_in(w["transcript"])
    chats = [e for e in standin.stats()["log"] if e["endpoint"] == "chat"]
    assert chats and all("Name every marker you hear." in e["prompt"] for e in chats)
    assert all(set(e["roles"]) == {"user"} for e in chats)
    assert doc["summary"].startswith("Overall: ")
    assert markers_in(doc["summary"]) == [m.k for m in rec.markers]
    md = (out / "document.md").read_text()
    assert md.startswith("# marker-talk\n")
    spans = re.findall(r"^## (\d\d:\d\d:\d\d) – (\d\d:\d\d:\d\d)$", md, flags=re.M)
    assert len(spans) == len(doc["windows"]) and spans[0][0] == "00:00:00"
    log = standin.stats()["log"]
    transcriptions = [e for e in log if e["endpoint"] == "transcriptions" and e["status"] == 200]
    # One transcription per speech segment (≤ 30 s each), none for the windows' pauses.
    assert len(transcriptions) == len(doc["segments"]) > len(doc["windows"])
    assert all(e["temperature"] == 0 for e in transcriptions)
    # 16 kHz mono before upload: 30 s is at most 960 kB; 44.1 kHz stereo would be ~5x larger.
    assert all(e["upload_bytes"] <= 30 * 32_000 + 1024 for e in transcriptions)


def test_a_server_with_default_caps_gets_smaller_pieces(tmp_path: Path, audio_dir: Path) -> None:
    # 30-minute windows against a server that refuses more than 60 s per request: the client
    # learns the cap from the refusal and re-cuts each window at silences.
    rec = build_recording(marker_talk(list(range(40, 52))), audio_dir / "capped.wav")
    with StandInVLLM(max_duration_s=60.0) as server:
        out = tmp_path / "out"
        done = voxbatch(
            ["run", str(rec.path), "--output-dir", str(out)], vllm_env(tmp_path, server), tmp_path
        )
        assert done.returncode == 0, done.stderr
        doc = check_document(out, rec)
        assert len(doc["windows"]) == 1
        ok = [e for e in server.stats()["log"] if e["endpoint"] == "transcriptions" and e["status"] == 200]
        # Transcripts go segment by segment (≤ 30 s): the cap never bites them.
        assert len(ok) == len(doc["segments"]) and all(e["duration_s"] <= 30.0 for e in ok)
        # The summary hears the whole window: refused once, then piece by piece, merged by a
        # text-only call.
        chats = [e for e in server.stats()["log"] if e["endpoint"] == "chat"]
        assert chats[0]["status"] == 400
        with_audio = [e for e in chats if e.get("duration_s") and e["status"] == 200]
        assert len(with_audio) >= 2 and all(e["duration_s"] <= 60.0 for e in with_audio)
        summary = doc["windows"][0]["summary"]
        assert summary.startswith("Overall: ")  # the stand-in's answer to a text-only call
        # (the stand-in also echoes the start of the prompt, hence distinct markers)
        assert list(dict.fromkeys(markers_in(summary))) == [m.k for m in rec.markers]


def test_a_repetition_loop_is_detected_and_retried(
    tmp_path: Path, audio_dir: Path, standin: StandInVLLM
) -> None:
    from tests.speech import LoopTrigger

    parts = [
        Speech("Music starts now."),
        Silence(0.8),
        Marker(7),
        Silence(0.8),
        LoopTrigger(3.0),
        Silence(0.8),
        Marker(8),
        Silence(0.8),
        Speech("And we are back."),
    ]
    rec = build_recording(parts, audio_dir / "loop.wav")
    out = tmp_path / "out"
    done = voxbatch(["run", str(rec.path), "--output-dir", str(out)], vllm_env(tmp_path, standin), tmp_path)
    assert done.returncode == 0, done.stderr
    doc = check_document(out, rec)
    assert len(doc["transcript"].split()) < 50  # no "the the the …"
    tries = [e for e in standin.stats()["log"] if e["endpoint"] == "transcriptions"]
    assert len(tries) >= 2
    assert any((e.get("frequency_penalty") or 0) > 0 or (e.get("repetition_penalty") or 1) > 1 for e in tries)


def test_running_again_changes_nothing_and_calls_no_model(
    tmp_path: Path, marker_recording: Recording, standin: StandInVLLM
) -> None:
    env = vllm_env(tmp_path, standin)
    args = ["run", str(marker_recording.path), "--window-minutes", "1"]
    first = voxbatch([*args, "--output-dir", str(tmp_path / "a")], env, tmp_path)
    assert first.returncode == 0, first.stderr
    calls = standin.stats()["posts"]
    second = voxbatch([*args, "--output-dir", str(tmp_path / "b")], env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert standin.stats()["posts"] == calls
    for name in DOCUMENT_NAMES:  # a re-run is byte-identical, captions included
        assert sha(tmp_path / "a" / name) == sha(tmp_path / "b" / name)


def test_an_interrupted_run_resumes_after_the_last_finished_window(
    tmp_path: Path, marker_recording: Recording
) -> None:
    # One-minute windows: every marker starting after the first minute is past the first window.
    # The stand-in holds each answer hearing one of them until released, so the first window
    # finishes and the job cannot, however fast the machine.
    later = frozenset(k for k, start, _ in marker_recording.markers if start >= 60.0)
    assert later
    with StandInVLLM(hold_markers=later) as server:
        env = vllm_env(tmp_path, server)
        args = [
            *VOXBATCH,
            "run",
            str(marker_recording.path),
            "--window-minutes",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
        ]
        # SIGINT as a terminal gives it: an earlier test of this process may have left SIGINT
        # ignored, and an ignored signal stays ignored across exec (the run then never stops).
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert proc.stderr is not None
        stderr: list[str] = []
        reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True)
        reader.start()
        results = tmp_path / "data" / "store" / "jobs"

        def first_window_done_and_a_later_one_held() -> bool:
            assert proc.poll() is None, "".join(stderr)
            return bool(list(results.glob("*/windows/0000.json"))) and server.stats()["held"] > 0

        wait_until(first_window_done_and_a_later_one_held, 120, "the first window and a held request")
        proc.send_signal(signal.SIGINT)
        # The requests the stand-in holds are never answered: the run cancels them and exits.
        proc.wait(timeout=60)
        reader.join(timeout=10)
        err = "".join(stderr)
        assert proc.returncode == 130, err
        assert "run the same command again to resume" in err
        assert "Traceback" not in err
        assert not (tmp_path / "out" / "document.json").exists()
        segments_before = len(list(results.glob("*/windows/*/segments/*.json")))
        # The stand-in logs a request when it answers: every held answer is let go and logged
        # before counting from zero.
        server.release()
        wait_until(lambda: server.stats()["holding"] == 0, 30, "the held requests to be answered")
        server.reset_stats()
        again = voxbatch(args[3:], env, tmp_path)
        assert again.returncode == 0, again.stderr
        assert "resuming job" in again.stderr
        segments = json.loads((tmp_path / "out" / "document.json").read_text())["segments"]
        transcribed = server.stats()["counts"].get("transcriptions", 0)
        # Only the segments not stored before the interruption went to the model again.
        assert segments_before > 0 and transcribed == len(segments) - segments_before
        check_document(tmp_path / "out", marker_recording)


def test_offline_engine_transcribes_real_speech_and_says_it_does_not_summarise(
    tmp_path: Path, audio_dir: Path
) -> None:
    rec = build_recording(
        [
            Speech("Good morning everyone and welcome to the conference."),
            Silence(1.0),
            Speech("Today we talk about the weather."),
        ],
        audio_dir / "offline.ogg",
        codec_args=["-c:a", "libvorbis"],
    )
    out = tmp_path / "out"
    done = voxbatch(["run", str(rec.path), "--output-dir", str(out)], env_for(tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "using the offline engine" in done.stderr
    doc = json.loads((out / "document.json").read_text())
    assert doc["engine"] == "offline" and doc["summary"] is None
    words = set(doc["transcript"].lower().split())
    assert len(words & {"good", "morning", "everyone", "welcome", "conference", "today", "weather"}) >= 3
    assert "offline engine" in (out / "document.md").read_text()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _lavfi(path: Path, source: str, *output: str) -> Path:
    """A file made by ffmpeg from a generated (lavfi) video source: pictures and silent videos."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", source, *output, "-y", str(path)], check=True
    )
    return path


def _png(path: Path) -> Path:
    return _lavfi(path, "color=red:s=32x32", "-frames:v", "1", "-f", "image2", "-c:v", "png")


def _silent_video(path: Path) -> Path:
    return _lavfi(path, "testsrc=d=2:s=64x64", "-c:v", "mpeg4")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp3", "does not exist"),
        (lambda d: _write(d / "empty.wav", b""), "is empty"),
        (lambda d: _write(d / "noise.mp3", os.urandom(50_000)), "ffmpeg can read"),
        (lambda d: _png(d / "picture.wav"), ""),
        (lambda d: _silent_video(d / "video.mp4"), "no audio stream"),
        (lambda d: d, "directory"),
    ],
    ids=["missing", "empty", "noise", "picture", "video-without-audio", "directory"],
)
def test_bad_input_gets_one_line_and_leaves_nothing(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = make(inputs)
    before = {p: sha(p) for p in inputs.rglob("*") if p.is_file()}
    done = voxbatch(["run", str(path), "--output-dir", str(tmp_path / "out")], env_for(tmp_path), tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("voxbatch: error: ") and message in lines[0]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
    assert {p: sha(p) for p in inputs.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "podcast"], "unknown preset 'podcast'"),
        (["--language", "xx"], "unknown language code 'xx'"),
        (["--window-minutes", "45"], "between 1 and 30"),
    ],
)
def test_bad_options_get_one_line(tmp_path: Path, short_speech: Path, args: list[str], message: str) -> None:
    done = voxbatch(["run", str(short_speech), *args], env_for(tmp_path), tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert message in done.stderr


def test_an_engine_refusal_fails_with_the_servers_reason(
    tmp_path: Path, marker_recording: Recording, standin: StandInVLLM
) -> None:
    env = vllm_env(tmp_path, standin, VOXBATCH_MODEL="mistralai/Voxtral-Mini-3B-2507")
    done = voxbatch(["run", str(marker_recording.path), "--window-minutes", "1"], env, tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) <= 3, done.stderr
    assert "window 1 (00:00:00 – " in done.stderr and "Voxtral-Mini-3B-2507" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([Silence(70.0)], id="silence"),
        pytest.param(
            [Tone(220.0, 20.0, noise=0.05), Tone(330.0, 20.0, noise=0.05), Tone(247.0, 25.0, noise=0.05)],
            id="music",
        ),
    ],
)
def test_a_recording_without_speech_gives_a_document_with_no_segments_and_a_note(
    tmp_path: Path, standin: StandInVLLM, parts: list[Silence | Tone]
) -> None:
    rec = build_recording(parts, tmp_path / "no-speech.flac")
    out = tmp_path / "out"
    done = voxbatch(["run", str(rec.path), "--output-dir", str(out)], vllm_env(tmp_path, standin), tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "document.json").read_text())
    assert doc["segments"] == [] and doc["transcript"] == ""
    assert "No speech was detected in this recording." in doc["notes"]
    assert (out / "transcript.vtt").read_text().startswith("WEBVTT")
    assert (out / "transcript.srt").read_text() == ""


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("VOXBATCH_MODEL_PROFILE", "nonesuch", "VOXBATCH_MODEL_PROFILE"),
        ("VOXBATCH_WINDOW_MINUTES", "99", "VOXBATCH_WINDOW_MINUTES"),
        ("VOXBATCH_FLOWER_BASIC_AUTH", "admin:change-me-flower", "VOXBATCH_FLOWER_BASIC_AUTH"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    tmp_path: Path, marker_recording: Recording, variable: str, value: str, named: str
) -> None:
    env = {**os.environ, "VOXBATCH_DATA_DIR": str(tmp_path / "data"), variable: value}
    done = voxbatch(["run", str(marker_recording.path)], env, tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and named in done.stderr, done.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "voxbatch-output").exists()


def test_run_follow_prints_the_first_window_while_a_later_one_is_held(
    tmp_path: Path, marker_recording: Recording
) -> None:
    later = frozenset(k for k, start, _ in marker_recording.markers if start >= 60.0)
    with StandInVLLM(hold_markers=later) as server:
        args = [*VOXBATCH, "run", str(marker_recording.path), "--window-minutes", "1", "--follow",
                "--output-dir", str(tmp_path / "out")]  # fmt: skip
        proc = subprocess.Popen(
            args, env=vllm_env(tmp_path, server), cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
        reader.start()
        try:
            # The first window's segments are printed while the model still holds a later answer. Both
            # are waited for: the later window's requests go out only at the job's first answer (the
            # first-text hold), so they may reach the server just after the first line is printed.
            wait_until(
                lambda: any("marker-0" in line for line in lines) and server.stats()["holding"] > 0,
                120,
                "the first segment printed and a later window's request held at the model server",
            )
            assert proc.poll() is None
            assert not (tmp_path / "out" / "document.md").exists()
        finally:
            server.release()
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
        reader.join(timeout=10)
    out = tmp_path / "out"
    assert lines[-1].strip() == str((out / "document.md").absolute())
    segments = json.loads((out / "document.json").read_text())["segments"]
    # Every segment once, in recording order, as document.md stamps them.
    assert [line.rstrip("\n") for line in lines[:-1]] == [stamped(s["start_s"], s["text"]) for s in segments]
