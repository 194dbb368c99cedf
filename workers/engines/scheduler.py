"""One scheduler of model requests per process: one event loop, a fair queue, a fixed number in flight.

Every request a process sends to a model server (each window's speech segments and summaries, from
however many window tasks run at once) is put into one queue here and sent from one event loop
thread with an async HTTP client. Why:

- **The server's batch stays full.** vLLM batches whatever is in flight, up to ``--max-num-seqs``.
  The scheduler keeps exactly ``VOXBATCH_MAX_INFLIGHT`` requests at the server whenever that many
  are waiting, however windows start and end; the HTTP pool is sized above that, so no request
  waits for a connection (httpx's default pool of 100 capped the server at ~100 before).
- **No request can hang a window.** Each attempt has a deadline derived from its audio and its
  answer's length (``deadline_s``), not a flat 30 minutes; an attempt past it is cancelled and sent
  again, like a dropped connection or a 5xx, with exponential backoff and full jitter, until the
  request's attempts are spent (then ``EngineUnavailable``). Nothing is shared between requests but
  the async client's pool, and a cancelled or failed attempt closes its own connection: there is no
  blocking socket for another thread to inherit half-read (the sync pool's failure under overload).
- **Fair between tenants, small jobs not stuck behind big ones.** Which request goes next: the
  highest class first (``interactive`` before ``batch``), then, within a class, the tenant that has
  been served the fewest audio seconds (start-time fair queueing, weighted by audio seconds: a
  tenant that becomes active starts at the class's virtual time, so idle time is not banked as
  credit), then that tenant's earliest job and window. A 5-minute clip's segments go out as soon
  as slots free, not after another tenant's backlog.
- **A clip is not decoded inside a full batch.** While a request of a clip (``Share.clip``: a short
  interactive job, someone waiting on it) waits or is out, the other work (long jobs, batch jobs
  such as the drop folder's) keeps a bounded number of audio seconds in its requests at the server
  (``cap_beside_clips_s``): its newest attempts beyond that are cancelled and put back in line (not
  counted as tries; vLLM drops a request whose client went away, and the newest were most likely
  still waiting for their prefill, so little is lost), and its new ones wait (one too big for the
  cap, such as a 30-minute window's summary, waits without holding up the smaller ones behind it in
  its job's order). Fair share alone sends the clip's requests first, but behind a server that
  already holds 256 requests, in a batch of 256 that also prefills every request admitted after
  them, a 5-minute clip took 7-12x its time alone (bench/fairness_floor.py, the GPU model). The cap
  is in audio seconds, not in requests, because what slows the clip is the prefill of the requests
  admitted beside it, and that grows with their audio: one 30-minute window's summary costs as much
  as sixty 30-s segments. The cap follows the clips' own audio: ``audio_beside_clips_ratio`` times
  the audio of the clips' open requests, at least ``CAP_FLOOR_BESIDE_CLIPS_S``, at most
  ``max_audio_beside_clips_s``; and the ceiling itself once clips have been open more than half of
  the last few minutes (holding is then no longer a short price paid now and then). Why it moves: a
  clip's slowdown is what the other work's prefill adds to each of its decode steps, over what the
  clips themselves load them with. One 5-minute clip behind twelve 2-hour talks took 2.6-2.8x its
  time alone at a fixed half hour and 1.77x at ten minutes; but eight clips at once (a drop-folder
  storm's API tenant) fill more of their own steps, stay within 2x at half an hour, and at ten
  minutes cost the storm's batch 5 points of throughput (docs/benchmarks.md).
- **A job's first text first.** Until a job has its first answer, its later windows' requests wait
  while its first window's are waiting or in flight. The server's prefill is what a long job's
  start is short of (requests are prefilled in the order they arrive), so spending
  it on the first window first brings the first segment back in seconds instead of after every
  window's prefill. The hold ends at the job's first answer (a few seconds); it never waits on a
  first window this process does not have (another worker's, or one already done).
- **Stopping is a supported API.** ``abort`` cancels the running attempts' tasks and fails every
  waiting request with ``EngineAborted``; no private attribute of httpx or httpcore is touched.

Callers stay synchronous: ``submit`` returns a ``concurrent.futures.Future`` that the scheduler
always completes (answer, error, or abort). ``call`` waits on it without waking, except in the main
thread (``jobs.interrupts``): thousands of waiting segment threads must not take the GIL from the
loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import heapq
import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jobs.errors import EngineUnavailable
from jobs.interrupts import wait_interruptibly
from jobs.shares import Share

log = logging.getLogger(__name__)

BACKOFF_CAP_S = 30.0
# The least audio the other work keeps at the server beside clips, however small they are: twenty
# 30-s segments, so that a stream of short clips slows a backlog rather than stopping it.
CAP_FLOOR_BESIDE_CLIPS_S = 600.0
# When clips have been open more than half of the last few minutes (an exponential average over
# five), the hold is no longer a short price paid now and then: the cap goes to its ceiling, so a
# steady stream of short clips slows the other work by what a fixed cap did, never more.
CLIP_TIME_HORIZON_S = 300.0
CLIP_TIME_SHARE_RELAXED = 0.5
ANSWERED_JOBS_KEPT = 4096
# A request overtaken by the server is presumed lost and sent again before its deadline
# (``_overtaken``): at least OVERTAKERS requests of its size, sent after it, have been answered, it
# has been out ``overtaken_factor`` times the longest of their times, and at least a quarter of its
# deadline. The deadline must allow the longest answer a request may give (a runaway transcript of
# 512 tokens); the requests sent after it show how long this server takes now. Only a first attempt
# is judged so: a request that is merely slow (a long answer among short ones) is sent again early
# once at most, and then has its whole deadline.
OVERTAKERS = 8
OVERTAKEN_FLOOR_OF_DEADLINE = 0.25
RECENT_ANSWERS_KEPT = 64  # per size class: the answers that can show a request overtaken
OVERTAKEN_CHECK_S = 1.0


class EngineAborted(Exception):
    """The worker is stopping: its requests to the model server were aborted (``abort``).

    Deliberately not a VoxbatchError: the window was handed back to the queue, so the task must
    neither retry it nor fail the job."""


class Retryable(Exception):
    """An attempt that may succeed if sent again: connection lost, no answer in time, 5xx, 429."""


Attempt = Callable[[float], Awaitable[Any]]  # called with the attempt's deadline in seconds


def backoff_s(attempt: int, base_s: float, cap_s: float = BACKOFF_CAP_S) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] so retrying clients spread out."""
    return random.uniform(0.0, min(cap_s, base_s * 2**attempt))


