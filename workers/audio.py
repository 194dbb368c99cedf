"""ffmpeg behind the AudioTool seam: probe a recording, split it into 16 kHz mono FLAC windows.

Times are float seconds; windows are half-open spans ``[start_s, end_s)`` of the decoded audio,
computed from sample counts so they never drift.

The split is one decode pass. A decoding ffmpeg resamples and downmixes the source to 16 kHz mono
s16le on a pipe; Python reads it in large blocks and streams samples into the current window's
FLAC file (libFLAC, in this process). Only the last part of each
window, its *lookback range* (see ``jobs.planning``), is held back in memory until the cut is
chosen, so memory stays flat whatever the recording's length.

User-controlled strings never reach ffmpeg as protocol URLs (``workers.ffmpeg_input``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import soundfile

from jobs.engine import SourceInfo, WindowAudio
from jobs.errors import InputError
from jobs.planning import FRAME_S, WindowCut, WindowPlanner
from workers.ffmpeg_input import FfmpegInput

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
FRAME_LEN = round(FRAME_S * SAMPLE_RATE)
BLOCK_SAMPLES = 10 * SAMPLE_RATE  # 10 s (320 kB) per read: few syscalls, little memory
PIPE_BYTES = 1 << 20  # enlarged pipes let the decoder, the resampler and Python overlap
MIN_WINDOW_S = 1.0

QUIET_ARGS = ["-nostdin", "-hide_banner", "-loglevel", "error"]
SELECT_ARGS = ["-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", "1"]
RESAMPLE_ARGS = ["-ar", str(SAMPLE_RATE)]
# Without -flush_packets 0, ffmpeg writes every ~400-sample packet to the pipe on its own, and
# the pipe hops cost as much as the decode.
RAW_ARGS = ["-flush_packets", "0", "-f", "s16le"]
# The decoder is the split's critical path: the resampler only follows it, through a pipe. At
# equal priority the scheduler lets it preempt the decoder on two cores and the chain stalls; at a
# lower one it fills the gaps instead (splitting a 3 h MP3: 6.3-6.5 s at equal priority, 6.0 s at
# nice 10; a shell chain decoder | resampler | ffmpeg FLAC encoder: 6.8 s and 6.1 s).
DOWNSTREAM_NICE = 10


class FfmpegAudio:
    """AudioTool on the ffmpeg and ffprobe binaries."""

    def __init__(self, ffmpeg: str = "ffmpeg", ffprobe: str = "ffprobe") -> None:
        self.ffmpeg = ffmpeg
        self.ffprobe = ffprobe

    def probe(self, source: str) -> SourceInfo:
        """Probe a local path or an http(s) URL. Raises InputError naming what is wrong, or
        StorageUnavailable where the server may answer later (5xx, refused, timed out)."""
        target = FfmpegInput.parse(source)
        cmd = [
            self.ffprobe, "-v", "error", "-hide_banner",
            *target.input_args(), "-show_format", "-show_streams", "-of", "json",
        ]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as exc:
            raise InputError(f"{target.name} could not be read within 2 minutes") from exc
        if done.returncode != 0:
            detail = target.scrub(_last_line(done.stderr.decode("utf-8", "replace")))
            log.info("ffprobe refused %s: %s", target.name, detail)
            raise target.unreadable(detail)
        data: dict[str, Any] = json.loads(done.stdout or b"{}")
        fmt = data.get("format", {})
        streams = data.get("streams", [])
        audio = [s for s in streams if s.get("codec_type") == "audio"]
        if not audio:
            if streams:
                raise InputError(f"{target.name} has no audio stream")
            raise target.unreadable("no streams")
        stream = audio[0]
        # The audio stream's own duration first: a video track may run longer than its sound.
        duration = _number(stream.get("duration")) or _number(fmt.get("duration"))
        if duration is None or not math.isfinite(duration):
            # Streamed containers (a browser's MediaRecorder WebM, a piped MP4) carry no duration
            # in their header; the packets' timestamps still tell it, without decoding.
            duration = self._duration_from_packets(target)
        if duration is None or not math.isfinite(duration) or duration <= 0:
            raise InputError(f"{target.name} has no audio duration ffmpeg can determine")
        size = _number(fmt.get("size"))
        return SourceInfo(
            duration_s=duration,
            format_name=str(fmt.get("format_name", "")),
            codec=str(stream.get("codec_name", "")),
            sample_rate=int(_number(stream.get("sample_rate")) or 0),
            channels=int(stream.get("channels") or 0),
            size_bytes=int(size) if size is not None else None,
        )

    def _duration_from_packets(self, target: FfmpegInput) -> float | None:
        cmd = [
            self.ffprobe, "-v", "error", "-hide_banner", *target.input_args(),
            "-select_streams", "a:0", "-show_entries", "packet=pts_time,duration_time",
            "-of", "csv=p=0",
        ]  # fmt: skip
        end: float | None = None
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            # One line per packet: read them as a stream, keep only the latest end time.
            for line in proc.stdout:
                fields = line.decode("ascii", "replace").strip().split(",")
                pts = _number(fields[0]) if fields else None
                length = _number(fields[1]) if len(fields) > 1 else None
                if pts is not None:
                    end = max(end or 0.0, pts + (length or 0.0))
        return end

    def read_samples(self, path: Path) -> npt.NDArray[np.int16]:
        """A window file's samples, 16 kHz mono s16 (windows are at most 30 minutes: 57.6 MB)."""
        target = FfmpegInput.parse(str(path))
        cmd = [
            self.ffmpeg,
            *QUIET_ARGS,
            *target.input_args(),
            *SELECT_ARGS,
            *RESAMPLE_ARGS,
            "-f",
            "s16le",
            "pipe:1",
        ]
        done = subprocess.run(cmd, capture_output=True, check=False)
        if done.returncode != 0:
            raise target.unreadable(target.scrub(_last_line(done.stderr.decode("utf-8", "replace"))))
        return np.frombuffer(done.stdout, dtype="<i2")

    def split(
        self,
        source: str,
        out_dir: Path,
        max_window_s: float,
        keep_samples: bool = False,
        skip_windows: int = 0,
    ) -> Iterator[WindowAudio]:
        """Cut the source into 16 kHz mono FLAC windows (``0000.flac``, ...) of at most
        ``max_window_s``, each ending in silence or at the quietest point near the limit, in one
        decode pass. Each window is yielded as soon as its file is complete; with
        ``keep_samples`` it also carries the samples that went into its FLAC.

        ``skip_windows``: the first windows are planned but neither encoded nor yielded (a split
        resumed after them). The decode still starts at the beginning: the planner's cuts depend
        on what it heard before them (its noise floor), so replaying is what makes the resumed
        windows the same as one unbroken pass would have cut, whatever the format's seeking."""
        if max_window_s < MIN_WINDOW_S:
            raise ValueError(f"max_window_s must be at least {MIN_WINDOW_S} s, got {max_window_s}")
        target = FfmpegInput.parse(source)
        out_dir = Path(out_dir).resolve()
        if target.path is not None and target.path.parent == out_dir:
            # A window re-split into its own directory would overwrite itself.
            raise ValueError(f"out_dir {out_dir} holds the source; split into another directory")
        info = self.probe(source)
        return self._split(target, out_dir, max_window_s, info, keep_samples, skip_windows)

    def _split(
        self,
        target: FfmpegInput,
        out_dir: Path,
        max_window_s: float,
        info: SourceInfo,
        keep: bool,
        skip: int,
    ) -> Iterator[WindowAudio]:
        decoders = self._decoders(target, info.sample_rate)
        last = decoders[-1]
        planner = WindowPlanner(max_window_s, SAMPLE_RATE)
        kept = planner.limit if keep else 0  # a window's longest, in samples
        encoder: _Encoder | None = None
        count = 0
        try:
            assert last.proc.stdout is not None
            for samples in _blocks(last.proc.stdout):
                for event in planner.feed(samples):
                    if isinstance(event, WindowCut):
                        count += 1
                        if encoder is not None:
                            yield encoder.finish(end_sample=event.at)
                            encoder = None
                    elif planner.index >= skip:
                        if encoder is None:
                            out_dir.mkdir(parents=True, exist_ok=True)
                            encoder = _Encoder(out_dir, planner.index, planner.start, kept)
                        encoder.write(event)
            for process in decoders:
                rc = process.proc.wait()
                if rc != 0:
                    detail = target.scrub(process.last_error()) or f"ffmpeg exited with {rc}"
                    raise InputError(f"{target.name} could not be decoded: {detail}")
            decoded_s = planner.position / SAMPLE_RATE
            trouble = decoders[0].last_error()
            # ffmpeg exits 0 when a download breaks off ("Stream ends prematurely"); a short
            # decode with an error logged is a truncated source, not a short recording.
            if trouble and decoded_s < 0.99 * info.duration_s - 1.0:
                raise InputError(
                    f"{target.name} could only be decoded up to {decoded_s:.0f} s of its "
                    f"{info.duration_s:.0f} s: {target.scrub(trouble)}"
                )
            rest = planner.flush()
            if len(rest) and planner.index >= skip:
                if encoder is None:
                    encoder = _Encoder(out_dir, planner.index, planner.start, kept)
                encoder.write(rest)
            if encoder is not None:
                yield encoder.finish(end_sample=planner.position)
                encoder = None
                count += 1
            elif planner.position > planner.start:
                count += 1  # the last window, skipped
            elif planner.position == 0:
                raise InputError(f"{target.name} holds no audio samples ffmpeg can decode")
            log.info(
                "split %s into %d windows (%.1f s)",
                target.name,
                count,
                planner.position / SAMPLE_RATE,
            )
        finally:
            for process in decoders:
                process.kill()
            if encoder is not None:
                encoder.abort()

    def _decoders(self, target: FfmpegInput, source_rate: int) -> list[_Process]:
        """The processes that turn the source into 16 kHz mono s16le on the last one's stdout.

        Resampling costs about a third of an MP3 decode, and one ffmpeg does both on one core.
        So a source at another rate is decoded (and downmixed) by one ffmpeg at its own rate and
        resampled by a second, which runs on the other core next to Python and its FLAC encoding.
        """
        source_args = [self.ffmpeg, *QUIET_ARGS, *target.input_args(), *SELECT_ARGS]
        if source_rate in (0, SAMPLE_RATE):
            return [_Process([*source_args, *RESAMPLE_ARGS, *RAW_ARGS, "pipe:1"])]
        decode = _Process([*source_args, "-ar", str(source_rate), *RAW_ARGS, "pipe:1"])
        assert decode.proc.stdout is not None
        try:
            resample = _Process(
                [self.ffmpeg, *QUIET_ARGS, "-f", "s16le", "-ar", str(source_rate), "-ac", "1",
                 "-i", "pipe:0", *RESAMPLE_ARGS, *RAW_ARGS, "pipe:1"],
                stdin=decode.proc.stdout,
                behind=True,
            )  # fmt: skip
        except BaseException:
            decode.kill()
            raise
        decode.proc.stdout.close()  # the resampler holds it now; EOF and SIGPIPE must reach it
        return [decode, resample]


