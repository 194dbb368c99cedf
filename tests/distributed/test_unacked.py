"""Messages a SIGKILLed worker left in kombu's unacked set (issue 21): with ``task_acks_late`` a
worker's reserved messages wait in Redis's ``unacked`` hash until it acks them, and Redis gives them
back only after the visibility timeout (6 h), long after the database brought their work back. The
sweep drops those whose work is done, and keeps the others (a job still running, an entry young
enough to be a live worker's, a message it cannot read).

Entries are made by kombu itself: a real worker SIGKILLed while it holds a window, or a consumer
that reserves a message and dies without acking it. Their age is the reservation time kombu wrote
into ``unacked_index``: "an hour ago" is that score moved back an hour, not a wait.
"""

from __future__ import annotations

import ast
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlmodel import Session

from jobs.db import Database
from jobs.models import Job, JobStatus, utcnow
from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.storage import LocalStorage
from tests.distributed.conftest import Stack
from tests.distributed.test_workers import ALL_MARKERS, WINDOW, running_window
from tests.fixtures.services import Postgres, RedisServer, wait_until
from tests.speech import Recording
from workers import unacked
from workers.celery_app import make_celery
from workers.queues import ANNOUNCE, OVERALL, PROCEEDINGS, REDUCE, SPLIT, SWEEP, WEBHOOK
from workers.queues import WINDOW as WINDOW_TASK
from workers.sweeper import sweep

# kombu's names for them (the app sets no ``unacked_key`` / ``unacked_index_key`` of its own).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
HOUR_S = 3600.0


@pytest.fixture(autouse=True)
def _bounded(request: pytest.FixtureRequest) -> None:
    request.node.add_marker(pytest.mark.timeout(300))


def entries(broker: redis.Redis) -> dict[str, tuple[str, list[Any]]]:
    """The unacked set as (task, args) by delivery tag, read from the headers Celery writes."""
    found = {}
    for tag, raw in broker.hgetall(UNACKED).items():
        headers = json.loads(raw)[0]["headers"]
        found[tag.decode()] = (headers["task"], ast.literal_eval(headers["argsrepr"]))
    return found


def age(broker: redis.Redis, tag: str, seconds: float) -> None:
    """As if the entry had been reserved ``seconds`` earlier."""
    score = broker.zscore(UNACKED_INDEX, tag)
    assert score is not None
    broker.zadd(UNACKED_INDEX, {tag: score - seconds}, xx=True)


def test_the_sweep_drops_a_sigkilled_workers_message_once_its_job_has_ended(
    stack_factory: Callable[..., Stack], marker_recording: Recording
) -> None:
    lease = 6.0
    # No answer until the victim is dead: it holds its window's message when it is killed.
    stack = stack_factory({"hold_markers": ALL_MARKERS}, VOXBATCH_LEASE_SECONDS=str(lease))
    c = stack.cluster
    cpu = c.start_worker("cpu", 1)
    victim = c.start_worker("gpu", 1)
    c.start_worker("gpu", 2)
    job_id = c.submit(marker_recording.path, *WINDOW)
    rt = c.runtime()
    window = wait_until(lambda: running_window(rt, job_id, victim.pid), 60, "a window on the victim")
    c.signal_worker(victim, signal.SIGKILL)
    stack.vllm.release()
    waited = c.wait(job_id, 90)  # the window came back through its lease and the sweep
    assert waited.returncode == 0, (waited.stderr, c.logs())

    broker = redis.Redis.from_url(stack.redis.url)
    held = (WINDOW_TASK, [job_id, window.index])  # type: ignore[attr-defined]
    # Nothing acked the victim's message: it stays until the visibility timeout.
    (tag,) = [t for t, entry in entries(broker).items() if entry == held]
    # The only sweeper from here on is this test: the count below is this sweep's.
    c.signal_worker(cpu, signal.SIGTERM)
    cpu.process.wait(60)

    sweep(rt)
    assert tag in entries(broker)  # reserved seconds ago: it could be a live worker's
    age(broker, tag, HOUR_S)  # an hour after the kill, five before Redis would give it back
    report = sweep(rt)
    assert tag not in entries(broker), c.logs()
    assert broker.zscore(UNACKED_INDEX, tag) is None
    assert report.unacked_dropped == 1
    assert JobStatus(rt.store.get(job_id).status) == JobStatus.succeeded


# --- the decision, entry by entry ---------------------------------------------------------------


def reserve_and_die(app: Celery, task: str, args: list[Any], queue: str) -> str:
    """Send ``task`` and take its message the way a worker does (kombu writes it into the unacked
    set), then vanish without acking it, as a SIGKILLed worker does; returns its delivery tag."""
    app.send_task(task, args=args, queue=queue)
    with app.connection_for_read() as conn:
        channel: Any = conn.default_channel
        channel.qos.restore_at_shutdown = False  # a killed worker puts nothing back
        message = channel.basic_get(queue, no_ack=False)
        assert message is not None
        return str(message.delivery_tag)


