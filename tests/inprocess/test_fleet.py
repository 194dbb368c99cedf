"""The fleet's backlog (``workers.fleet``) as /metrics and ``voxbatch status --fleet`` show it:
estimated GPU seconds per queue, tenant and priority, jobs waiting to be reduced, the drop ledger."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.cli import cli
from jobs.models import JobStatus
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.create import create_job
from jobs.steps.ending import cancel
from jobs.steps.split import split_job
from jobs.steps.window import run_window
from tests.inprocess.test_priority import cli_with
from tests.speech import Recording
from workers.drop_ledger import DropItem, claim, ledger_counts, record_error, record_job
from workers.fleet import NO_TENANT, fleet

TOKEN = "operator-token-for-tests"
# Nothing listens on port 1: the broker is "unreachable" at once, never a stray local Redis.
NO_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture
def ops_rt(make_runtime: Callable[..., Runtime]) -> Runtime:
    return make_runtime(metrics_token=TOKEN, broker_url=NO_BROKER, gpu_seconds_per_audio_second=0.5)


# --- the backlog ----------------------------------------------------------------------------------


def test_the_backlog_follows_a_job_from_queued_to_its_end(ops_rt: Runtime, tones: Recording) -> None:
    rt = ops_rt
    duration = rt.audio.probe(str(tones.path)).duration_s
    job = create_job(rt, str(tones.path), JobOptions(priority="batch"), tenant="drop", duration_s=duration)
    create_job(rt, "elsewhere.mp3", JobOptions(), duration_s=100.0)  # no tenant, not split yet
    assert rt.store.backlog() == {("drop", "batch"): pytest.approx(duration), (None, "interactive"): 100.0}
    split_job(rt, job.id)
    windows = rt.store.windows(job.id)
    assert len(windows) == 3
    assert rt.store.backlog()[("drop", "batch")] == pytest.approx(sum(w.end_s - w.start_s for w in windows))
    run_window(rt, job.id, 0)
    left = sum(w.end_s - w.start_s for w in windows[1:])
    now = fleet(rt)
    drop_row = next(b for b in now.backlog if b.tenant == "drop")
    assert (drop_row.queue, drop_row.priority) == ("gpu", "batch")
    assert drop_row.audio_s == pytest.approx(left) and drop_row.gpu_s == pytest.approx(left * 0.5)
    assert {b.tenant for b in now.backlog} == {"drop", NO_TENANT}
    assert now.queues is None  # the broker did not answer: said, not guessed
    run_window(rt, job.id, 1)
    run_window(rt, job.id, 2)
    assert rt.store.claim_reduce(job.id)  # the fan-in
    assert rt.store.get(job.id).status == JobStatus.reducing
    assert ("drop", "batch") not in rt.store.backlog()
    assert fleet(rt).reducing == {"drop": 1}
    cancel(rt, job.id)
    assert fleet(rt).reducing == {}


def test_a_cancelled_jobs_windows_leave_the_backlog(rt: Runtime, tones: Recording) -> None:
    job = create_job(rt, str(tones.path), JobOptions(), tenant="alpha", duration_s=150.0)
    split_job(rt, job.id)
    assert rt.store.backlog()
    cancel(rt, job.id)
    assert rt.store.backlog() == {}


def test_the_drop_ledger_counts_each_state(rt: Runtime) -> None:
    ids = [claim(rt.db, DropItem("b", f"inbox/{n}.mp3", "e", 1)) for n in range(5)]
    assert all(i is not None for i in ids)
    running = create_job(rt, "0.mp3", JobOptions(), tenant="drop")
    ended = create_job(rt, "1.mp3", JobOptions(), tenant="drop")
    cancel(rt, ended.id)
    record_job(rt.db, ids[0] or 0, running.id)
    record_job(rt.db, ids[1] or 0, ended.id)
    record_error(rt.db, ids[2] or 0, "not audio")
    assert ledger_counts(rt.db) == {"seen": 5, "claimed": 2, "submitted": 1, "done": 1, "rejected": 1}


def backlog_fixture(rt: Runtime, tones: Recording) -> None:
    """Tenant alpha (interactive) with one split job; the drop folder with an unsplit 2-hour one and
    one waiting to be reduced; one recording claimed in the ledger."""
    job = create_job(rt, str(tones.path), JobOptions(), tenant="alpha", duration_s=150.0)
    split_job(rt, job.id)
    create_job(rt, "storm-1.mp3", JobOptions(priority="batch"), tenant="drop", duration_s=7200.0)
    reduced = create_job(rt, str(tones.path), JobOptions(priority="batch"), tenant="drop", duration_s=150.0)
    split_job(rt, reduced.id)
    for w in rt.store.windows(reduced.id):
        run_window(rt, reduced.id, w.index)
    assert rt.store.claim_reduce(reduced.id)
    claim(rt.db, DropItem("b", "inbox/storm-2.mp3", "e", 1))


def test_metrics_show_the_backlog_per_tenant_in_gpu_seconds(ops_rt: Runtime, tones: Recording) -> None:
    backlog_fixture(ops_rt, tones)
    alpha_audio = sum(w.end_s - w.start_s for j in ops_rt.store.list_jobs(tenant="alpha")[0]
                      for w in ops_rt.store.windows(j.id))  # fmt: skip
    with TestClient(create_app(ops_rt.settings, ops_rt)) as client:
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("voxbatch_gpu_backlog_seconds", queue="gpu", tenant="drop", priority="batch") == 3600.0
    assert value(
        "voxbatch_gpu_backlog_seconds", queue="gpu", tenant="alpha", priority="interactive"
    ) == pytest.approx(alpha_audio * 0.5)
    assert value("voxbatch_backlog_audio_seconds", queue="gpu", tenant="drop", priority="batch") == 7200.0
    assert value("voxbatch_jobs_waiting_reduce", tenant="drop") == 1.0
    assert value("voxbatch_drop_objects", state="seen") == 1.0
    assert value("voxbatch_drop_objects", state="claimed") == 1.0
    assert value("voxbatch_broker_up") == 0.0


def test_status_fleet_prints_the_backlog_table(
    ops_rt: Runtime, tones: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    backlog_fixture(ops_rt, tones)
    runner = cli_with(monkeypatch, ops_rt)
    done = runner.invoke(cli, ["status", "--fleet"])
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0].startswith("backlog (estimated GPU seconds: audio seconds x 0.5")
    assert lines[1].split() == ["queue", "tenant", "priority", "audio_s", "gpu_s"]
    assert ["gpu", "drop", "batch", "7200", "3600"] in [line.split() for line in lines]
    assert any(line.split()[:3] == ["gpu", "alpha", "interactive"] for line in lines)
    after = lines[lines.index("waiting to be reduced") + 1 :]
    assert after[1].split() == ["drop", "1"]
    drop = lines[lines.index("drop folder") + 1 :]
    assert drop[0].split() == ["seen", "claimed", "submitted", "done", "rejected"]
    assert drop[1].split() == ["1", "1", "0", "0", "0"]
    assert "broker unreachable at redis://127.0.0.1:1/0" in done.stdout
    as_json = json.loads(runner.invoke(cli, ["status", "--fleet", "--json"]).stdout)
    assert as_json["gpu_backlog_s"] == pytest.approx(sum(b["gpu_s"] for b in as_json["backlog"]))
    assert as_json["drop"]["claimed"] == 1 and as_json["waiting_reduce"] == {"drop": 1}


def test_status_wants_a_job_or_fleet(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = cli_with(monkeypatch, rt)
    for args in (["status"], ["status", "abc", "--fleet"]):
        done = runner.invoke(cli, args)
        assert done.exit_code == 2 and "give a JOB id or --fleet" in done.stderr
