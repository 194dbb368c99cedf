"""A stand-in for ``vllm serve mistralai/Voxtral-*`` that enforces what vLLM enforces.

It speaks vLLM's OpenAI-compatible API (``GET /v1/models``, ``POST /v1/audio/transcriptions``,
``POST /v1/chat/completions``) and refuses what a recent vLLM serving Voxtral refuses, with the same
status codes and messages (tests/realvllm compares them with the real server's): unknown model
(404), a response format other than json/text (400), a language that is not ISO 639-1 (400), an upload over
``VLLM_MAX_AUDIO_CLIP_FILESIZE_MB`` (400), audio longer than ``VLLM_MAX_AUDIO_DECODE_DURATION_S``
(400), a native decode over ``VLLM_MAX_AUDIO_DECODE_BYTES`` (400), a prompt over the 32k context (400;
a completion that would overrun it is cut short instead), a system message beside audio (400) and
more than ``max_audios`` audios in one chat request (400). tests/realvllm/test_refusals.py sends each
of these to the real vLLM too and compares status and body, so the messages here are vLLM 0.32's.

Audio is decoded for real (ffprobe + ffmpeg to 16 kHz mono float) and answered deterministically:

- transcription: ``tests.markers.words(markers heard)``, e.g. ``"marker-3 marker-4"`` (``""`` if none);
- chat with audio: ``"Summary of 1800 s: marker-3 marker-4. Prompt: <first 300 chars of the text>"``;
- text-only chat: ``"Overall: marker-3 marker-4. Prompt: <first 300 chars of the prompt>"`` where the
  markers are the distinct ``marker-N`` words found in the prompt, in order.

Audio holding the loop trigger tone is answered with a long repetition loop unless the request
carries ``frequency_penalty > 0``, ``presence_penalty > 0`` or ``repetition_penalty > 1``.

Fault injection: ``fail_every=N`` answers every Nth POST with 503 (``POST /faults`` with
``{"unavailable": true}``: every POST until switched off; it sets ``latency_s`` too),
``latency_s`` sleeps per request,
``error_200_every=N`` answers every Nth POST with an error body under status 200 (as some vLLM
versions do for undecodable uploads), ``hold_markers={k, ...}`` keeps every answer to audio holding
one of those markers until ``release()`` (``holding`` in the stats counts the answers waiting), so a
test decides when a window finishes instead of racing it. Transport faults, chosen by arrival order
from ``fault_seed`` (``--fault-seed``): ``drop_upload_every=N`` (``--drop-upload-every``) closes the
connection of one model POST in every N while its body is being read; ``hold_every=M``
(``--hold-every``) reads one in every M completely and never answers it (until the client goes
away). ``GET /stats`` returns request counts per endpoint, a log of every request (endpoint, status,
audio duration, markers, sampling parameters, message roles; ``?log=false`` leaves it out) and
``traffic``: peak requests in flight, the longest time with requests in flight and no answer, and
how many times each distinct request was received (class ``Traffic``). ``POST /stats/reset`` starts
the counts again.

``fast=True`` (``--fast``) measures audio from its WAV/FLAC header (ffprobe otherwise) without
decoding it: nothing is heard (no markers, no loops), answers name a digest of the audio
(``"speech 1a2b3c4d5e6f"``), and every cap and refusal is unchanged. For benchmarks whose CPU must go
to the workers, not to the stand-in.

``mode="mistral"`` speaks the hosted Mistral API's shapes instead: ``input_audio`` is a plain base64
string, a Bearer key is required, model ids are ``voxtral-*-latest`` and duration limits are the
hosted ones (15 min transcription, 20 min chat).

``profile="qwen2-audio"`` (``--profile``; any name in jobs/profiles.py) serves that model instead of
Voxtral, with the rules vLLM 0.32 applies to it (docs/models.md cites the source): no
``/v1/audio/transcriptions`` route for a model that does not implement ``SupportsTranscription``
(FastAPI's 404), at most the profile's ``items_per_prompt`` audios per chat (vLLM's
``--limit-mm-per-prompt`` refusal), items cut short where the model's processor truncates them
(Qwen2-Audio 30 s, Qwen2.5-Omni 300 s: the rest is not heard), system messages beside audio
accepted where the chat template takes them, the profile's context and audio tokens per second.
The default (no profile) is the Voxtral behaviour above, unchanged.

Run it as a process::

    .venv/bin/python -m tests.standins.vllm_server --port 8000 [--max-duration-s 600]
        [--max-file-mb 25] [--fail-every N] [--latency S] [--model NAME] [--mode vllm|mistral]

or in-process with ``with StandInVLLM(max_duration_s=2400) as server: server.url, server.stats()``.

``--gpu`` / ``StandInVLLM(gpu=True, gpu_time_scale=0.01)`` adds a modelled GPU with continuous
batching (section "GPU mode" below; the model is tests/standins/gpu_model.py); ``--gpu-cost-scale K``
multiplies its costs (a GPU K times slower, in wall seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import io
import json
import math
import re
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import wave
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from jobs.profiles import VOXTRAL_SMALL as VOXTRAL_SMALL_PROFILE
from jobs.profiles import ModelProfile, get_profile
from tests import markers
from tests.standins.gpu_model import BatchEngine, GpuFigures, GpuModel, GpuRequest

VOXTRAL_SMALL = "mistralai/Voxtral-Small-24B-2507"
MISTRAL_TRANSCRIBE_MODELS = ("voxtral-mini-latest", "voxtral-mini-2507", "voxtral-mini-2602")
MISTRAL_CHAT_MODELS = ("voxtral-small-latest", "voxtral-mini-latest", "voxtral-small-2507")
SAMPLE_RATE = 16_000
TOKENS_PER_CHUNK = 375  # 12.5 tokens/s x 30 s
CHUNK_S = 30.0
PROMPT_OVERHEAD_TOKENS = 6  # [INST] [BEGIN_AUDIO] ... [/INST] lang:xx [TRANSCRIBE]
ECHO_CHARS = 300
LOOP_WORDS = 1500

# mistral-common then validates `language` as ISO 639-1 (LanguageAlpha2, from pycountry): a 400.
NATIVE_LANGUAGES = frozenset(["ar", "nl", "en", "fr", "de", "hi", "it", "pt", "es"])
ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de
    dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id
    ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu
    lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu
    rm rn ro ru rw sa sc sd se sg sh si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to
    tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split()  # noqa: SIM905
)
INVALID_AUDIO = (
    "Invalid or corrupted audio data. Ensure the input is a valid audio or video file "
    "(e.g. a complete WAV, MP3, or MP4)."
)
# vLLM's validate_language runs first: it takes Voxtral's nine and (with a warning) Whisper's other codes.
WHISPER_LANGUAGES = NATIVE_LANGUAGES | frozenset(
    """af am as az ba be bg bn bo br bs ca cs cy da el et eu fa fi fo gl gu ha haw he hr ht hu hy
    id is ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nn no oc pa pl ps
    ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo yue zh""".split()  # noqa: SIM905
)
MIB = 1024 * 1024
MARKER_WORD = re.compile(r"\bmarker-\d+\b")


@dataclass
class ServerConfig:
    """Limits and faults of one stand-in; defaults are a recent vLLM's."""

    model: str = VOXTRAL_SMALL
    mode: Literal["vllm", "mistral"] = "vllm"
    api_key: str | None = None
    max_model_len: int = 32_768
    max_file_mb: float = 25.0  # VLLM_MAX_AUDIO_CLIP_FILESIZE_MB
    max_duration_s: float = 600.0  # VLLM_MAX_AUDIO_DECODE_DURATION_S
    max_decode_bytes: int = 256 * 1024 * 1024  # VLLM_MAX_AUDIO_DECODE_BYTES
    max_audios: int = 5
    mistral_transcribe_max_s: float = 900.0
    mistral_chat_max_s: float = 1200.0
    fail_every: int = 0
    unavailable: bool = False  # every POST answers 503 while set (POST /faults toggles it at run time)
    error_200_every: int = 0
    latency_s: float = 0.0
    hold_markers: frozenset[int] = frozenset()  # answers hearing one of these wait for release()
    profile: str | None = None  # a jobs/profiles.py name: that model's rules instead of Voxtral's
    # Fast mode: audio is measured (WAV/FLAC headers, ffprobe otherwise) but not decoded; nothing
    # is heard (no markers), and answers name a digest of the audio instead. Caps unchanged.
    fast: bool = False
    # Transport faults, chosen from ``fault_seed`` by arrival order: in every block of N model
    # POSTs exactly one is dropped mid-body (the connection closed while the body is read), and in
    # every block of M one is never answered (held until the client goes away).
    drop_upload_every: int = 0
    hold_every: int = 0
    fault_seed: int = 0

    def __post_init__(self) -> None:
        served = self.model_profile()
        if served is not None:
            if self.model == VOXTRAL_SMALL:
                self.model = served.repos[0]
            self.max_model_len = served.context_tokens
            self.max_audios = served.items_per_prompt

    def model_profile(self) -> ModelProfile | None:
        return get_profile(self.profile) if self.profile else None


