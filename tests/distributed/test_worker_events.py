"""A worker event sent while Redis is down: the worker says it waits on the broker, then that the
broker answers again (workers.worker_events), instead of retrying in silence."""

from __future__ import annotations

import logging
import threading

import pytest

from jobs.settings import Settings
from tests.fixtures.services import RedisServer, wait_until
from workers.celery_app import make_celery


def test_a_worker_event_that_waits_on_a_dead_broker_says_so_and_goes_out_once_it_answers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.worker_events")
    app = make_celery(Settings(broker_url=redis_server.url))
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname="gpu.test@host")
        dispatcher.send("worker-heartbeat", retry=True)  # connected: nothing to say
        assert not caplog.records
        redis_server.stop()
        # Celery's heartbeat retries without a limit: the send returns only once Redis is back.
        sender = threading.Thread(target=dispatcher.send, args=("worker-heartbeat",), kwargs={"retry": True})
        sender.start()
        wait_until(
            lambda: any("the broker is unreachable" in r.getMessage() for r in caplog.records),
            30,
            "the event's failed publish to be logged",
        )
        assert sender.is_alive()
        redis_server.start()
        sender.join(60)
        assert not sender.is_alive()
        messages = [r.getMessage() for r in caplog.records]
        assert messages[0].startswith("worker event worker-heartbeat not sent: the broker is unreachable")
        assert messages[-1] == "worker event worker-heartbeat sent: the broker answers again"
        dispatcher.close()
