"""Marker tones: how tests prove that each window carried the right slice of a recording.

A test recording interleaves generated speech with *markers*: marker ``k`` is a pure sine at
``marker_hz(k)`` lasting ``MARKER_S`` seconds, with silence on both sides. The stand-in vLLM server
(tests/standins/vllm_server.py) transcribes any audio it receives as the markers it hears, in order
(``"marker-3 marker-4"``). A window's transcript therefore names exactly the markers inside its
time range, and the stitched document must list every marker once, in order.

``LOOP_HZ`` is a trigger tone: audio containing it makes the stand-in answer with a repetition loop
unless the request carries a repetition or frequency penalty (Voxtral's known failure on music/noise).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
MARKER_S = 1.0
BASE_HZ = 400.0
STEP_HZ = 25.0
MAX_MARKERS = 200
LOOP_HZ = 7_000.0
AMPLITUDE = 0.5


def marker_hz(k: int) -> float:
    if not 0 <= k < MAX_MARKERS:
        raise ValueError(f"marker index {k} outside 0..{MAX_MARKERS - 1}")
    return BASE_HZ + STEP_HZ * k


def marker_samples(k: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 samples of marker ``k`` (a short fade avoids clicks that smear the spectrum)."""
    return _tone(marker_hz(k), MARKER_S, sample_rate)


def loop_trigger_samples(seconds: float = 2.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    return _tone(LOOP_HZ, seconds, sample_rate)


def _tone(hz: float, seconds: float, sample_rate: int) -> np.ndarray:
    n = int(seconds * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    tone = AMPLITUDE * np.sin(2 * np.pi * hz * t)
    fade = min(n // 10, int(0.02 * sample_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        tone[:fade] *= ramp
        tone[-fade:] *= ramp[::-1]
    return tone.astype(np.float32)


def detect(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[list[int], bool]:
    """Markers heard in ``samples`` (mono float), in order, and whether the loop trigger sounds.

    Frames of 0.5 s with a 0.25 s hop; a frame counts when one frequency holds most of its energy
    (speech and silence never do). Consecutive frames on the same marker are one occurrence.
    """
    frame = int(0.5 * sample_rate)
    hop = frame // 2
    found: list[int] = []
    loop = False
    last: int | None = None
    window = np.hanning(frame)
    freqs = np.fft.rfftfreq(frame, 1.0 / sample_rate)
    for start in range(0, max(0, len(samples) - frame + 1), hop):
        chunk = samples[start : start + frame].astype(np.float64)
        if float(np.sqrt(np.mean(chunk**2))) < 0.05:
            last = None
            continue
        spectrum = np.abs(np.fft.rfft(chunk * window)) ** 2
        peak = int(np.argmax(spectrum))
        lo, hi = max(0, peak - 6), peak + 7
        if spectrum[lo:hi].sum() < 0.8 * spectrum.sum():
            last = None
            continue
        hz = float(freqs[peak])
        if abs(hz - LOOP_HZ) < STEP_HZ / 2:
            loop = True
            last = None
            continue
        k = round((hz - BASE_HZ) / STEP_HZ)
        if 0 <= k < MAX_MARKERS and abs(hz - marker_hz(k)) < STEP_HZ / 3:
            if k != last:
                found.append(k)
            last = k
        else:
            last = None
    return found, loop


def words(markers: list[int]) -> str:
    return " ".join(f"marker-{k}" for k in markers)


def detect_spans(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, float, float]]:
    """Markers heard in ``samples`` with where they sound: ``(k, start_s, end_s)`` in order.

    The same frames as ``detect``; a marker's span runs from the first frame that hears it to the
    end of the last, so it holds the whole tone (frames overlap its edges by at most a hop)."""
    frame = int(0.5 * sample_rate)
    hop = frame // 2
    spans: list[tuple[int, float, float]] = []
    window = np.hanning(frame)
    freqs = np.fft.rfftfreq(frame, 1.0 / sample_rate)
    last: int | None = None
    for start in range(0, max(0, len(samples) - frame + 1), hop):
        chunk = samples[start : start + frame].astype(np.float64)
        k: int | None = None
        if float(np.sqrt(np.mean(chunk**2))) >= 0.05:
            spectrum = np.abs(np.fft.rfft(chunk * window)) ** 2
            peak = int(np.argmax(spectrum))
            lo, hi = max(0, peak - 6), peak + 7
            hz = float(freqs[peak])
            if spectrum[lo:hi].sum() >= 0.8 * spectrum.sum() and abs(hz - LOOP_HZ) >= STEP_HZ / 2:
                guess = round((hz - BASE_HZ) / STEP_HZ)
                if 0 <= guess < MAX_MARKERS and abs(hz - marker_hz(guess)) < STEP_HZ / 3:
                    k = guess
        t0, t1 = start / sample_rate, (start + frame) / sample_rate
        if k is not None and k == last:
            spans[-1] = (k, spans[-1][1], t1)
        elif k is not None:
            spans.append((k, t0, t1))
        last = k
    return spans