class APIError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param


@dataclass(frozen=True)
class Heard:
    """What the stand-in 'hears' in one audio item."""

    duration_s: float
    markers: list[int]
    loop: bool
    tag: str | None = None  # fast mode: a digest of the audio, named in the answers


@dataclass
class ServerState:
    config: ServerConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    posts: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    holding: int = 0  # answers held (config.hold_markers) and not yet recorded
    held: int = 0  # answers ever held
    traffic: Traffic | None = None

    def __post_init__(self) -> None:
        c = self.config
        self.traffic = Traffic(c.drop_upload_every, c.hold_every, c.fault_seed)

    def next_post(self) -> int:
        with self.lock:
            self.posts += 1
            return self.posts

    def watch(self, gone: threading.Event) -> None:
        """The calling thread's request is abandoned when ``gone`` is set (GPU mode only)."""

    def wake(self) -> None:
        """A ``gone`` was set: let the threads waiting on the GPU look (GPU mode only)."""

    def hold(self, entry: dict[str, Any]) -> None:
        """Wait for ``released`` when the audio answered holds one of ``config.hold_markers``."""
        if not set(entry.get("markers") or ()) & self.config.hold_markers:
            return
        with self.lock:
            self.holding += 1
            self.held += 1
        entry["held"] = True
        self.released.wait()

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            if entry.get("held"):
                self.holding -= 1
            name = entry["endpoint"]
            self.counts[name] = self.counts.get(name, 0) + 1
            self.log.append(entry)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            snap: dict[str, Any] = {
                "counts": dict(self.counts),
                "posts": self.posts,
                "log": [dict(e) for e in self.log],
                "holding": self.holding,
                "held": self.held,
            }
        if self.traffic is not None:
            snap["traffic"] = self.traffic.report()
        return snap

    def reset(self) -> None:
        with self.lock:
            self.posts = 0
            self.counts.clear()
            self.log.clear()
        if self.traffic is not None:
            self.traffic.reset()


MODEL_ROUTES = ("/v1/audio/transcriptions", "/v1/chat/completions")
KEY_PREFIX_BYTES = 64 * 1024


