"""Messages that dead workers left in kombu's unacked set, dropped by the sweep once their work is done.

With ``task_acks_late`` (``workers.celery_app``) a message a worker has reserved waits in Redis until
the worker acks it: kombu's Redis transport keeps it in the hash ``unacked`` (delivery tag → JSON
``[message, exchange, routing_key]``) and the time it was reserved in the sorted set
``unacked_index`` (the ``unacked_key`` and ``unacked_index_key`` transport options). A worker that
never acks (SIGKILLed, or one that lost Redis while it ran a task: ``workers.broker_transport``)
leaves the entry there until the visibility timeout (6 h), when Redis gives the message back. Its
work came back long before through the database (the window's lease, the job's heartbeat, the
outbox: ``workers.sweeper``), so the entry is dead weight, and its redelivery reruns a step that is
done: harmless for the idempotent steps, but an ``announce`` sends its webhook a second time.

Each sweep reads the entries reserved more than ``safe_age_s`` ago, decodes them (Celery's message
protocol 2: the task's name in the headers, its arguments in the JSON body, the job id first) and
drops those whose work is finished, judged by the state the task itself goes by:

- ``split``, ``window``, ``overall``, ``reduce``: the job has ended (the task skips an ended job) or is gone;
- ``announce``: its step has left the outbox (``JobStore.announced``: the end was announced), or the
  job is gone;
- ``webhook``: the job's record holds a final delivery of that event, delivered or given up
  (``webhooks.settled``), or the job is gone;
- ``proceedings``: a build listed the job (``Job.proceedings_at``), the job is in no collection, or gone;
- ``sweep``: every later sweep, this one included, did its work again.

Anything else is kept for the visibility timeout, as before: another task, a message that does not
decode, work not provably finished (a running job's window, an announce still in the outbox, a
webhook still being retried). Dropping is what kombu's ack does: ZREM from the index and HDEL from
the hash, in one MULTI.

The age is a margin, not the proof: a live worker's reserved messages are in the same set (a task
running, a retry waiting for its ETA, at most ``RETRY_BACKOFF_MAX_S`` away). Dropping one whose work
is finished costs it nothing either: its ack then removes nothing, and a restore at its shutdown
finds nothing to put back.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from jobs.models import Job, JobStatus
from jobs.runtime import Runtime
from workers.broker_transport import Channel
from workers.celery_app import RETRY_BACKOFF_MAX_S, broker_transport_options
from workers.queues import ANNOUNCE, OVERALL, PROCEEDINGS, REDUCE, SPLIT, SWEEP, WEBHOOK, WINDOW
from workers.webhooks import settled

log = logging.getLogger(__name__)

# Steps that do nothing for a job that has ended (each checks the job's state first).
_JOB_STEPS = frozenset({SPLIT, WINDOW, OVERALL, REDUCE})
# Entries read from the index per round trip, and at most per sweep (a backlog waits for the next).
PAGE = 200
MAX_PER_SWEEP = 5000


def safe_age_s(lease_seconds: float) -> float:
    """Entries reserved less than this long ago are left alone: older than one lease (a killed
    worker's work has come back through the database by then) and than the longest retry backoff
    (a transient retry is an unacked message waiting for its ETA)."""
    return max(lease_seconds, float(RETRY_BACKOFF_MAX_S))


def unacked_keys(options: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """kombu's keys for the unacked hash and its index, from the broker's transport options
    (``workers.celery_app``), kombu's defaults where they name none."""
    options = broker_transport_options() if options is None else options
    prefix = str(options.get("global_keyprefix") or "")
    key = str(options.get("unacked_key") or Channel.unacked_key)
    index = str(options.get("unacked_index_key") or Channel.unacked_index_key)
    return prefix + key, prefix + index


@dataclass(frozen=True)
class Leftover:
    """One decoded entry of the unacked set."""

    tag: str
    reserved_at: float
    task: str
    args: list[Any]
    kwargs: dict[str, Any]

    @property
    def job_id(self) -> str | None:
        job_id = self.args[0] if self.args else self.kwargs.get("job_id")
        return job_id if isinstance(job_id, str) else None


def decode(tag: str, reserved_at: float, raw: bytes | str) -> Leftover | None:
    """The task an unacked entry carries; None when it is not a JSON message of Celery's protocol 2."""
    try:
        message = json.loads(raw)[0]
        task = message["headers"]["task"]
        if message.get("content-type") != "application/json":
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _embed = json.loads(body)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    if not isinstance(task, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
        return None
    return Leftover(tag, reserved_at, task, args, kwargs)


def finished(rt: Runtime, entry: Leftover, find: Callable[[str], Job | None] | None = None) -> bool:
    """Whether the work the entry's task would do is done (``find``: a job by id, None if gone;
    the store's by default)."""
    if entry.task == SWEEP:
        return True
    if entry.task not in _JOB_STEPS | {ANNOUNCE, WEBHOOK, PROCEEDINGS} or entry.job_id is None:
        return False
    job = (find or rt.store.find)(entry.job_id)
    if job is None:
        return True  # deleted: each of these tasks does nothing for a job that is not there
    if entry.task in _JOB_STEPS:
        return JobStatus(job.status).finished
    if entry.task == ANNOUNCE:
        # The announce task sends again whatever it is given: only its outbox step knows whether
        # the job's end still has to be announced.
        return not rt.store.announce_pending(job.id)
    if entry.task == PROCEEDINGS:
        return job.collection_id is None or job.proceedings_at is not None
    attempt = entry.args[1] if len(entry.args) > 1 else None  # WEBHOOK: job id, job attempt[, window]
    window = entry.args[2] if len(entry.args) > 2 else None
    if not isinstance(attempt, int) or not (window is None or isinstance(window, int)):
        return False
    return settled(job, attempt, window)


def drop_finished(rt: Runtime, client: redis.Redis) -> list[Leftover]:
    """Drop the entries of the broker's unacked set older than ``safe_age_s`` whose work is
    finished; returns them."""
    unacked_key, index_key = unacked_keys()
    cutoff = time.time() - safe_age_s(rt.settings.lease_seconds)
    jobs: dict[str, Job | None] = {}

    def find(job_id: str) -> Job | None:
        if job_id not in jobs:
            jobs[job_id] = rt.store.find(job_id)
        return jobs[job_id]

    dropped: list[Leftover] = []
    kept = 0
    while kept + len(dropped) < MAX_PER_SWEEP:
        # Oldest first; what this loop drops leaves the index, so the next page starts after those kept.
        page = cast(
            list[tuple[bytes, float]],
            client.zrange(index_key, "-inf", cutoff, byscore=True, offset=kept, num=PAGE, withscores=True),
        )
        if not page:
            break
        tags = [_text(tag) for tag, _ in page]
        raws = cast(list[bytes | None], client.hmget(unacked_key, tags))
        done = []
        for tag, (_, score), raw in zip(tags, page, raws, strict=True):
            entry = None if raw is None else decode(tag, float(score), raw)
            if entry is not None and finished(rt, entry, find):
                done.append(entry)
            else:
                kept += 1  # not ours to drop (an index entry with no message is kombu's to clear)
        if done:
            with client.pipeline(transaction=True) as pipe:  # kombu's ack, for each of them
                for entry in done:
                    pipe.zrem(index_key, entry.tag)
                    pipe.hdel(unacked_key, entry.tag)
                pipe.execute()
            dropped += done
        if len(page) < PAGE:
            break
    if dropped:
        kinds = Counter(entry.task.removeprefix("voxbatch.") for entry in dropped)
        log.info(
            "sweep: dropped %d message(s) left unacked by a lost worker, their work done (%s); "
            "%d older one(s) kept for the visibility timeout",
            len(dropped),
            ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())),
            kept,
        )
    return dropped


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
