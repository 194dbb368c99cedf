"""Worker-side protections: a message that keeps killing its worker, Celery settings, Flower's password."""

from __future__ import annotations

from collections import Counter

import pytest
from celery.app.defaults import NAMESPACES, flatten

from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.steps.create import create_job
from workers import deliveries
from workers.celery_app import celery_config


def test_a_message_that_keeps_killing_its_worker_fails_the_job(rt: Runtime) -> None:
    job = create_job(rt, "bomb.flac", JobOptions())
    seen: Counter[str] = Counter()

    def count(key: str) -> int:
        seen[key] += 1
        return seen[key]

    runs = [deliveries.allowed(rt, job.id, "split", "task-1:0", count) for _ in range(6)]
    cap = rt.settings.max_redeliveries
    assert runs == [True] * (cap + 1) + [False] * (5 - cap)
    failed = rt.store.get(job.id)
    assert failed.status == "failed" and "worker died" in (failed.error or "")


def test_every_celery_setting_is_known_to_the_installed_celery() -> None:
    known = {key for key, _ in flatten(NAMESPACES)}
    unknown = sorted(set(celery_config(Settings())) - known)
    assert unknown == [], f"settings this Celery ignores: {unknown}"


def test_flowers_password_is_never_on_its_command_line() -> None:
    import pytest

    from jobs.errors import InputError
    from workers.services import check_basic_auth, flower_argv, flower_env

    argv = flower_argv("127.0.0.1", 5555)
    assert not any("s3cret" in a or "basic" in a for a in argv)
    assert flower_env("ops:s3cret", {})["FLOWER_BASIC_AUTH"] == "ops:s3cret"
    assert "FLOWER_BASIC_AUTH" not in flower_env(None, {"FLOWER_BASIC_AUTH": "stale:pw"})
    with pytest.raises(InputError, match="comma"):
        check_basic_auth("ops:pa,ss")


def test_a_stopping_worker_aborts_its_requests_to_the_model_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading

    from workers.engines import http, scheduler

    # This test's own process-wide scheduler and abort flag: the abort must not reach other tests.
    monkeypatch.setattr(scheduler, "_process_aborted", threading.Event())
    monkeypatch.setattr(scheduler, "_schedulers", {})
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[object] = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(2)], daemon=True).start()
    client = http.ApiClient(f"http://127.0.0.1:{server.getsockname()[1]}/v1", server="stand-in", retries=3)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.post("audio/transcriptions", json_body={})  # the server never answers
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    while not held:
        threading.Event().wait(0.05)
    assert http.abort_all() >= 1
    caller.join(timeout=20)
    assert not caller.is_alive(), "the request kept running after the abort"
    assert outcome and isinstance(outcome[0], http.EngineAborted), outcome
    with pytest.raises(http.EngineAborted):  # nothing new is sent either
        client.post("audio/transcriptions", json_body={})
    server.close()