class Traffic:
    """What the clients do to the server, seen at the HTTP level (``/stats``' ``traffic``), and the
    transport faults (``drop_upload_every``, ``hold_every``).

    A model POST is *in flight* from its request line until its answer is sent or its connection
    ends. ``longest_gap_s`` is the longest time with requests in flight and no answer sent (the
    server's silence: a wedged client pool or a lost request shows here; the current gap counts);
    ``longest_gap_at_s`` is when it began and ended, in seconds since the last reset.
    ``sends`` counts each distinct request by the digest of its whole body (multipart boundary
    removed). A request dropped mid-body was never read whole: it is known by the digest of its
    declared length and first ``min(64 KiB, length / 2)`` bytes, and counted as a send of the
    complete request with the same beginning (the least-sent one when several share it:
    ``ambiguous_drops``), so ``max_sends`` counts every attempt. ``most_sent`` gives, for the few
    requests sent most, what became of each of their arrivals (``drop``, ``hold``, ``answered``,
    ``left``: the client went away before an answer) and when, so a count can be traced.
    """

    def __init__(self, drop_every: int = 0, hold_every: int = 0, seed: int = 0) -> None:
        self.drop_every, self.hold_every, self.seed = drop_every, hold_every, seed
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.arrivals = 0
            self.in_flight = 0
            self.peak_in_flight = 0
            self.mark = 0.0  # when the current wait for an answer began
            self.longest_gap_s = 0.0
            self.longest_gap_at = (0.0, 0.0)  # its start and end, seconds since the reset
            # What the longest silence was made of: the requests out when it began (per route),
            # those that arrived during it, and the route whose answer ended it.
            self.longest_gap_what: dict[str, Any] = {}
            self.in_flight_by_route: dict[str, int] = {}
            self.out_at_mark: dict[str, int] = {}
            self.arrived_since_mark: dict[str, int] = {}
            self.answers = 0
            self.dropped = 0
            self.held = 0
            self.holding = 0
            self.sends: dict[str, int] = {}  # whole-body key -> complete receipts
            self.beginnings: dict[str, set[str]] = {}  # beginning key -> whole-body keys
            self.dropped_beginnings: dict[str, int] = {}
            self.fates: dict[str, list[tuple[float, str]]] = {}  # beginning key -> (t, fate)
            self.started = time.monotonic()

    def _chosen(self, n: int, every: int, salt: str) -> bool:
        # Exactly one arrival in each block of ``every``, at a position drawn from the seed.
        if every <= 0:
            return False
        block, pos = divmod(n - 1, every)
        digest = hashlib.sha256(f"{self.seed}:{salt}:{block}".encode()).digest()
        return pos == int.from_bytes(digest[:8], "big") % every

    def _mark(self, now: float) -> None:
        self.mark = now
        self.out_at_mark = {r: n for r, n in self.in_flight_by_route.items() if n}
        self.arrived_since_mark = {}

    def arrive(self, route: str = "") -> str | None:
        """A model POST began; returns the fault chosen for it ("drop", "hold" or None)."""
        now = time.monotonic()
        with self.lock:
            self.arrivals += 1
            n = self.arrivals
            if self.in_flight == 0:
                self._mark(now)
            self.in_flight += 1
            self.in_flight_by_route[route] = self.in_flight_by_route.get(route, 0) + 1
            self.arrived_since_mark[route] = self.arrived_since_mark.get(route, 0) + 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if self._chosen(n, self.drop_every, "drop"):
            return "drop"
        if self._chosen(n, self.hold_every, "hold"):
            return "hold"
        return None

    def sent(self, key: str, beginning: str) -> None:
        with self.lock:
            self.sends[key] = self.sends.get(key, 0) + 1
            self.beginnings.setdefault(beginning, set()).add(key)

    def dropped_at(self, beginning: str) -> None:
        with self.lock:
            self.dropped += 1
            self.dropped_beginnings[beginning] = self.dropped_beginnings.get(beginning, 0) + 1

    def _attempts(self) -> tuple[dict[str, int], int, int]:
        """Sends per whole-body key with the drops attributed; drops matching several requests,
        and drops whose request never arrived whole."""
        counts = dict(self.sends)
        ambiguous = unmatched = 0
        for beginning, n in self.dropped_beginnings.items():
            keys = self.beginnings.get(beginning)
            if not keys:
                unmatched += n
                counts[f"dropped:{beginning}"] = n
                continue
            ambiguous += n if len(keys) > 1 else 0
            least = min(keys, key=lambda k: counts[k])
            counts[least] += n
        return counts, ambiguous, unmatched

    def _gap_ends(self, now: float, ended_by: str) -> None:
        if now - self.mark > self.longest_gap_s:
            self.longest_gap_s = now - self.mark
            self.longest_gap_at = (self.mark - self.started, now - self.started)
            self.longest_gap_what = {**self._gap_what(), "ended_by": ended_by}

    def _gap_what(self) -> dict[str, Any]:
        """The current gap: the requests out when it began, and those that arrived since."""
        return {"out_at_start": dict(self.out_at_mark), "arrived_during": dict(self.arrived_since_mark)}

    def answer(self, route: str = "") -> None:
        now = time.monotonic()
        with self.lock:
            self.answers += 1
            self._gap_ends(now, f"an answer to {route}")
            self._mark(now)

    def leave(
        self, answered: bool, beginning: str | None = None, fault: str | None = None, route: str = ""
    ) -> None:
        now = time.monotonic()
        with self.lock:
            if not answered:
                self._gap_ends(now, f"{route} left unanswered ({fault or 'client gone'})")
            self.in_flight -= 1
            self.in_flight_by_route[route] = self.in_flight_by_route.get(route, 1) - 1
            if beginning is not None:
                fate = fault or ("answered" if answered else "left")
                self.fates.setdefault(beginning, []).append((round(now - self.started, 1), fate))

    def _most_sent(self, attempts: dict[str, int], n: int = 3) -> list[dict[str, Any]]:
        top = sorted(attempts.items(), key=lambda item: -item[1])[:n]
        out = []
        for key, sends in top:
            if sends < 2:
                break
            beginning = key.removeprefix("dropped:")
            for begin, keys in self.beginnings.items():
                if key in keys:
                    beginning = begin
                    break
            out.append({"sends": sends, "fates": self.fates.get(beginning, [])})
        return out

    def report(self) -> dict[str, Any]:
        now = time.monotonic()
        with self.lock:
            gap, gap_at, what = self.longest_gap_s, self.longest_gap_at, self.longest_gap_what
            if self.in_flight and now - self.mark > gap:
                gap, gap_at = now - self.mark, (self.mark - self.started, now - self.started)
                what = self._gap_what()
            attempts, ambiguous, unmatched = self._attempts()
            counts = list(attempts.values())
            return {
                "arrivals": self.arrivals,
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "answers": self.answers,
                "longest_gap_s": round(gap, 3),
                "longest_gap_at_s": [round(t, 1) for t in gap_at],
                "longest_gap_what": what,
                "dropped": self.dropped,
                "held": self.held,
                "holding": self.holding,
                "ambiguous_drops": ambiguous,
                "unmatched_drops": unmatched,
                "distinct_requests": len(counts),
                "max_sends": max(counts, default=0),
                "sends_histogram": {str(k): counts.count(k) for k in sorted(set(counts))},
                "most_sent": self._most_sent(attempts),
            }

    @staticmethod
    def key(prefix: bytes, length: int | None, boundary: bytes | None) -> str:
        if boundary:
            prefix = prefix.replace(boundary, b"")
        return hashlib.sha1(f"{length}:".encode() + prefix).hexdigest()


def _boundary(headers: dict[bytes, bytes]) -> bytes | None:
    found = re.search(rb"boundary=\"?([^\";]+)", headers.get(b"content-type", b""))
    return found.group(1) if found else None


