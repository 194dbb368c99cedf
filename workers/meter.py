"""What goes to the broker, and when: the one module that decides (docs/architecture.md, "What runs
next, and when it is sent").

``jobs.steps.next.next_steps`` says what a job needs; everything that acts on the answer calls
``enqueue`` here, and everything that may free a gpu slot or make work appear calls ``wake``.

- **The outbox relay** (``relay``). A job's split is written into the ``queuedstep`` table in the
  job row's own transaction (``JobStore.add(enqueue=True)``, ``JobStore.make_ready``); the relay
  sends what the table holds and deletes it, under a database lock, sending before it commits. The
  process that committed relays at once (``relay`` right after the commit: the API, `voxbatch
  submit`, the watcher); if it died in between, a cpu worker's ``RelayPoller`` sends the step within
  ``relay_poll_s``. A crash after the send and before the commit sends the step twice: harmless,
  steps are idempotent and claims conditional.
- **The gpu queue's meter** (``meter``). Windows are not sent when the split cuts them. A window is
  sent only while fewer than ``gpu_queue_target`` windows are sent and not yet taken by a gpu
  worker; the next one is chosen by ``choose``: class first (``interactive`` before ``batch``),
  then the tenant with the fewest seconds of audio in service (windows sent or running), then the
  oldest job, then the window's order. The choice is recorded in ``Window.dispatched_at`` under the
  ``windows`` lock, and the message sent before the commit, so two meters never send one window
  and a send that fails leaves it for the next turn. The meter runs after a split registers a
  window, when a window is taken or finishes, on every sweep, and after a job ends (its unsent
  windows are never sent: only running jobs' windows are candidates; its sent ones return quietly).
  A sent window whose message vanished (Redis lost its data) is marked unsent by the sweep
  (``JobStore.undispatch_lost``) and sent again here.
- **One turn at a time per process** (``Turns``). Both take a database lock, and a caller waiting
  for it holds a pooled connection: a gpu worker's windows starting and ending together (dozens at
  once in a storm of short recordings) would each hold one, until the pool ran dry and a relay
  holding the lock waited on the pool itself. So in each process a call made while a turn of the
  same kind runs asks for one more turn after it and returns at once; the running thread makes
  that turn (with the windows taken meanwhile), so nothing asked for is skipped, and a process holds
  at most one connection waiting on each lock, whatever the number of its windows.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable
from datetime import timedelta
from typing import Any

from jobs.models import Job, JobStatus, Priority, utcnow
from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.steps.next import Step
from jobs.store import JobStore, WindowCandidate
from workers.dispatch import Dispatcher, dispatcher

log = logging.getLogger(__name__)

_CLASS_ORDER = {Priority.interactive: 0, Priority.batch: 1}


def choose(candidates: list[WindowCandidate], in_service: dict[str, float], n: int) -> list[WindowCandidate]:
    """The next ``n`` windows to send, in order: class, then fair share by audio seconds, then age.

    ``in_service``: seconds of audio per tenant in windows sent or running. Each pick adds its
    window's seconds to its tenant before the next pick, so a tenant with a long backlog and one
    with a single clip alternate by audio time, not by arrival.
    """
    service = dict(in_service)
    # Per (class, tenant), the windows in their own order: only each queue's head competes.
    heads: dict[tuple[int, str], list[WindowCandidate]] = {}
    for c in sorted(candidates, key=lambda c: (c.created_at, c.job_id, c.index)):
        heads.setdefault((_CLASS_ORDER.get(c.priority, 1), c.tenant), []).append(c)
    picks: list[WindowCandidate] = []
    while len(picks) < n and heads:
        cls, tenant = min(
            heads, key=lambda k: (k[0], service.get(k[1], 0.0), heads[k][0].created_at, heads[k][0].index)
        )
        queue = heads[(cls, tenant)]
        pick = queue.pop(0)
        if not queue:
            del heads[(cls, tenant)]
        picks.append(pick)
        service[tenant] = service.get(tenant, 0.0) + pick.seconds
    return picks


class Turns:
    """Coalesces calls from the threads of one process: one runs turns, the others leave their
    request (and what it carries) and return; the runner turns again until nobody asked."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._running = False
        self._again = False
        self._taken: set[tuple[str, int]] = set()

    def run(
        self, turn: Callable[[frozenset[tuple[str, int]]], int], taken: tuple[str, int] | None = None
    ) -> int:
        """``turn(windows taken since the last turn)``, now or by the thread already turning;
        returns what this thread's turns returned (0 when another thread makes the turn)."""
        with self._mutex:
            if taken is not None:
                self._taken.add(taken)
            if self._running:
                self._again = True
                return 0
            self._running = True
        total = 0
        try:
            while True:
                with self._mutex:
                    carried, self._taken = frozenset(self._taken), set()
                    self._again = False
                total += turn(carried)
                with self._mutex:
                    if not self._again:
                        self._running = False
                        return total
        except BaseException:
            with self._mutex:
                self._running = False
            raise


