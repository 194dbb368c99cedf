"""A model of one GPU serving Voxtral with vLLM's continuous batching (pure, virtual time).

Figures (issue 10, measured on one H100 with the Voxtral-Small-24B architecture, random weights):
a 30-minute window is 22,500 audio tokens and prefills in ~2.4 s; decoding costs ~31 ms per step at
batch 1; a transcript has ~2.5 tokens per second of speech. The model:

* Audio is padded to a multiple of 30 s and costs 12.5 tokens per second (375 per 30-s chunk).
* Prefill of a request takes ``prefill_s_per_token`` per prompt token (audio + text) and holds the
  GPU (nothing decodes meanwhile).
* A decode step produces one token for every sequence in flight and takes ``step_fixed_s +
  step_per_seq_s * n + step_per_context_token_s * c`` for ``n`` sequences holding ``c`` tokens of
  context in all. Defaults: 30.9 ms fixed (the weights read once per step), 0.1 ms per sequence
  (~48 GFLOP per token of a 24B model at ~500 TFLOP/s) and 33 ns per token of context (160 kB of
  KV cache per token: 40 layers x 8 KV heads x 128 x 2 x bf16, read at ~4.8 TB/s): 31 ms at batch 1
  with a short prompt, ~33 ms with a 30-minute window's 22,500 tokens. The per-sequence and context
  costs are estimates from the architecture, not measurements; they are what batching cannot hide.
* A request's output is ``ceil(tokens_per_speech_s * speech_s)`` tokens (at least 1), unless given.
* At most ``max_sequences`` are in flight; the others wait, first come first served.
* Chunked prefill, as vLLM's V1 scheduler does it (always on there): every step first gives each
  decoding sequence its one token, then spends what is left of ``max_batched_tokens`` (vLLM's
  ``--max-num-batched-tokens``; 8,192 is its default for the OpenAI server on an H100) on prompt
  tokens: the requests part-way through their prefill first, then waiting ones, admitted first
  come first served while a slot is free. A step costs the decode step above plus
  ``prefill_s_per_token`` per prompt token in it; the step that ends a request's prefill also
  gives its first output token. So a 30-minute window's 22,500-token prompt is prefilled over
  three steps while the other sequences keep decoding, instead of stopping them for 2.4 s.
  ``max_batched_tokens=None`` is the engine without chunked prefill: a waiting request is
  prefilled whole, with nothing decoding meanwhile, as soon as a slot is free, between steps.

``BatchEngine`` runs the model on requests that arrive over time (the stand-in's GPU mode feeds it
real arrivals); ``ideal_s`` is the GPU time for a set of requests all present from the start, the
best any client can do, so ``achieved wall time / ideal_s`` measures how well a client keeps the
server full.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

AUDIO_TOKENS_PER_S = 12.5
CHUNK_S = 30.0


@dataclass(frozen=True)
class GpuFigures:
    prefill_s_per_token: float = 2.4 / 22_500
    step_fixed_s: float = 0.0309
    step_per_seq_s: float = 0.0001
    step_per_context_token_s: float = 3.3e-8
    tokens_per_speech_s: float = 2.5
    max_sequences: int = 256
    prompt_overhead_tokens: int = 6
    max_batched_tokens: int | None = 8192

    def __post_init__(self) -> None:
        if self.max_sequences < 1:
            raise ValueError(f"max_sequences must be at least 1, got {self.max_sequences}")
        if self.max_batched_tokens is not None and self.max_batched_tokens <= self.max_sequences:
            raise ValueError(
                f"max_batched_tokens ({self.max_batched_tokens}) must be above max_sequences "
                f"({self.max_sequences}), or a full batch of decodes leaves no room for a prefill"
            )
        costs = (
            self.prefill_s_per_token,
            self.step_fixed_s,
            self.step_per_seq_s,
            self.step_per_context_token_s,
        )
        if min(costs) < 0:
            raise ValueError(f"costs cannot be negative: {self}")
        if self.step_fixed_s + self.step_per_seq_s + self.step_per_context_token_s <= 0:
            raise ValueError("a decode step must take some time")


@dataclass(frozen=True)
class GpuRequest:
    """One request: ``audio_s`` seconds of audio (0 for text only), of which ``speech_s`` is speech
    (``None``: all of it), ``text_tokens`` more prompt tokens, and optionally a fixed output."""

    audio_s: float
    speech_s: float | None = None
    text_tokens: int = 0
    output_tokens: int | None = None


def audio_tokens(audio_s: float) -> int:
    """Voxtral's audio tokens: padded to the next 30 s, 375 per chunk (none without audio)."""
    if audio_s <= 0:
        return 0
    return math.ceil(audio_s / CHUNK_S - 1e-9) * round(CHUNK_S * AUDIO_TOKENS_PER_S)