class _Watched:
    """ASGI wrapper: every model POST is counted by ``Traffic`` and may get a transport fault."""

    def __init__(self, app: Any, traffic: Traffic) -> None:
        self.app = app
        self.traffic = traffic

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in MODEL_ROUTES:
            await self.app(scope, receive, send)
            return
        traffic = self.traffic
        route = scope["path"]
        fault = traffic.arrive(route)
        answered = False
        beginning: str | None = None
        try:
            headers = dict(scope["headers"])
            raw_length = headers.get(b"content-length")
            length = int(raw_length) if raw_length and raw_length.isdigit() else None
            want = min(KEY_PREFIX_BYTES, length // 2) if length else KEY_PREFIX_BYTES
            buffered: list[dict[str, Any]] = []
            prefix = bytearray()
            more = True
            while more and len(prefix) < max(1, want):
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                buffered.append(message)
                prefix += message.get("body", b"")
                more = bool(message.get("more_body", False))
            boundary = _boundary(headers)
            beginning = Traffic.key(bytes(prefix[:want]), length, boundary)
            if fault == "drop":
                transport = getattr(getattr(receive, "__self__", None), "transport", None)
                if transport is not None:
                    traffic.dropped_at(beginning)
                    transport.abort()  # the connection closes in the middle of the body
                    return
                fault = "hold"  # a server without a transport to close: never answer instead
            body = bytearray(prefix)

            def received(complete: bool) -> None:
                if complete:
                    traffic.sent(Traffic.key(bytes(body), length, boundary), beginning)

            if not more:
                received(True)
            if fault == "hold":
                with traffic.lock:
                    traffic.held += 1
                    traffic.holding += 1
                try:
                    while True:  # the rest of the body, then nothing until the client goes away
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            break
                        if more:
                            body.extend(message.get("body", b""))
                            more = bool(message.get("more_body", False))
                            received(not more)
                finally:
                    with traffic.lock:
                        traffic.holding -= 1
                return

            async def replay() -> Any:
                nonlocal more
                if buffered:
                    return buffered.pop(0)
                message = await receive()
                if more and message["type"] == "http.request":
                    body.extend(message.get("body", b""))
                    more = bool(message.get("more_body", False))
                    received(not more)
                return message

            gone = False

            async def watch(message: Any) -> None:
                nonlocal answered, gone
                if message["type"] == "http.response.start" and message.get("status") == CLIENT_GONE:
                    gone = True  # nobody is there to answer
                if gone:
                    return
                if message["type"] == "http.response.start" and not answered:
                    answered = True
                    traffic.answer(route)
                await send(message)

            await self.app(scope, replay, watch)
        finally:
            traffic.leave(answered, beginning, fault, route)


# --- audio ---------------------------------------------------------------------------------


def hear(data: bytes, config: ServerConfig, max_duration_s: float, keep_s: float | None = None) -> Heard:
    """Check an audio item against the caps, decode it to 16 kHz mono and detect its markers
    (only in its first ``keep_s`` seconds when the model's processor truncates items)."""
    size_mb = len(data) / MIB
    if len(data) > int(config.max_file_mb * MIB):
        # vLLM's VLLMValidationError renders its parameter and value after the message.
        raise APIError(
            400,
            f"Maximum file size exceeded (parameter=audio_filesize_mb, value={size_mb})",
            param="audio_filesize_mb",
        )
    with tempfile.NamedTemporaryFile(suffix=".audio") as tmp:
        tmp.write(data)
        tmp.flush()
        pcm = _pcm16_mono_wav(data)  # numpy over the bytes: no decoding to skip
        measured = _header_duration(data) if config.fast and pcm is None else None
        if measured is not None:
            duration_s, native_rate, channels, container = measured
        elif pcm is not None:  # what voxbatch sends as segments: read without two subprocesses
            duration_s, native_rate, channels, container = len(pcm) / SAMPLE_RATE, SAMPLE_RATE, 1, "wav"
        else:
            duration_s, native_rate, channels, container = _probe(Path(tmp.name))
        if duration_s > max_duration_s:
            if config.mode == "mistral":
                raise APIError(
                    400,
                    f"Audio duration {duration_s:.0f}s exceeds the maximum allowed duration "
                    f"of {max_duration_s:.0f}s for this model.",
                    kind="invalid_request_error",
                )
            # vLLM reads WAV/FLAC/OGG/MP3 with soundfile (which knows the frame count) and the
            # rest with PyAV (which reads the container's metadata).
            seen = (
                f"file contains {duration_s:.1f}s at {native_rate}Hz"
                if container in SOUNDFILE_FORMATS
                else f"metadata reports {duration_s:.1f}s"
            )
            raise APIError(
                400,
                f"Audio exceeds maximum allowed duration of {max_duration_s:g}s ({seen}). "
                "Set VLLM_MAX_AUDIO_DECODE_DURATION_S to increase this limit.",
            )
        frames = int(duration_s * native_rate)
        decode_bytes = frames * channels * 4
        if decode_bytes > config.max_decode_bytes:
            raise APIError(
                400,
                f"Audio would allocate {decode_bytes / MIB:.0f} MiB of PCM ({frames} frames x "
                f"{channels} channels x 4B), exceeding the {config.max_decode_bytes / MIB:.0f} MiB "
                "limit. Set VLLM_MAX_AUDIO_DECODE_BYTES to increase this limit.",
            )
        if config.fast:
            kept = duration_s if keep_s is None else min(duration_s, keep_s)
            return Heard(duration_s=kept, markers=[], loop=False, tag=hashlib.sha1(data).hexdigest()[:12])
        samples = pcm if pcm is not None else _decode(Path(tmp.name))
    if keep_s is not None:
        samples = samples[: int(keep_s * SAMPLE_RATE)]
    found, loop = markers.detect(samples, SAMPLE_RATE)
    return Heard(duration_s=len(samples) / SAMPLE_RATE, markers=found, loop=loop)


SOUNDFILE_FORMATS = ("wav", "flac", "ogg", "mp3")  # libsndfile reads MP3 too


def _header_duration(data: bytes) -> tuple[float, int, int, str] | None:
    """Duration, rate, channels and container of WAV or FLAC audio from its header (fast mode);
    None for anything else, which ffprobe measures."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(data), "rb") as w:
                frames = len(w.readframes(w.getnframes())) // (w.getsampwidth() * w.getnchannels())
                return frames / w.getframerate(), w.getframerate(), w.getnchannels(), "wav"
        except (wave.Error, EOFError):
            return None
    if data[:4] == b"fLaC":
        import soundfile

        try:
            info = soundfile.info(io.BytesIO(data))
        except (RuntimeError, soundfile.LibsndfileError):
            return None
        return info.frames / info.samplerate, info.samplerate, info.channels, "flac"
    return None


def _pcm16_mono_wav(data: bytes) -> np.ndarray | None:
    """16 kHz mono 16-bit PCM WAV as float samples; None for anything else (ffmpeg decodes it)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
                return None
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError):
        return None
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0


def _probe(path: Path) -> tuple[float, int, int, str]:
    proc = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=sample_rate,channels,duration:format=duration,format_name",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        check=False,
    )
    try:
        info = json.loads(proc.stdout)
        stream = info["streams"][0]
        duration = float(stream.get("duration") or info["format"]["duration"])
        container = str(info["format"].get("format_name", "")).split(",")[0]
        return duration, int(stream["sample_rate"]), int(stream["channels"]), container
    except (ValueError, KeyError, IndexError) as exc:
        raise APIError(400, INVALID_AUDIO) from exc


def _decode(path: Path) -> np.ndarray:
    proc = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(path),
            "-f",
            "f32le",
            "-ac",
            "1",
            "-ar",
            str(SAMPLE_RATE),
            "pipe:1",
        ],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise APIError(400, INVALID_AUDIO)
    return np.frombuffer(proc.stdout, dtype=np.float32)


def audio_tokens(duration_s: float) -> int:
    """Voxtral pads audio to the next 30-s chunk and spends 375 tokens per chunk."""
    return max(1, math.ceil(duration_s / CHUNK_S)) * TOKENS_PER_CHUNK


def _item_tokens(config: ServerConfig, duration_s: float) -> int:
    served = config.model_profile()
    return served.audio_tokens(duration_s) if served else audio_tokens(duration_s)


def _kept_s(config: ServerConfig) -> float | None:
    """How much of each chat audio item the model's processor keeps (None: all of it)."""
    served = config.model_profile()
    return served.max_item_s if served is not None and served.truncates_items else None


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _penalized(params: dict[str, Any]) -> bool:
    return (
        float(params.get("frequency_penalty") or 0) > 0
        or float(params.get("presence_penalty") or 0) > 0
        or float(params.get("repetition_penalty") or 1) > 1
    )


def _loop_text(prefix: str, max_tokens: int) -> str:
    n = max(1, min(LOOP_WORDS, max_tokens - len(prefix.split())))
    return (prefix + " " + " ".join(["the"] * n)).strip()