_turns: dict[tuple[str, str], Turns] = {}
_turns_lock = threading.Lock()


def _forget_turns() -> None:
    # A forked pool child starts with no turn running: a parent's turn in flight at the fork
    # would otherwise look like one forever in the child.
    global _turns, _turns_lock
    _turns, _turns_lock = {}, threading.Lock()


os.register_at_fork(after_in_child=_forget_turns)


def turns(rt: Runtime, kind: str) -> Turns:
    """This process's ``Turns`` of ``kind`` on ``rt``'s database."""
    key = (kind, rt.db.url)
    with _turns_lock:
        return _turns.setdefault(key, Turns())


def relay(rt: Runtime) -> int:
    """Send the outbox's steps now; never raises (what could not be sent stays for the poller)."""
    resend_after_s = rt.settings.announce_resend_s
    return turns(rt, "relay").run(lambda _: relay_with(rt.store, lambda: dispatcher(rt), resend_after_s))


# Broker priorities of the steps the outbox relays (Redis: the lower, the sooner a worker takes it;
# kombu keeps four lists, for 0-2, 3-5, 6-8 and 9). The cpu queue is first come, first served
# otherwise: a 5-minute clip's split would wait behind every 2-hour split of a backlog.
# Interactive before batch, and short recordings before long ones.
SHORT_RECORDING_S = 1800.0
PRIORITY_STEP = 3  # one of kombu's lists
SLOT_WAIT_S = 1.0  # a split waiting this long has found no idle cpu slot


def split_rank(job: Job) -> int:
    """Where the job's split stands in the cpu queue: 0 an interactive recording of at most
    SHORT_RECORDING_S, 3 a longer interactive one, 6 batch."""
    if job.priority == Priority.batch:
        return 2 * PRIORITY_STEP
    return 0 if (job.duration_s or 0.0) <= SHORT_RECORDING_S else PRIORITY_STEP


def step_priority(job: Job | None) -> int:
    if job is None:
        return 0
    rank = split_rank(job)
    # A job already ``splitting`` whose split is sent again stopped to make room (make_room_for,
    # below) or lost its worker: it goes one list ahead of the splits not begun, so the jobs of
    # one class finish their splits in the order they began them.
    return max(0, rank - PRIORITY_STEP) if job.status == JobStatus.splitting else rank


def make_room_for(
    rt: Runtime, job: Job, claim: Callable[[str], bool] = lambda _job_id: True
) -> Callable[[], bool]:
    """The question a long split asks between two windows: is a split of a higher rank waiting
    for a cpu slot? Priorities order the queue but cannot take a slot back: with both of a cpu
    worker's slots splitting 2-hour talks, a clip's split waited for one of them to end (12 s of
    the clip's 43 s on the fleet bench). Splits of the same rank never stop for each other.

    ``claim(waiting job id)``: True for the first split to ask for that job only
    (``room_claims``), so that one split stops for it, not every split that asks at that moment."""
    mine = split_rank(job)

    def wanted() -> bool:
        if mine == 0:
            return False
        # A job queued this instant is taken by an idle slot, if there is one, within milliseconds.
        before = utcnow() - timedelta(seconds=SLOT_WAIT_S)
        # Every rank better than a long split's is interactive: the batch backlog is not read.
        waiting = rt.store.waiting_to_split(Priority.interactive, created_before=before)
        return any(split_rank(other) < mine and claim(other.id) for other in waiting)

    return wanted