class GpuModel:
    """The arithmetic of the model, per request and per step."""

    def __init__(self, figures: GpuFigures | None = None) -> None:
        self.figures = figures or GpuFigures()

    def prompt_tokens(self, request: GpuRequest) -> int:
        return audio_tokens(request.audio_s) + request.text_tokens + self.figures.prompt_overhead_tokens

    def output_tokens(self, request: GpuRequest) -> int:
        if request.output_tokens is not None:
            return max(1, request.output_tokens)
        speech = request.audio_s if request.speech_s is None else request.speech_s
        return max(1, math.ceil(self.figures.tokens_per_speech_s * speech - 1e-9))

    def prefill_s(self, request: GpuRequest) -> float:
        return self.prompt_tokens(request) * self.figures.prefill_s_per_token

    def step_s(self, active: int, context_tokens: int = 0) -> float:
        f = self.figures
        return f.step_fixed_s + f.step_per_seq_s * active + f.step_per_context_token_s * context_tokens

    def steps_s(self, k: int, active: int, context_tokens: int) -> float:
        """``k`` decode steps of ``active`` sequences starting with ``context_tokens`` in all (the
        context grows by ``active`` tokens a step)."""
        grown = active * k * (k - 1) / 2
        return k * self.step_s(active, context_tokens) + self.figures.step_per_context_token_s * grown

    def alone_s(self, request: GpuRequest) -> float:
        """GPU time of one request served alone (batch 1)."""
        return self.prefill_s(request) + self.steps_s(
            self.output_tokens(request), 1, self.prompt_tokens(request)
        )

    def ideal_s(self, requests: Iterable[GpuRequest]) -> float:
        """GPU time for all ``requests`` present at time 0 (the client never lets the server idle)."""
        engine = BatchEngine(self)
        for key, request in enumerate(requests):
            engine.submit(key, request, at=0.0)
        engine.run_until(math.inf)
        return engine.t

    def ideal_one_job_s(self, requests: Iterable[GpuRequest]) -> float:
        """``ideal_jobs_s`` for one job. No client can do better for one job; for several jobs
        sharing one dependency it over-constrains (the vLLM stand-in's ``/stats`` reports it for
        ``voxbatch run``)."""
        return self.ideal_jobs_s([list(requests)])

    def ideal_jobs_s(self, jobs: Iterable[list[GpuRequest]], summaries_first: bool = False) -> float:
        """``ideal_s`` for several jobs' requests, keeping each job's one dependency: a request
        without audio (the overall summary, written from the windows' summaries) can only be sent
        once every summary of *its* job that hears audio (a request with audio and a fixed answer)
        is answered. Every other request is there at time 0, in the order given, or with
        ``summaries_first`` every job's summaries that hear audio ahead of the rest (the chain
        then starts decoding at once; the server admits in arrival order)."""
        engine = BatchEngine(self)
        heard: dict[int, set[Hashable]] = {}
        later: dict[int, list[tuple[Hashable, GpuRequest]]] = {}
        now: list[tuple[Hashable, GpuRequest]] = []
        for j, requests in enumerate(jobs):
            for k, request in enumerate(requests):
                key = (j, k)
                if request.audio_s <= 0:
                    later.setdefault(j, []).append((key, request))
                    continue
                if request.output_tokens is not None:
                    heard.setdefault(j, set()).add(key)
                now.append((key, request))
        if summaries_first:
            now.sort(key=lambda item: item[1].output_tokens is None)  # stable: in order otherwise
        for key, request in now:
            engine.submit(key, request, at=0.0)
        while later:
            for j in [j for j in later if not heard.get(j, set()) - engine.finished.keys()]:
                ready = max((engine.finished[k] for k in heard.get(j, ())), default=0.0)
                for key, request in later.pop(j):
                    engine.submit(key, request, at=ready)
            if later:
                engine.run_until(engine.t)
        engine.run_until(math.inf)
        return engine.t