def _check_context(config: ServerConfig, prompt_tokens: int, max_tokens: int | None) -> int:
    """A prompt over the context is refused; a completion that would overrun it is cut (vLLM 0.32
    takes the smallest of max_tokens and the room left instead of refusing)."""
    limit = config.max_model_len
    if prompt_tokens > limit:
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"contains {prompt_tokens} input tokens, which exceeds this limit even without any "
            "output tokens. Please reduce the length of the input prompt. "
            f"(parameter=input_tokens, value={prompt_tokens})",
            param="input_tokens",
        )
    room = limit - prompt_tokens
    return room if max_tokens is None else min(max_tokens, room)


# --- handlers ------------------------------------------------------------------------------


def _check_model(config: ServerConfig, model: str | None, allowed: tuple[str, ...]) -> str:
    if model is None or model == "":
        if config.mode == "mistral":
            raise APIError(400, "model is required", kind="invalid_request_error")
        return config.model
    if model not in allowed:
        if config.mode == "mistral":
            raise APIError(404, f"The model `{model}` does not exist.", kind="NotFoundError")
        aliases = ", ".join(allowed)
        raise APIError(
            404,
            f"The model `{model}` does not exist. Valid aliases: {aliases}.",
            kind="NotFoundError",
            param="model",
        )
    return model


def _opt_float(params: dict[str, Any], name: str) -> float | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise APIError(400, f"{name}: Input should be a valid number", param=name) from exc


def _opt_int(params: dict[str, Any], name: str) -> int | None:
    value = _opt_float(params, name)
    if value is None:
        return None
    if value != int(value) or value < 1:
        raise APIError(400, f"{name}: Input should be a positive integer", param=name)
    return int(value)


def transcribe(
    config: ServerConfig, params: dict[str, Any], data: bytes, entry: dict[str, Any]
) -> tuple[str, str, Heard]:
    allowed = MISTRAL_TRANSCRIBE_MODELS if config.mode == "mistral" else (config.model,)
    model = _check_model(config, params.get("model"), allowed)
    entry.update(
        model=model,
        language=params.get("language"),
        response_format=params.get("response_format") or "json",
    )
    for name in ("temperature", "frequency_penalty", "presence_penalty", "repetition_penalty"):
        entry[name] = _opt_float(params, name)
    language = params.get("language") or None
    if language is not None and language not in WHISPER_LANGUAGES:
        native = ["ar", "nl", "en", "fr", "de", "hi", "it", "pt", "es"]
        raise APIError(400, f"Unsupported language: {language!r}.  Must be one of {native}.")
    if language is not None and language not in ISO_639_1:
        # Then mistral-common's request model: pydantic's LanguageAlpha2 error.
        raise APIError(
            400,
            "1 validation error for TranscriptionRequest\nlanguage\n  Invalid language alpha2 code "
            f"[type=language_alpha2, input_value={language!r}, input_type=str]",
        )
    response_format = entry["response_format"]
    if config.mode == "vllm":
        if response_format == "verbose_json":
            raise APIError(400, f"Currently do not support verbose_json for {model}")
        if response_format not in ("json", "text"):
            raise APIError(
                400,
                "Currently only support response_format: `text`, `json`, `verbose_json` or `diarized_json`",
            )
    max_tokens = _opt_int(params, "max_completion_tokens")
    entry["max_tokens"] = max_tokens
    cap = config.mistral_transcribe_max_s if config.mode == "mistral" else config.max_duration_s
    heard = hear(data, config, cap)
    entry.update(duration_s=heard.duration_s, markers=heard.markers, loop=heard.loop)
    prompt_tokens = _item_tokens(config, heard.duration_s) + PROMPT_OVERHEAD_TOKENS
    budget = _check_context(config, prompt_tokens, max_tokens)
    text = markers.words(heard.markers) if heard.tag is None else f"speech {heard.tag}"
    if heard.loop and not _penalized(params):
        text = _loop_text(text, budget)
    return text, response_format, heard


def _audio_bytes(config: ServerConfig, part: dict[str, Any]) -> bytes:
    kind = part.get("type")
    if kind == "input_audio":
        payload = part.get("input_audio")
        if config.mode == "mistral":
            if not isinstance(payload, str):
                raise APIError(
                    422, "input_audio must be a base64 string or a URL", kind="invalid_request_error"
                )
            b64 = payload
        else:
            if not isinstance(payload, dict) or "data" not in payload:
                raise APIError(400, "input_audio must be an object with `data` and `format`")
            b64 = payload["data"]
    elif kind == "audio_url":
        url = str((part.get("audio_url") or {}).get("url", ""))
        if not url.startswith("data:"):
            raise APIError(400, "The stand-in only accepts data: URLs for audio_url.")
        b64 = url.split(",", 1)[-1]
    else:
        raise APIError(400, f"Unknown content part type: {kind}")
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, "Invalid base64 audio data.") from exc


def chat(config: ServerConfig, body: dict[str, Any], entry: dict[str, Any]) -> tuple[str, str, int]:
    allowed = MISTRAL_CHAT_MODELS if config.mode == "mistral" else (config.model,)
    model = _check_model(config, body.get("model"), allowed)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages: Field required", param="messages")
    roles = [str(m.get("role")) for m in messages if isinstance(m, dict)]
    entry.update(model=model, roles=roles)
    for name in (
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
    ):
        entry[name] = _opt_float(body, name)
    texts: list[str] = []
    audio_parts: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                audio_parts.append(part)
    # mistral-common's v7 tokenizer: no system message beside audio in a user turn.
    with_audio = [
        i
        for i, m in enumerate(messages)
        if m.get("role") == "user"
        and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") != "text" for p in m["content"])
    ]
    systems = [i for i, m in enumerate(messages) if m.get("role") == "system"]
    served = config.model_profile()
    if with_audio and systems and (served is None or not served.system_with_audio):
        raise APIError(
            400,
            f"Found system messages at indexes {systems} and audio chunks in messages at indexes "
            f"{with_audio}. This is not allowed prior to the tokenizer version 13.",
        )
    if len(audio_parts) > config.max_audios:
        # vLLM's rule (multimodal/processing/context.py): the hint to raise the limit only when
        # the model itself would take that many (Voxtral's own limit is 5; most models have none).
        supported = (served or VOXTRAL_SMALL_PROFILE).vllm_item_limit
        hint = (
            " Set `--limit-mm-per-prompt` to increase this limit."
            if supported and len(audio_parts) <= supported
            else ""
        )
        raise APIError(
            400,
            f"At most {config.max_audios} audio(s) may be provided in one prompt.{hint} (parameter=audio)",
            param="audio",
        )
    max_tokens = _opt_int(body, "max_completion_tokens") or _opt_int(body, "max_tokens")
    entry["max_tokens"] = max_tokens
    prompt = "\n".join(texts)
    entry["prompt"] = prompt
    cap = config.mistral_chat_max_s if config.mode == "mistral" else config.max_duration_s
    heard = [hear(_audio_bytes(config, p), config, cap, _kept_s(config)) for p in audio_parts]
    entry.update(
        duration_s=sum(h.duration_s for h in heard),
        markers=[k for h in heard for k in h.markers],
        loop=any(h.loop for h in heard),
        audios=len(heard),
    )
    prompt_tokens = (
        sum(_item_tokens(config, h.duration_s) for h in heard)
        + text_tokens(prompt)
        + PROMPT_OVERHEAD_TOKENS * len(messages)
    )
    budget = _check_context(config, prompt_tokens, max_tokens)
    echo = prompt[:ECHO_CHARS]
    if heard:
        tags = " ".join(h.tag for h in heard if h.tag)
        heard_words = markers.words(entry["markers"]) or (f"speech {tags}" if tags else "no markers")
        answer = f"Summary of {entry['duration_s']:.0f} s: {heard_words}. Prompt: {echo}"
        if entry["loop"] and not _penalized(body):
            answer = _loop_text(f"Summary of {entry['duration_s']:.0f} s:", budget)
    else:
        found = list(dict.fromkeys(MARKER_WORD.findall(prompt)))
        answer = f"Overall: {' '.join(found) or 'no markers'}. Prompt: {echo}"
    finish = "length" if len(answer.split()) >= budget else "stop"
    return answer, finish, prompt_tokens