def test_only_entries_whose_work_is_done_and_older_than_the_safe_age_are_dropped(
    redis_server: RedisServer, postgres: Postgres, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=postgres.fresh_database_url(), broker_url=redis_server.url
    )
    db = Database(settings.resolved_database_url())
    db.migrate()
    rt = Runtime(
        db=db, storage=LocalStorage(tmp_path / "s"), audio=None, settings=settings, engine_factory=None
    )  # type: ignore[arg-type]
    app = make_celery(settings)
    broker = redis.Redis.from_url(redis_server.url)

    def job(status: JobStatus, **values: Any) -> str:
        row = rt.store.add(Job(source="s3://b/talk.mp3", source_name="talk.mp3"))
        with Session(db.engine) as s:
            stored = s.get(Job, row.id)
            assert stored is not None
            stored.status = status
            for name, value in values.items():
                setattr(stored, name, value)
            s.add(stored)
            s.commit()
        return row.id

    def attempts(*records: dict[str, Any]) -> str:
        return json.dumps(list(records))

    succeeded, failed = job(JobStatus.succeeded), job(JobStatus.failed)
    running = job(JobStatus.transcribing)
    gone = "0" * 32
    announced = job(JobStatus.succeeded, webhook_url="https://example.org/hook")
    to_announce = job(JobStatus.succeeded, webhook_url="https://example.org/hook")
    rt.store.queue_steps([("announce", to_announce, None)])  # still in the outbox: not announced yet
    delivered = job(
        JobStatus.succeeded,
        attempt=1,
        webhook_attempts=attempts(
            {"status": "failed", "event": "job.finished", "job_attempt": 1, "delivery": 1},
            {"status": "delivered", "event": "job.finished", "job_attempt": 1, "delivery": 2},
            {"status": "gave_up", "event": "window.done", "window": 0, "job_attempt": 0},
        ),
    )
    retrying = job(
        JobStatus.succeeded,
        webhook_attempts=attempts({"status": "failed", "event": "job.finished", "job_attempt": 0}),
    )
    listed = job(JobStatus.succeeded, collection_id="c" * 32, proceedings_at=utcnow())
    unlisted = job(JobStatus.succeeded, collection_id="c" * 32)

    done = {
        "split of an ended job": (SPLIT, [failed], "cpu"),
        "window of an ended job": (WINDOW_TASK, [succeeded, 1], "gpu"),
        "overall of an ended job": (OVERALL, [succeeded], "gpu"),
        "reduce of a deleted job": (REDUCE, [gone], "cpu"),
        "announce whose step left the outbox": (ANNOUNCE, [announced], "cpu"),
        "webhook delivered": (WEBHOOK, [delivered, 1], "cpu"),
        "window webhook given up": (WEBHOOK, [delivered, 0, 0], "cpu"),
        "webhook of a deleted job": (WEBHOOK, [gone, 0], "cpu"),
        "proceedings of a listed job": (PROCEEDINGS, [listed], "gpu"),
        "proceedings of a deleted job": (PROCEEDINGS, [gone], "gpu"),
        "an old sweep": (SWEEP, [], "cpu"),
    }
    not_done = {
        "window of a running job": (WINDOW_TASK, [running, 0], "gpu"),
        "split of a running job": (SPLIT, [running], "cpu"),
        "announce still in the outbox": (ANNOUNCE, [to_announce], "cpu"),
        "webhook still being retried": (WEBHOOK, [retrying, 0], "cpu"),
        "webhook of an earlier attempt never delivered": (WEBHOOK, [delivered, 0], "cpu"),
        "window webhook of another window": (WEBHOOK, [delivered, 0, 1], "cpu"),
        "proceedings no build listed": (PROCEEDINGS, [unlisted], "gpu"),
        "a task the sweep does not know": ("voxbatch.nosuch", [succeeded], "cpu"),
        "a job id that is not a string": (WINDOW_TASK, [7, 0], "gpu"),
    }
    tags = {}
    for name, (task, args, queue) in {**done, **not_done}.items():
        tags[name] = reserve_and_die(app, task, args, queue)
        age(broker, tags[name], HOUR_S)
    # Reserved just now: a live worker may be running it (or waiting for a retry's ETA).
    tags["young window of an ended job"] = reserve_and_die(app, WINDOW_TASK, [succeeded, 2], "gpu")
    almost = "window of an ended job, reserved just under the safe age ago"
    tags[almost] = reserve_and_die(app, WINDOW_TASK, [succeeded, 3], "gpu")
    age(broker, tags[almost], unacked.safe_age_s(settings.lease_seconds) - 30)
    # Not a kombu message at all.
    broker.hset(UNACKED, "garbage", b"not json")
    broker.zadd(UNACKED_INDEX, {"garbage": time.time() - HOUR_S})
    tags["garbage"] = "garbage"
    # An index entry with no message (kombu's own restore may leave one): nothing to decide on.
    broker.zadd(UNACKED_INDEX, {"orphan": time.time() - HOUR_S})

    dropped = unacked.drop_finished(rt, broker)

    left = broker.hkeys(UNACKED)
    kept = {name for name, tag in tags.items() if tag.encode() in left}
    assert kept == set(tags) - set(done), sorted(set(tags) - kept)
    assert sorted(e.tag for e in dropped) == sorted(tags[name] for name in done)
    # As kombu's ack: the index loses what the hash lost, and nothing else.
    indexed = {t.decode() for t in broker.zrange(UNACKED_INDEX, 0, -1)}
    assert indexed == {tags[name] for name in kept} | {"orphan"}
    assert unacked.drop_finished(rt, broker) == []  # the next sweep finds nothing more