class BatchEngine:
    """The model in virtual time: requests arrive with ``submit``; ``run_until`` advances the GPU.

    Operations are atomic: a step (decodes and prefill chunks), or without chunked prefill a whole
    prefill. ``run_until(t)`` performs every operation that starts at or before ``t`` (so the
    engine's clock may end a little past ``t``); finished requests are returned with their finish
    times and kept in ``finished``.
    """

    def __init__(self, model: GpuModel | None = None) -> None:
        self.model = model or GpuModel()
        self.t = 0.0
        self.waiting: deque[tuple[Hashable, GpuRequest, float]] = deque()
        self.active: dict[Hashable, int] = {}  # key -> tokens still to decode
        # Chunked prefill: admitted requests part-way through their prompt, in admission order
        # (key -> prompt tokens still to prefill, and the tokens it will decode).
        self.prefilling: dict[Hashable, tuple[int, int]] = {}
        self.context = 0  # tokens of context held by the sequences in flight
        self._held: dict[Hashable, int] = {}  # key -> its context
        self.finished: dict[Hashable, float] = {}
        self.busy_s = 0.0  # time spent prefilling or decoding
        self.steps = 0
        self.max_active = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.active and not self.prefilling

    def submit(self, key: Hashable, request: GpuRequest, at: float) -> None:
        if self.idle and at > self.t:
            self.t = at  # the GPU waited for this request
        self.waiting.append((key, request, at))

    def abort(self, key: Hashable) -> bool:
        """Drop a request, waiting or in flight, as vLLM does when its client goes away; its work
        so far is lost. Returns whether it was there."""
        if key in self.active or key in self.prefilling:
            self.active.pop(key, None)
            self.prefilling.pop(key, None)
            self.context -= self._held.pop(key)
            return True
        for item in self.waiting:
            if item[0] == key:
                self.waiting.remove(item)
                return True
        return False

    def next_arrival(self) -> float | None:
        return self.waiting[0][2] if self.waiting else None

    def run_until(self, until: float) -> list[tuple[Hashable, float]]:
        if self.model.figures.max_batched_tokens is not None:
            return self._run_chunked(until, self.model.figures.max_batched_tokens)
        done: list[tuple[Hashable, float]] = []
        model = self.model
        while self.t <= until and not self.idle:
            # Admit what has arrived, while there are slots, one prefill at a time.
            if (
                self.waiting
                and len(self.active) < model.figures.max_sequences
                and self.waiting[0][2] <= self.t
            ):
                key, request, _ = self.waiting.popleft()
                cost = model.prefill_s(request)
                self.t += cost
                self.busy_s += cost
                self.active[key] = model.output_tokens(request)
                self._held[key] = model.prompt_tokens(request)
                self.context += self._held[key]
                self.max_active = max(self.max_active, len(self.active))
                continue
            if not self.active:
                self.t = max(self.t, self.waiting[0][2])  # idle until the next arrival
                continue
            self._decode(self._decode_run(until, len(self.active)), done)
        return done

    def _decode_run(self, until: float, running: int) -> int:
        """How many decode steps to run at once: until the first sequence finishes, a waiting
        request can be admitted (``running`` holds the slots taken), or ``until`` is passed."""
        step = self.model.step_s(len(self.active), self.context)  # the first; later ones a little longer
        k = min(self.active.values())
        if self.waiting and running < self.model.figures.max_sequences:
            k = min(k, max(1, math.ceil((self.waiting[0][2] - self.t) / step)))
        if until != math.inf:
            k = min(k, int((until - self.t) // step) + 1)
        return k

    def _decode(self, k: int, done: list[tuple[Hashable, float]]) -> None:
        """``k`` decode steps of every decoding sequence, nothing else in them."""
        n = len(self.active)
        cost = self.model.steps_s(k, n, self.context)
        self.t += cost
        self.busy_s += cost
        self.steps += k
        self.context += n * k
        for key in list(self.active):
            self.active[key] -= k
            self._held[key] += k
            if self.active[key] <= 0:
                self._finish(key, done)

    def _finish(self, key: Hashable, done: list[tuple[Hashable, float]]) -> None:
        self.active.pop(key, None)
        self.context -= self._held.pop(key)
        self.finished[key] = self.t
        done.append((key, self.t))

    def _run_chunked(self, until: float, budget_tokens: int) -> list[tuple[Hashable, float]]:
        """``run_until`` with chunked prefill: steps that decode and prefill together."""
        done: list[tuple[Hashable, float]] = []
        model = self.model
        slots = model.figures.max_sequences
        while self.t <= until and not self.idle:
            running = len(self.active) + len(self.prefilling)
            admissible = bool(self.waiting) and running < slots and self.waiting[0][2] <= self.t
            if not self.prefilling and not admissible:
                if not self.active:
                    self.t = max(self.t, self.waiting[0][2])  # idle until the next arrival
                    continue
                self._decode(self._decode_run(until, running), done)  # only decodes to run
                continue
            # One step: a token for every decoding sequence, then prompt chunks in the rest.
            budget = budget_tokens - len(self.active)
            chunks: dict[Hashable, int] = {}
            for key, (left, _) in self.prefilling.items():
                if budget <= 0:
                    break
                chunks[key] = min(left, budget)
                budget -= chunks[key]
            while budget > 0 and self.waiting and running < slots and self.waiting[0][2] <= self.t:
                key, request, _ = self.waiting.popleft()
                prompt = model.prompt_tokens(request)
                self.prefilling[key] = (prompt, model.output_tokens(request))
                self._held[key] = 0
                running += 1
                chunks[key] = min(prompt, budget)
                budget -= chunks[key]
            self.max_active = max(self.max_active, running)
            prompt_tokens = sum(chunks.values())
            cost = (
                model.step_s(len(self.active), self.context)
                + prompt_tokens * model.figures.prefill_s_per_token
            )
            self.t += cost
            self.busy_s += cost
            self.steps += 1
            self.context += len(self.active)
            for key in list(self.active):
                self.active[key] -= 1
                self._held[key] += 1
                if self.active[key] <= 0:
                    self._finish(key, done)
            for key, chunk in chunks.items():
                left, output = self.prefilling[key]
                self._held[key] += chunk
                self.context += chunk
                if left > chunk:
                    self.prefilling[key] = (left - chunk, output)
                    continue
                del self.prefilling[key]  # the step that ends the prefill samples the first token
                if output <= 1:
                    self._finish(key, done)
                else:
                    self.active[key] = output - 1
        return done


def compare_windows_and_segments(
    windows: Iterable[GpuRequest], segments: Iterable[GpuRequest], model: GpuModel | None = None
) -> dict[str, float]:
    """Ideal GPU time with one request per window vs one per segment, and their ratio."""
    model = model or GpuModel()
    by_window = model.ideal_s(windows)
    by_segment = model.ideal_s(segments)
    return {
        "windows_s": by_window,
        "segments_s": by_segment,
        "speedup": by_window / by_segment if by_segment else math.inf,
    }