# --- app -----------------------------------------------------------------------------------


def _error_body(config: ServerConfig, err: APIError) -> dict[str, Any]:
    if config.mode == "mistral":
        return {
            "object": "error",
            "message": err.message,
            "type": err.kind,
            "param": err.param,
            "code": None,
        }
    return {
        "error": {
            "message": err.message,
            "type": err.kind,
            "param": err.param,
            "code": err.status,
        }
    }


# The status nginx logs for a client that closed its request before the answer (never sent: the
# client is gone).
CLIENT_GONE = 499


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body is read whole before this is awaited)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="stand-in vLLM (Voxtral)")
    config = state.config

    def authorized(request: Request) -> bool:
        if config.api_key is None:
            return True
        return request.headers.get("authorization") == f"Bearer {config.api_key}"

    def unauthorized() -> Response:
        if config.mode == "mistral":
            return JSONResponse({"message": "Unauthorized", "request_id": "standin"}, 401)
        return JSONResponse({"error": "Unauthorized"}, 401)

    def injected_fault(endpoint: str) -> Response | None:
        n = state.next_post()
        if config.latency_s:
            time.sleep(config.latency_s)
        if config.unavailable or (config.fail_every and n % config.fail_every == 0):
            state.record({"endpoint": endpoint, "status": 503, "injected": True})
            err = APIError(503, "Service temporarily unavailable.", kind="ServiceUnavailableError")
            return JSONResponse(_error_body(config, err), 503)
        if config.error_200_every and n % config.error_200_every == 0:
            state.record({"endpoint": endpoint, "status": 200, "injected": True})
            return JSONResponse(
                {
                    "object": "error",
                    "message": "Format not recognised.",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                },
                200,
            )
        return None

    @app.get("/v1/models")
    def models(request: Request) -> Response:
        if not authorized(request):
            return unauthorized()
        ids = (
            sorted(set(MISTRAL_TRANSCRIBE_MODELS + MISTRAL_CHAT_MODELS))
            if config.mode == "mistral"
            else [config.model]
        )
        data = [
            {
                "id": i,
                "object": "model",
                "created": 0,
                "owned_by": "vllm",
                "max_model_len": config.max_model_len,
            }
            for i in ids
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/stats")
    def stats(log: bool = True) -> Response:
        snap = state.snapshot()
        if not log:
            snap.pop("log", None)
        return JSONResponse(snap)

    @app.post("/stats/reset")
    def reset_stats() -> Response:
        state.reset()
        return JSONResponse({"reset": True})

    @app.post("/faults")
    async def faults(request: Request) -> Response:
        # Faults switched at run time (bench/soak.py): {"unavailable": true, "latency_s": 0.5}.
        body = await request.json()
        if "unavailable" in body:
            config.unavailable = bool(body["unavailable"])
        if "latency_s" in body:
            config.latency_s = float(body["latency_s"])
        return JSONResponse({"unavailable": config.unavailable, "latency_s": config.latency_s})

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        # Read the whole body before refusing anything: closing early would look like a network
        # failure to the client instead of the 400 vLLM answers.
        served = config.model_profile()
        if served is not None and not served.transcription_endpoint:
            # vLLM registers the route only for SupportsTranscription models: FastAPI's 404.
            state.record({"endpoint": "transcriptions", "status": 404, "error": "Not Found"})
            return JSONResponse({"detail": "Not Found"}, 404)
        form = await request.form()
        if not authorized(request):
            return unauthorized()
        upload = form.get("file")
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        data = await upload.read() if isinstance(upload, UploadFile) else None
        await form.close()
        return await answered_unless_gone(request, _transcribe_sync, params, data)

    async def answered_unless_gone(request: Request, fn: Any, *args: Any) -> Response:
        """``fn(*args, gone)`` in a thread. In GPU mode a client that goes away first sets
        ``gone``: its request leaves the modelled GPU (vLLM's ``with_cancellation`` aborts a
        request whose client disconnected) and the answer is not counted as one."""
        gone = threading.Event()
        if getattr(state, "gpu", None) is None:
            return await run_in_threadpool(fn, *args, gone)  # type: ignore[no-any-return]
        work = asyncio.ensure_future(run_in_threadpool(fn, *args, gone))
        listener = asyncio.ensure_future(_client_gone(request))
        await asyncio.wait({work, listener}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            gone.set()
            state.wake()
        listener.cancel()
        answer: Response = await work
        return Response(status_code=CLIENT_GONE) if gone.is_set() else answer

    def _transcribe_sync(params: dict[str, Any], data: bytes | None, gone: threading.Event) -> Response:
        endpoint = "transcriptions"
        state.watch(gone)
        fault = injected_fault(endpoint)
        if fault is not None:
            return fault
        entry: dict[str, Any] = {"endpoint": endpoint}
        try:
            if data is None:
                fields = len(params) if params else 0
                raise APIError(
                    400,
                    "1 validation error:\n  {'type': 'missing', 'loc': 'body.file', 'msg': 'Field required', "
                    f"'input': '<dict of {fields} items>'}}",
                    kind="Bad Request",
                    param="body.file",
                )
            entry["upload_bytes"] = len(data)
            text, response_format, heard = transcribe(config, params, data, entry)
        except APIError as err:
            entry.update(status=err.status, error=err.message)
            state.record(entry)
            return JSONResponse(_error_body(config, err), err.status)
        entry.update(status=200, text_words=len(text.split()))
        state.hold(entry)
        state.record(entry)
        if response_format == "text" and config.mode == "mistral":
            return PlainTextResponse(text)  # vLLM answers JSON even for response_format=text
        body: dict[str, Any] = {
            "text": text,
            "usage": {"type": "duration", "seconds": math.ceil(heard.duration_s)},
        }
        if config.mode == "mistral":
            body.update(model=entry["model"], language=params.get("language"), segments=[])
        return JSONResponse(body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        if not authorized(request):
            return unauthorized()
        return await answered_unless_gone(request, _chat_sync, raw)

    def _chat_sync(raw: bytes, gone: threading.Event) -> Response:
        endpoint = "chat"
        state.watch(gone)
        fault = injected_fault(endpoint)
        if fault is not None:
            return fault
        entry: dict[str, Any] = {"endpoint": endpoint}
        try:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise APIError(400, "Request body is not valid JSON.") from exc
            answer, finish, prompt_tokens = chat(config, body, entry)
        except APIError as err:
            entry.update(status=err.status, error=err.message)
            state.record(entry)
            return JSONResponse(_error_body(config, err), err.status)
        entry.update(status=200)
        state.hold(entry)
        state.record(entry)
        completion = len(answer.split())
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": entry["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion,
                },
            }
        )

    return app