def room_claims(broker_url: str, ttl_s: float = 60.0) -> Callable[[str], bool]:
    """``claim`` for ``make_room_for`` on the broker's Redis: SET NX, kept ``ttl_s`` (the waiting
    split has a slot long before). If Redis does not answer, the split stops anyway: a stop too
    many costs a replay of the decode, one too few a clip's wait."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)

    def claim(job_id: str) -> bool:
        try:
            return bool(client.set(f"voxbatch:room-for:{job_id}", 1, nx=True, ex=round(ttl_s)))
        except redis.RedisError as exc:
            log.warning("could not claim room for job %s's split: %s", job_id, exc)
            return True

    return claim


def relay_with(store: JobStore, sender: Callable[[], Dispatcher], resend_after_s: float = 120.0) -> int:
    def send(row: Any, job: Job | None) -> None:
        step = Step(row.kind, row.job_id, row.index, reason="relayed from the outbox")
        sender().send(step, retry=False, priority=step_priority(job))

    try:
        sent = store.relay(send, resend_after_s=resend_after_s)
    except Exception as exc:
        log.warning("outbox: could not hand steps to the broker now (a cpu worker retries): %s", exc)
        return 0
    if sent:
        log.info("outbox: %d step(s) sent", sent)
    return sent


def meter(rt: Runtime, taken: tuple[str, int] | None = None) -> int:
    """Fill the gpu queue up to its target with the fairest next windows; never raises.

    ``taken``: the window a gpu worker just received (its slot in the queue is free). Returns the
    windows sent by this call's turns (0 when another thread of the process turns for it)."""
    return turns(rt, "meter").run(lambda carried: meter_once(rt, carried), taken)


def meter_once(rt: Runtime, taken: Collection[tuple[str, int]] = ()) -> int:
    """One turn of the meter, not coalesced (``meter`` is what callers use)."""

    def send(picks: list[WindowCandidate]) -> None:
        sender = dispatcher(rt)
        for p in picks:
            sender.send(Step("window", p.job_id, p.index, reason="metered into the gpu queue"), retry=False)

    try:
        picks = rt.store.meter_windows(rt.settings.gpu_queue_target, choose, send, taken=taken)
    except Exception as exc:
        log.warning("meter: could not send windows now (the next wake or sweep retries): %s", exc)
        return 0
    for p in picks:
        log.info(
            "job %s: window %d sent to the gpu queue (tenant %r, %s)", p.job_id, p.index, p.tenant, p.priority
        )
    return len(picks)


def wake(rt: Runtime, taken: tuple[str, int] | None = None) -> None:
    """Relay the outbox, then meter the gpu queue: after anything that may make work due or free
    a slot. Never raises."""
    relay(rt)
    meter(rt, taken)


def enqueue(rt: Runtime, steps: Iterable[Step]) -> None:
    """Act on ``next_steps``' answer: splits and reduces through the outbox (sent at once, kept
    if the broker is away), windows through the meter. Never raises."""
    steps = list(steps)
    other = [(s.kind, s.job_id, s.index) for s in steps if s.kind != "window"]
    for s in steps:
        log.info(
            "job %s: due: %s%s (%s)", s.job_id, s.kind, "" if s.index is None else f" {s.index}", s.reason
        )
    if other:
        try:
            rt.store.queue_steps(other)
        except Exception:
            log.exception("could not write steps into the outbox: %s", other)
    wake(rt)


def wake_after_end(rt: Runtime, job_id: str) -> None:
    """A Runtime end hook: the ending's announce step (committed with the end) is relayed, and an
    ended job's slots in the gpu queue go to other jobs at once."""
    wake(rt)


class RelayPoller:
    """A daemon thread in a cpu worker's main process: every ``relay_poll_s`` it relays steps a
    submitter committed but did not send (it died right after the commit, or the broker was away),
    so such a job waits seconds, not the sweep's ``orphan_after_s``."""

    def __init__(self, settings: Settings, sender: Dispatcher) -> None:
        self.settings = settings
        self.sender = sender
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="voxbatch-outbox-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from jobs.db import Database

        store = JobStore(Database(self.settings.resolved_database_url()))
        while not self._stop.wait(self.settings.relay_poll_s):
            relay_with(store, lambda: self.sender, self.settings.announce_resend_s)