class _Process:
    """A child ffmpeg whose stderr is drained by a thread, keeping its last lines."""

    def __init__(
        self, cmd: list[str], stdin: IO[bytes] | int = subprocess.DEVNULL, behind: bool = False
    ) -> None:
        """Run ``cmd`` with its stdout on a pipe. ``behind``: it runs downstream of the decoder,
        at a lower priority (DOWNSTREAM_NICE)."""
        log.debug("running %s", cmd)
        self.proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if behind:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, DOWNSTREAM_NICE)
        assert self.proc.stdout is not None
        _enlarge(self.proc.stdout)
        self._lines: deque[str] = deque(maxlen=20)
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self._lines.append(line)

    def last_error(self) -> str:
        self._drain.join(timeout=5)
        return self._lines[-1] if self._lines else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(OSError):
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()
        self._drain.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class _Encoder:
    """One window's FLAC file, written in this process by libFLAC (through soundfile) as samples
    arrive; renamed into place when complete.

    In process rather than a second ffmpeg: libFLAC encodes 30 minutes of 16 kHz mono in 0.27 s
    where ffmpeg's encoder took 0.5 s, with no pipe to copy through and no process per window, and
    soundfile's C calls release the GIL.
    """

    def __init__(self, out_dir: Path, index: int, start_sample: int, keep_within: int = 0) -> None:
        """``keep_within``: keep the window's samples too, in one buffer of that many samples (the
        window's longest), so handing them on costs no copy."""
        self.index = index
        self.start_sample = start_sample
        self.path = out_dir / f"{index:04d}.flac"
        self.part = out_dir / f".{index:04d}.flac.part"
        self._file = soundfile.SoundFile(
            self.part, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16", format="FLAC"
        )
        self._kept = np.empty(keep_within, np.int16) if keep_within else None
        self._written = 0

    def write(self, samples: npt.NDArray[np.int16]) -> None:
        self._file.write(samples)
        if self._kept is not None:  # the planner never passes its limit, the buffer's size
            self._kept[self._written : self._written + len(samples)] = samples
        self._written += len(samples)

    def finish(self, end_sample: int) -> WindowAudio:
        self._file.close()
        os.replace(self.part, self.path)
        window = WindowAudio(
            index=self.index,
            start_s=self.start_sample / SAMPLE_RATE,
            end_s=end_sample / SAMPLE_RATE,
            path=self.path,
            samples=None if self._kept is None else self._kept[: self._written],
        )
        log.debug("window %d: %.3f–%.3f s", window.index, window.start_s, window.end_s)
        return window

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        self.part.unlink(missing_ok=True)


def _blocks(pipe: IO[bytes]) -> Iterator[npt.NDArray[np.int16]]:
    """Samples from a raw s16le pipe, BLOCK_SAMPLES at a time (the last block may be shorter)."""
    carry = b""
    while True:
        data = pipe.read(BLOCK_SAMPLES * 2)
        if not data:
            return
        if carry:
            data = carry + data
        usable = len(data) - len(data) % 2
        carry = data[usable:]
        if usable:
            yield np.frombuffer(data[:usable], dtype="<i2").astype(np.int16, copy=False)


def _enlarge(pipe: IO[bytes]) -> None:
    f_setpipe_sz = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), f_setpipe_sz, PIPE_BYTES)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _number(value: object) -> float | None:
    if value is None:
        return None
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None