# --- GPU mode: a modelled GPU with continuous batching (tests/standins/gpu_model.py) -----------
#
# With ``gpu=True`` (``--gpu``), every successful answer is held back until a modelled GPU would
# have produced it: the request joins a ``BatchEngine`` when it arrives, its prefill and decode
# steps are shared with every other request in flight (chunked prefill, as vLLM V1 schedules it:
# ``--gpu-max-batched-tokens``, 0 for none), and the response leaves at its modelled
# finish time (wall clock x ``gpu_time_scale``: 0.01 replays 100 modelled seconds in one). Refusals
# and injected faults are answered at once, as before. ``GET /stats`` gains ``gpu``: requests
# served, modelled busy time, the span from the first arrival to the last finish, and the ideal
# GPU time for the same requests all sent at once, so a benchmark reads how well a client keeps
# the server full (ideal_s / span_s). Transcripts are modelled at ``tokens_per_speech_s`` of the
# audio's duration times ``gpu_speech_fraction``; chat answers at ``gpu_chat_tokens`` tokens.


class RealtimeGpu:
    """A ``BatchEngine`` run against the wall clock; ``serve`` blocks until a request's finish."""

    def __init__(self, figures: GpuFigures | None = None, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.model = GpuModel(figures)
        self.engine = BatchEngine(self.model)
        self.scale = time_scale
        self.t0 = time.monotonic()
        self.cond = threading.Condition()
        self.requests: list[GpuRequest] = []
        self.first_arrival: float | None = None
        self.last_finish = 0.0
        self.aborted = 0  # requests whose client went away before their answer
        self._keys = 0
        self._thread = threading.Thread(target=self._drive, daemon=True, name="standin-gpu")
        self._thread.start()

    def now(self) -> float:
        """Modelled seconds since the GPU was created."""
        return (time.monotonic() - self.t0) / self.scale

    def serve(
        self, request: GpuRequest, arrived: float | None = None, gone: threading.Event | None = None
    ) -> float | None:
        """Run ``request`` on the modelled GPU from ``arrived`` (modelled seconds; default now)
        and return its modelled finish time, once the wall clock has reached it. When ``gone`` is
        set first (its client went away) the request is dropped from the GPU, its work lost, as
        vLLM aborts a request whose client disconnected; None is returned."""
        with self.cond:
            self._keys += 1
            key = self._keys
            at = self.now() if arrived is None else min(arrived, self.now())
            self.first_arrival = at if self.first_arrival is None else self.first_arrival
            self.requests.append(request)
            self.engine.submit(key, request, at=at)
            self.cond.notify_all()
            while key not in self.engine.finished:
                if gone is not None and gone.is_set():
                    self.engine.abort(key)
                    self.requests.remove(request)  # not in the ideal: it was sent again, or never
                    self.aborted += 1
                    self.cond.notify_all()
                    return None
                self.cond.wait(timeout=1.0)
            finish = self.engine.finished.pop(key)
            self.last_finish = max(self.last_finish, finish)
        delay = self.t0 + finish * self.scale - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return finish

    def _drive(self) -> None:
        while True:
            with self.cond:
                if self.engine.run_until(self.now()):
                    self.cond.notify_all()
                if self.engine.idle:
                    self.cond.wait()
                else:
                    self.cond.wait(timeout=max(0.0, (self.engine.t - self.now()) * self.scale))

    def reset(self) -> None:
        """Forget the requests served so far (a benchmark's next phase); the clock runs on."""
        with self.cond:
            self.requests = []
            self.first_arrival = None
            self.last_finish = 0.0
            self.aborted = 0
            self.engine.busy_s = 0.0
            self.engine.steps = 0
            self.engine.max_active = len(self.engine.active)

    def report(self) -> dict[str, Any]:
        with self.cond:
            requests = list(self.requests)
            span = self.last_finish - self.first_arrival if self.first_arrival is not None else 0.0
            report = {
                "requests": len(requests),
                "busy_s": self.engine.busy_s,
                "span_s": span,
                "steps": self.engine.steps,
                "max_active": self.engine.max_active,
                "time_scale": self.scale,
                "first_arrival_s": self.first_arrival,
                "last_finish_s": self.last_finish,
                "aborted": self.aborted,
                "now_s": self.now(),
            }
        # The replay runs outside the lock: the modelled GPU keeps serving meanwhile.
        report["ideal_s"] = self.model.ideal_s(requests)
        report["ideal_one_job_s"] = self.model.ideal_one_job_s(requests)
        return report


@dataclass
class GpuServerState(ServerState):
    """Server state whose successful answers wait for the modelled GPU."""

    gpu: RealtimeGpu | None = None
    speech_fraction: float = 1.0
    chat_tokens: int = 300

    arrivals: dict[int, float] = field(default_factory=dict)
    leaving: dict[int, threading.Event] = field(default_factory=dict)  # thread -> its client gone

    def watch(self, gone: threading.Event) -> None:
        with self.lock:
            self.leaving[threading.get_ident()] = gone

    def wake(self) -> None:
        if self.gpu is not None:
            with self.gpu.cond:
                self.gpu.cond.notify_all()

    def next_post(self) -> int:
        # Every POST handler starts here, in the thread that will answer it: the request reaches
        # the modelled GPU at this time, not after the stand-in's own decoding (its CPU cost is
        # not the model's).
        if self.gpu is not None:
            with self.lock:
                self.arrivals[threading.get_ident()] = self.gpu.now()
        return super().next_post()

    def record(self, entry: dict[str, Any]) -> None:
        super().record(entry)
        with self.lock:
            arrived = self.arrivals.pop(threading.get_ident(), None)
            gone = self.leaving.pop(threading.get_ident(), None)
        if self.gpu is None or entry.get("status") != 200 or entry.get("injected"):
            return
        request = self.gpu_request(entry)
        if request is None:
            return
        finish = self.gpu.serve(request, arrived, gone)
        with self.lock:
            if finish is None:
                entry["client_gone"] = True
            else:
                entry["gpu_finish_s"] = round(finish, 6)

    def gpu_request(self, entry: dict[str, Any]) -> GpuRequest | None:
        audio_s = float(entry.get("duration_s") or 0.0)
        if entry.get("endpoint") == "transcriptions":
            return GpuRequest(audio_s, speech_s=audio_s * self.speech_fraction)
        if entry.get("endpoint") == "chat":
            cap = entry.get("max_tokens") or self.chat_tokens
            return GpuRequest(
                audio_s,
                text_tokens=text_tokens(str(entry.get("prompt") or "")),
                output_tokens=min(int(cap), self.chat_tokens),
            )
        return None

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        if self.gpu is not None:
            snap["gpu"] = self.gpu.report()
        return snap

    def reset(self) -> None:
        super().reset()
        if self.gpu is not None:
            self.gpu.reset()


class _ManyThreads:
    """ASGI wrapper: lets as many requests wait on the modelled GPU as it holds sequences (the
    sync handlers run in AnyIO's thread pool, 40 threads by default)."""

    def __init__(self, app: Any, threads: int) -> None:
        self.app = app
        self.threads = threads
        self._set = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self._set:
            limiter = anyio.to_thread.current_default_thread_limiter()
            limiter.total_tokens = max(limiter.total_tokens, self.threads)
            self._set = True
        await self.app(scope, receive, send)


def scaled_costs(figures: GpuFigures, factor: float) -> GpuFigures:
    """The same GPU with every cost (prefill, decode step) multiplied by ``factor``: a slower GPU
    whose seconds are still wall seconds (``gpu_time_scale`` slows the clock instead, and reports
    modelled seconds). A benchmark raises it until the modelled GPU, not the CPUs running the
    stand-in and the workers, is the bottleneck, as it is in production."""
    if factor <= 0:
        raise ValueError(f"the cost scale must be positive, got {factor}")
    return replace(
        figures,
        prefill_s_per_token=figures.prefill_s_per_token * factor,
        step_fixed_s=figures.step_fixed_s * factor,
        step_per_seq_s=figures.step_per_seq_s * factor,
        step_per_context_token_s=figures.step_per_context_token_s * factor,
    )


def make_state(
    config: ServerConfig,
    gpu: bool | GpuFigures = False,
    gpu_time_scale: float = 1.0,
    gpu_speech_fraction: float = 1.0,
    gpu_chat_tokens: int = 300,
    gpu_cost_scale: float = 1.0,
) -> ServerState:
    """Plain state, or GPU-mode state when ``gpu`` is True or a set of figures."""
    if gpu is False:
        return ServerState(config)
    figures = gpu if isinstance(gpu, GpuFigures) else GpuFigures()
    if gpu_cost_scale != 1.0:
        figures = scaled_costs(figures, gpu_cost_scale)
    return GpuServerState(
        config,
        gpu=RealtimeGpu(figures, gpu_time_scale),
        speech_fraction=gpu_speech_fraction,
        chat_tokens=gpu_chat_tokens,
    )


def build_app(state: ServerState) -> Any:
    """The stand-in's ASGI app (with room for every in-flight sequence in GPU mode)."""
    app: Any = create_app(state)
    if isinstance(state, GpuServerState) and state.gpu is not None:
        app = _ManyThreads(app, state.gpu.model.figures.max_sequences + 64)
    return _Watched(app, state.traffic) if state.traffic is not None else app


class StandInVLLM:
    """The stand-in on a free 127.0.0.1 port in a background thread, as a context manager."""

    def __init__(
        self,
        gpu: bool | GpuFigures = False,
        gpu_time_scale: float = 1.0,
        gpu_speech_fraction: float = 1.0,
        gpu_cost_scale: float = 1.0,
        **config: Any,
    ) -> None:
        self.config = ServerConfig(**config)
        self.state = make_state(
            self.config, gpu, gpu_time_scale, gpu_speech_fraction, gpu_cost_scale=gpu_cost_scale
        )
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        return self.state.snapshot()

    def reset_stats(self) -> None:
        self.state.reset()

    def hold(self, markers: frozenset[int]) -> None:
        """From now on, hold every answer to audio holding one of ``markers`` until ``release()``."""
        self.state.released.clear()
        self.config.hold_markers = markers

    def release(self) -> None:
        """Let every held answer (``hold_markers``) go, and every later one pass at once."""
        self.state.released.set()

    def __enter__(self) -> StandInVLLM:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            build_app(self.state), log_level="warning", lifespan="off", timeout_keep_alive=30
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("stand-in vLLM server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=VOXTRAL_SMALL)
    parser.add_argument("--mode", choices=("vllm", "mistral"), default="vllm")
    parser.add_argument("--profile", default=None, help="serve this jobs/profiles.py model's rules")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--max-model-len", type=int, default=32_768)
    parser.add_argument("--max-duration-s", type=float, default=600.0)
    parser.add_argument("--max-file-mb", type=float, default=25.0)
    parser.add_argument("--max-decode-bytes", type=int, default=256 * 1024 * 1024)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--error-200-every", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--gpu", action="store_true", help="model a GPU with continuous batching")
    parser.add_argument("--gpu-time-scale", type=float, default=1.0)
    parser.add_argument("--gpu-max-seqs", type=int, default=GpuFigures().max_sequences)
    parser.add_argument(
        "--gpu-max-batched-tokens",
        type=int,
        default=GpuFigures().max_batched_tokens,
        help="tokens a step may carry (vLLM's --max-num-batched-tokens); 0: no chunked prefill",
    )
    parser.add_argument("--gpu-speech-fraction", type=float, default=1.0)
    parser.add_argument(
        "--gpu-cost-scale", type=float, default=1.0, help="multiply every modelled GPU cost (a slower GPU)"
    )
    parser.add_argument("--fast", action="store_true", help="measure audio without decoding it")
    parser.add_argument("--drop-upload-every", type=int, default=0, help="drop 1 model POST in N mid-body")
    parser.add_argument("--hold-every", type=int, default=0, help="never answer 1 model POST in M")
    parser.add_argument("--fault-seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = ServerConfig(
        model=args.model,
        mode=args.mode,
        api_key=args.api_key,
        max_model_len=args.max_model_len,
        max_duration_s=args.max_duration_s,
        max_file_mb=args.max_file_mb,
        max_decode_bytes=args.max_decode_bytes,
        fail_every=args.fail_every,
        error_200_every=args.error_200_every,
        latency_s=args.latency,
        profile=args.profile,
        fast=args.fast,
        drop_upload_every=args.drop_upload_every,
        hold_every=args.hold_every,
        fault_seed=args.fault_seed,
    )
    gpu = (
        GpuFigures(max_sequences=args.gpu_max_seqs, max_batched_tokens=args.gpu_max_batched_tokens or None)
        if args.gpu
        else False
    )
    state = make_state(
        config, gpu, args.gpu_time_scale, args.gpu_speech_fraction, gpu_cost_scale=args.gpu_cost_scale
    )
    shown = {k: v for k, v in asdict(config).items() if k != "api_key"}
    print(json.dumps({"listening": f"http://{args.host}:{args.port}/v1", **shown}, default=sorted))
    uvicorn.run(build_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