@dataclass
class _Request:
    attempt: Attempt
    share: Share
    cost_s: float
    deadline_s: float
    retries: int
    backoff_base_s: float
    what: str
    future: concurrent.futures.Future[Any]
    seq: int
    tries: int = 0
    last_error: str = ""
    key: tuple[Any, ...] = field(default=())
    preempted: bool = False  # its attempt is being cancelled to make room for a clip
    overtaken: bool = False  # its attempt is being cancelled: presumed lost by the server
    sent_at: float = 0.0  # when its attempt in flight began (the scheduler's clock)
    started: bool = False  # its attempt's task has begun running (it can be cancelled)
    # Once cancelled for a clip, or once failed, never cancelled for a clip again: a request then
    # reaches the server at most twice in a clean run, and a fault adds one send, not a cycle.
    spared: bool = False


class _TenantLine:
    """One tenant's waiting requests, per job, earliest job and window first (retries keep their
    place); a job held for its first text does not hold up the tenant's other jobs.

    Each job's requests are kept in lines by size (``_size_class``: powers of two of audio
    seconds), each in order, so that a request held for its size (a 30-minute window's summary
    while a clip caps the other work's audio) does not hold up the smaller ones behind it: with
    one line per job, a backlog whose jobs each had a summary at its head sent nothing at all
    beside a clip, and refilled the server from empty when the clip ended."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[int, list[tuple[tuple[Any, ...], _Request]]]] = {}
        self.served = 0.0  # audio seconds sent, in the class's virtual time

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def push(self, request: _Request) -> None:
        sizes = self.jobs.setdefault(_job_of(request.share), {})
        heapq.heappush(sizes.setdefault(_size_class(request.cost_s), []), (request.key, request))

    def first(self, held: Callable[[_Request], bool]) -> _Request | None:
        """The earliest request not ``held`` (each line is in order, so only its head counts)."""
        heads = sorted(
            (heap[0] for sizes in self.jobs.values() for heap in sizes.values()),
            key=lambda item: item[0],
        )
        return next((request for _, request in heads if not held(request)), None)

    def remove(self, request: _Request) -> None:
        job = _job_of(request.share)
        sizes = self.jobs[job]
        size = _size_class(request.cost_s)
        heapq.heappop(sizes[size])  # ``first`` only returns a head
        if not sizes[size]:
            del sizes[size]
            if not sizes:
                del self.jobs[job]

    def requests(self) -> list[_Request]:
        return [request for sizes in self.jobs.values() for heap in sizes.values() for _, request in heap]


class RequestScheduler:
    """Sends submitted attempts from one event loop thread, ``max_inflight`` at a time, fairly."""

    def __init__(
        self,
        max_inflight: int,
        name: str = "model-requests",
        max_audio_beside_clips_s: float | None = None,
        audio_beside_clips_ratio: float | None = None,
        overtaken_factor: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.max_inflight = max_inflight
        # None: no cap beside clips (the clip's requests still go first).
        self.max_audio_beside_clips_s = (
            float("inf") if max_audio_beside_clips_s is None else max(0.0, max_audio_beside_clips_s)
        )
        # None: the cap is max_audio_beside_clips_s whatever the clips' size.
        self.audio_beside_clips_ratio = audio_beside_clips_ratio
        # None: a request is sent again only when its deadline passes.
        self.overtaken_factor = overtaken_factor
        self._name = name
        self._seq = itertools.count()
        self._lock = threading.Lock()  # guards the lines, counters and the aborted flag
        self._lines: dict[int, dict[str, _TenantLine]] = {}
        self._vtime: dict[int, float] = {}  # per class: where the last request sent started
        self._waiting = 0
        self._inflight = 0
        self._peak_inflight = 0
        self._aborted = False
        self._task_of: dict[int, asyncio.Task[None]] = {}  # request seq -> its attempt's task
        # The requests of the attempts in flight, so ``abort`` settles their futures from the
        # caller's thread whether or not the loop gets to cancel the tasks.
        self._sending: dict[int, _Request] = {}
        # The first-text hold: per job, its first window's requests waiting or in flight, and the
        # jobs that have had an answer (bounded: only the hold's recent jobs matter).
        self._leads: dict[tuple[str, str], int] = {}
        self._answered: dict[tuple[str, str], None] = {}
        # The clip hold: clips' requests not yet settled, and the other requests at the server
        # (how many, and their audio seconds).
        self._clips_open = 0
        self._clips_audio_s = 0.0  # the audio of those requests
        # The most they had open since clips were last all settled: attempts are cut against the
        # cap at this peak, so a cap that falls as a clip's segments are answered only holds new
        # attempts back and never throws away a prefill already done.
        self._clips_audio_peak_s = 0.0
        # The share of recent time during which clips were open, and when it was last brought up
        # to date (each time clips open or all settle, and when the cap is read).
        self._clock = clock
        self._clip_time_share = 0.0
        self._clip_time_at = clock()
        self._others_inflight = 0
        self._others_audio_s = 0.0
        self._preempting = 0  # attempts being cancelled for a clip, not yet back in line
        self._preempting_audio_s = 0.0
        self._preempted = 0  # attempts cancelled for a clip, in all
        # Per size class, the latest answers: (when their attempt began, how long it took).
        self._recent: dict[int, collections.deque[tuple[float, float]]] = {}
        self._overtaken = 0  # attempts presumed lost and sent again before their deadline
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- called from any thread ---------------------------------------------------------------

    def submit(
        self,
        attempt: Attempt,
        *,
        share: Share,
        cost_s: float,
        deadline_s: float,
        retries: int,
        backoff_base_s: float = 1.0,
        what: str = "request",
    ) -> concurrent.futures.Future[Any]:
        """Queue a request; its future holds the answer, or the error of its last attempt."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        seq = next(self._seq)
        request = _Request(
            attempt=attempt,
            share=share,
            cost_s=max(cost_s, 0.0),
            deadline_s=deadline_s,
            retries=retries,
            backoff_base_s=backoff_base_s,
            what=what,
            future=future,
            seq=seq,
            key=(share.order, seq),
        )
        with self._lock:
            if self._aborted:
                future.set_exception(EngineAborted(f"the worker is stopping: {what} not sent"))
                return future
            if share.clip:
                self._tick_clip_time()
                self._clips_open += 1
                self._clips_audio_s += request.cost_s
                self._clips_audio_peak_s = max(self._clips_audio_peak_s, self._clips_audio_s)
            self._enqueue(request)
        self._loop.call_soon_threadsafe(self._wake.set)
        return future

    def call(self, attempt: Attempt, **kwargs: Any) -> Any:
        """``submit`` and wait for the answer (in a caller's thread, never on the loop)."""
        future = self.submit(attempt, **kwargs)
        wait_interruptibly([future])
        return future.result()

    def abort(self) -> int:
        """Cancel the attempts in flight and fail every waiting request with EngineAborted; later
        submissions fail at once. Returns how many attempts were in flight."""
        with self._lock:
            waiting = self._stop_waiting()
            inflight = self._inflight
            sending = list(self._sending.values())
        for request in waiting:
            _settle(request.future, exc=EngineAborted(f"the worker is stopping: {request.what} not sent"))
        for request in sending:
            _settle(request.future, exc=EngineAborted(f"the worker is stopping: {request.what} aborted"))
        if self._loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop)
            try:
                done.result(timeout=5)
            except Exception:  # the loop is busy or gone: the tasks are cancelled when it turns
                log.warning("could not cancel in-flight model requests within 5 s", exc_info=True)
        return inflight

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {
                "inflight": self._inflight,
                "waiting": self._waiting,
                "peak_inflight": self._peak_inflight,
                "clips_open": self._clips_open,
                "cap_beside_clips_s": self._cap_for(self._clips_audio_s),  # inf: no cap
                "others_inflight": self._others_inflight,
                "others_audio_s": round(self._others_audio_s),
                "preempted": self._preempted,
                "clip_time_share": self._clip_time_share,
                "overtaken": self._overtaken,
            }

    def run_on_loop(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on the scheduler's loop (closing a client made there)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._dispatch_forever())
        except BaseException:
            log.exception("the model-request scheduler stopped")
        finally:
            # Whatever happens to the loop, no caller waits forever on a request it held.
            with self._lock:
                waiting = self._stop_waiting()
            for request in waiting:
                stopped = EngineUnavailable(f"the request scheduler stopped: {request.what}")
                _settle(request.future, exc=stopped)

    async def _dispatch_forever(self) -> None:
        if self.overtaken_factor is not None:
            watch = asyncio.ensure_future(self._watch_overtaken())
            watch.add_done_callback(_log_unexpected_end)
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                victims = [] if self._aborted else self._victims()
            if victims:
                log.info(
                    "a clip's request is waiting: %d requests of other work cancelled and put back in line",
                    len(victims),
                )
            for victim in victims:
                self._cancel_attempt(victim)
            while True:
                with self._lock:
                    if self._aborted or self._inflight >= self.max_inflight:
                        break
                    request = self._next()
                    if request is None:
                        break
                    self._inflight += 1
                    self._peak_inflight = max(self._peak_inflight, self._inflight)
                    if not request.share.clip:
                        self._others_inflight += 1
                        self._others_audio_s += request.cost_s
                    # Set here, not when its task starts: the watch for lost requests may run
                    # in between, and must not judge a new attempt by its last one's start.
                    request.sent_at = self._clock()
                    request.started = False
                    self._sending[request.seq] = request
                task = asyncio.ensure_future(self._send(request))
                self._task_of[request.seq] = task
                task.add_done_callback(functools.partial(self._forget_task, request.seq))

    async def _watch_overtaken(self) -> None:
        while not self._aborted:
            await asyncio.sleep(OVERTAKEN_CHECK_S)
            with self._lock:
                lost = [] if self._aborted else self._overtaken_now()
            for request in lost:
                log.warning(
                    "%s: no answer after %.0f s while later requests of its size were answered; "
                    "presumed lost by the server, sending it again",
                    request.what,
                    self._clock() - request.sent_at,
                )
                self._cancel_attempt(request)

    def _cancel_attempt(self, request: _Request) -> None:
        """Cancel an attempt marked ``preempted`` or ``overtaken``. A task cancelled before it
        starts never runs its body, so nothing would put the request back in line or count it out
        (a window waiting on it forever): an attempt not started yet sees its mark when it starts,
        and goes back in line without being sent."""
        task = self._task_of.get(request.seq)
        if task is not None and request.started:
            task.cancel()

    def _overtaken_now(self) -> list[_Request]:
        """The attempts in flight that the server has overtaken (``OVERTAKERS``): vLLM admits
        requests first come first served and answers a request of a given size in about the same
        time as the others, so one left far behind the later ones was lost on the way (a
        connection that never delivered it, an answer that never came)."""
        assert self.overtaken_factor is not None
        now = self._clock()
        lost = []
        for request in self._sending.values():
            if not request.started or request.preempted or request.overtaken or request.tries > 1:
                continue
            age = now - request.sent_at
            if age < OVERTAKEN_FLOOR_OF_DEADLINE * request.deadline_s:
                continue
            recent = self._recent.get(_size_class(request.cost_s), ())
            later = [took for began, took in recent if began > request.sent_at]
            if len(later) >= OVERTAKERS and age > self.overtaken_factor * max(later):
                request.overtaken = True
                lost.append(request)
        self._overtaken += len(lost)
        return lost

    async def _send(self, request: _Request) -> None:
        """One attempt; a retryable failure puts the request back in line after its backoff, an
        attempt cancelled for a clip goes back at once (not counted as a try)."""
        retry_after: float | None = None
        preempted = False
        request.started = True
        try:
            request.tries += 1
            try:
                if request.preempted:
                    raise asyncio.CancelledError  # cut for a clip before it was sent
                answer = await asyncio.wait_for(request.attempt(request.deadline_s), request.deadline_s)
            except TimeoutError as exc:
                raise Retryable(f"no answer within {request.deadline_s:.0f} s") from exc
            except asyncio.CancelledError as exc:
                if not request.overtaken or self._aborted:
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                raise Retryable(
                    f"no answer after {self._clock() - request.sent_at:.0f} s while later requests "
                    "of its size were answered"
                ) from exc
            with self._lock:
                self._mark_answered(request.share)
                recent = self._recent.setdefault(
                    _size_class(request.cost_s), collections.deque(maxlen=RECENT_ANSWERS_KEPT)
                )
                recent.append((request.sent_at, self._clock() - request.sent_at))
            _settle(request.future, result=answer)
        except Retryable as exc:
            request.last_error = str(exc)
            request.spared = True
            if request.tries > request.retries:
                _settle(
                    request.future,
                    exc=EngineUnavailable(
                        f"{request.what}: no answer after {request.tries} attempts ({exc}); "
                        "check that the model server is up"
                    ),
                )
            else:
                retry_after = backoff_s(request.tries - 1, request.backoff_base_s)
                log.warning(
                    "%s: sending again in %.2f s (attempt %d of %d) after: %s",
                    request.what,
                    retry_after,
                    request.tries + 1,
                    request.retries + 1,
                    exc,
                )
        except asyncio.CancelledError:
            if request.preempted and not self._aborted:
                preempted = True  # the server drops it (vLLM aborts a request whose client left)
            else:
                _settle(request.future, exc=EngineAborted(f"the worker is stopping: {request.what} aborted"))
                raise
        except Exception as exc:
            _settle(request.future, exc=exc)
        finally:
            with self._lock:
                self._inflight -= 1
                if not request.share.clip:
                    self._others_inflight -= 1
                    self._others_audio_s -= request.cost_s
                    if not self._others_inflight:
                        self._others_audio_s = 0.0  # no float residue when nothing is out
                request.overtaken = False
                if request.preempted:
                    self._preempting -= 1
                    self._preempting_audio_s -= request.cost_s
                    if not self._preempting:
                        self._preempting_audio_s = 0.0
                    request.preempted = False
                self._sending.pop(request.seq, None)
                if request.future.done():
                    self._settled(request)
            self._wake.set()
        if preempted:
            with self._lock:
                request.tries -= 1
                self._preempted += 1
                if not self._aborted:
                    self._enqueue(request, retry=True)
                    return
            _settle(request.future, exc=EngineAborted(f"the worker is stopping: {request.what} not sent"))
            with self._lock:
                self._settled(request)
            return
        if retry_after is not None:
            await asyncio.sleep(retry_after)
            with self._lock:
                if self._aborted:
                    aborted = EngineAborted(f"the worker is stopping: {request.what} not sent")
                    _settle(request.future, exc=aborted)
                    self._settled(request)
                    return
                self._enqueue(request, retry=True)
            self._wake.set()

    def _forget_task(self, seq: int, _task: asyncio.Task[None]) -> None:
        self._task_of.pop(seq, None)

    async def _cancel_all(self) -> None:
        tasks = [t for t in self._task_of.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- the fair queue (under self._lock) --------------------------------------------------------

    def _stop_waiting(self) -> list[_Request]:
        """Stop for good: every waiting request leaves the lines (the caller settles them)."""
        self._aborted = True
        self._tick_clip_time()
        waiting = [r for lines in self._lines.values() for line in lines.values() for r in line.requests()]
        self._lines.clear()
        self._waiting = 0
        self._clips_open -= sum(1 for r in waiting if r.share.clip)
        self._clips_audio_s -= sum(r.cost_s for r in waiting if r.share.clip)
        if not self._clips_open:
            self._clips_audio_s = self._clips_audio_peak_s = 0.0
        return waiting

    def _enqueue(self, request: _Request, retry: bool = False) -> None:
        if not retry and _is_lead(request.share):
            job = _job_of(request.share)
            self._leads[job] = self._leads.get(job, 0) + 1
        lines = self._lines.setdefault(request.share.rank, {})
        line = lines.get(request.share.tenant)
        if line is None or not line:
            # Start-time fair queueing: a tenant (re)joining starts at the class's virtual time
            # (where the last request sent started), so an idle spell is not banked as credit.
            if line is None:
                line = lines[request.share.tenant] = _TenantLine()
            line.served = max(line.served, self._vtime.get(request.share.rank, 0.0))
        line.push(request)
        self._waiting += 1

    def _next(self) -> _Request | None:
        for rank in sorted(self._lines):
            lines = self._lines[rank]
            candidates = sorted((line.served, tenant) for tenant, line in lines.items() if line)
            for _, tenant in candidates:
                line = lines[tenant]
                request = line.first(self._held)
                if request is None:
                    continue  # this tenant's jobs all wait for their first text
                line.remove(request)
                self._vtime[rank] = line.served
                line.served += max(request.cost_s, 1.0)
                self._waiting -= 1
                return request
        return None

    def _victims(self) -> list[_Request]:
        """While a clip is open, the other work's newest attempts whose audio is beyond the cap:
        cancelled and put back in line. The newest first, because the server most likely has not
        prefilled them yet (nothing is lost); the older ones are decoding and finish soon. A request
        already cancelled once, or already failed once, is spared (so a clip's summary, opening the
        hold a second time, does not cancel the same requests again)."""
        if not self._clips_open:
            return []  # the common case, on every wake: no cap to work out
        excess_s = self._others_audio_s - self._preempting_audio_s - self._cap_for(self._clips_audio_peak_s)
        if excess_s <= 0:
            return []
        victims: list[_Request] = []
        newest = (
            r
            for r in reversed(self._sending.values())
            if not r.share.clip and not r.preempted and not r.overtaken
        )
        # Only among the newest attempts that make up the excess: a spared one stays out rather
        # than costing an older, decoding request its prefill.
        for request in newest:
            if excess_s <= 0:
                break
            excess_s -= request.cost_s
            if not request.spared:
                request.preempted = request.spared = True
                victims.append(request)
        self._preempting += len(victims)
        self._preempting_audio_s += sum(r.cost_s for r in victims)
        return victims

    def cap_beside_clips_s(self) -> float:
        """The other work's audio allowed at the server while the clips now open are: it follows
        their own audio (a lone 5-minute clip: ten minutes at the ratio's default, 2; eight
        2-minute clips: the ceiling; clips open most of the last few minutes: the ceiling)."""
        with self._lock:
            return self._cap_for(self._clips_audio_s)

    def _cap_for(self, clips_audio_s: float) -> float:
        self._tick_clip_time()
        if self.audio_beside_clips_ratio is None or self._clip_time_share > CLIP_TIME_SHARE_RELAXED:
            return self.max_audio_beside_clips_s
        follows = max(CAP_FLOOR_BESIDE_CLIPS_S, self.audio_beside_clips_ratio * clips_audio_s)
        return min(self.max_audio_beside_clips_s, follows)

    def _tick_clip_time(self) -> None:
        """Bring the share of time with clips open up to now (clips were open, or not, throughout
        the time since the last tick: every change of ``_clips_open`` ticks first)."""
        now = self._clock()
        kept = math.exp(-max(0.0, now - self._clip_time_at) / CLIP_TIME_HORIZON_S)
        self._clip_time_share = self._clip_time_share * kept + (1.0 - kept) * (self._clips_open > 0)
        self._clip_time_at = now

    def _held(self, request: _Request) -> bool:
        """Any request but a clip's while a clip's are open and its audio would take the other work
        beyond the cap; or a later window's request of a job whose first window is still out and
        unanswered."""
        share = request.share
        if (
            not share.clip
            and self._clips_open
            and self._others_audio_s + request.cost_s > self._cap_for(self._clips_audio_s)
        ):
            return True
        if _is_lead(share) or not share.order[0]:
            return False
        job = _job_of(share)
        return self._leads.get(job, 0) > 0 and job not in self._answered

    def _mark_answered(self, share: Share) -> None:
        if not share.order[0]:
            return
        self._answered[_job_of(share)] = None
        while len(self._answered) > ANSWERED_JOBS_KEPT:
            del self._answered[next(iter(self._answered))]

    def _settled(self, request: _Request) -> None:
        """A request's future is done: it no longer holds anything."""
        if request.share.clip:
            self._tick_clip_time()
            self._clips_open -= 1
            if self._clips_open:
                self._clips_audio_s -= request.cost_s
            else:
                self._clips_audio_s = self._clips_audio_peak_s = 0.0  # no float residue
        self._lead_ended(request.share)

    def _lead_ended(self, share: Share) -> None:
        if _is_lead(share):
            job = _job_of(share)
            left = self._leads.get(job, 0) - 1
            if left > 0:
                self._leads[job] = left
            else:
                self._leads.pop(job, None)


def _log_unexpected_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the watch for lost model requests stopped", exc_info=task.exception())


def _job_of(share: Share) -> tuple[str, str]:
    return (share.tenant, share.order[0])


def _size_class(cost_s: float) -> int:
    """The line a request waits in within its job: 30-s segments share one, a 30-minute window's
    summary is in another (a request's size class is fixed, so it is found again on removal)."""
    return math.ceil(math.log2(max(cost_s, 1.0)))


def _is_lead(share: Share) -> bool:
    """A request of a job's first window (window 0), which the first-text hold lets through."""
    return bool(share.order[0]) and share.order[1] == 0


def _settle(
    future: concurrent.futures.Future[Any], *, result: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass  # settled by another path (an abort) meanwhile


_schedulers: dict[tuple[int, float | None, float | None, float | None], RequestScheduler] = {}
_schedulers_lock = threading.Lock()
_process_aborted = threading.Event()


def process_scheduler(
    max_inflight: int,
    max_audio_beside_clips_s: float | None = None,
    audio_beside_clips_ratio: float | None = None,
    overtaken_factor: float | None = None,
) -> RequestScheduler:
    """The process's scheduler for these settings (one per value: in practice one per process)."""
    with _schedulers_lock:
        key = (max_inflight, max_audio_beside_clips_s, audio_beside_clips_ratio, overtaken_factor)
        scheduler = _schedulers.get(key)
        if scheduler is None:
            scheduler = _schedulers[key] = RequestScheduler(
                max_inflight,
                max_audio_beside_clips_s=max_audio_beside_clips_s,
                audio_beside_clips_ratio=audio_beside_clips_ratio,
                overtaken_factor=overtaken_factor,
            )
            if _process_aborted.is_set():
                scheduler.abort()
        return scheduler


def abort_all() -> int:
    """Abort every request in flight or waiting in this process (a stopping worker); returns how
    many were in flight. Later requests of this process raise ``EngineAborted`` at once."""
    with _schedulers_lock:
        _process_aborted.set()
        schedulers = list(_schedulers.values())
    return sum(s.abort() for s in schedulers)
