"""Priority as a job option (API field, CLI option) and the drop folder's tenant limits, in process."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.app import create_app
from api.cli import cli
from api.keys import create_key
from jobs.errors import TooBusy
from jobs.models import JobStatus, Priority
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.create import create_job
from tests.inprocess.conftest import RecordingDispatcher
from tests.speech import Recording


@pytest.fixture
def dispatcher(monkeypatch: pytest.MonkeyPatch) -> RecordingDispatcher:
    sent = RecordingDispatcher()
    monkeypatch.setattr("workers.dispatch.Dispatcher", lambda settings: sent)
    return sent


def cli_with(monkeypatch: pytest.MonkeyPatch, rt: Runtime) -> CliRunner:
    """The `voxbatch` group in this process, on ``rt``'s settings (database and data dir)."""
    monkeypatch.setattr("api.cli.common.get_settings", lambda: rt.settings)
    return CliRunner()


# --- priority -------------------------------------------------------------------------------------


def test_the_api_takes_priority_in_a_form_and_in_json_and_shows_it(
    rt: Runtime, tones: Recording, dispatcher: RecordingDispatcher
) -> None:
    app = create_app(rt.settings, rt)
    with TestClient(app, headers={"Authorization": f"Bearer {create_key(rt.db, 'alpha')}"}) as client:
        batch = client.post(
            "/v1/jobs", files={"file": ("t.flac", tones.path.read_bytes())}, data={"priority": "batch"}
        )
        default = client.post("/v1/jobs", files={"file": ("t.flac", tones.path.read_bytes())})
        assert batch.status_code == 202 and default.status_code == 202, (batch.text, default.text)
        assert batch.json()["priority"] == "batch" and default.json()["priority"] == "interactive"
        assert client.get(f"/v1/jobs/{batch.json()['id']}").json()["priority"] == "batch"
    assert rt.store.get(batch.json()["id"]).priority == Priority.batch


@pytest.mark.parametrize("how", ["form", "json"])
def test_the_api_refuses_an_unknown_priority_in_one_line(
    rt: Runtime, tones: Recording, dispatcher: RecordingDispatcher, how: str
) -> None:
    app = create_app(rt.settings, rt)
    with TestClient(app, headers={"Authorization": f"Bearer {create_key(rt.db, 'alpha')}"}) as client:
        if how == "form":
            answer = client.post(
                "/v1/jobs", files={"file": ("t.flac", tones.path.read_bytes())}, data={"priority": "urgent"}
            )
        else:
            answer = client.post("/v1/jobs", json={"source": "s3://b/k.mp3", "priority": "urgent"})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert "priority" in detail and "\n" not in detail
    assert rt.store.list_jobs()[1] == 0 and dispatcher.sent == []


def test_voxbatch_submit_takes_priority(
    rt: Runtime, tones: Recording, dispatcher: RecordingDispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = cli_with(monkeypatch, rt)
    done = runner.invoke(cli, ["submit", str(tones.path), "--priority", "batch"])
    assert done.exit_code == 0, done.output
    job_id = done.stdout.strip().splitlines()[-1]
    assert rt.store.get(job_id).priority == Priority.batch
    plain = runner.invoke(cli, ["submit", str(tones.path)])
    assert rt.store.get(plain.stdout.strip().splitlines()[-1]).priority == Priority.interactive


@pytest.mark.parametrize("command", ["submit", "run"])
def test_a_bad_priority_on_the_command_line_is_exit_2_and_one_line(
    rt: Runtime, tones: Recording, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    done = cli_with(monkeypatch, rt).invoke(cli, [command, str(tones.path), "--priority", "urgent"])
    assert done.exit_code == 2
    assert done.stderr.strip() == "voxbatch: error: priority must be interactive or batch, not 'urgent'"
    assert rt.store.list_jobs()[1] == 0


def test_voxbatch_run_keeps_priority_out_of_the_resume_fingerprint(rt: Runtime, tones: Recording) -> None:
    from jobs.steps.local import job_for_file

    job, resumed = job_for_file(rt, tones.path, JobOptions(priority="batch").validated(rt.settings))
    assert job.priority == Priority.batch and not resumed
    again, resumed = job_for_file(rt, tones.path, JobOptions().validated(rt.settings))
    assert again.id == job.id and resumed


# --- the drop tenant's limits ---------------------------------------------------------------------


def test_the_drop_tenant_has_its_own_limits(make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime(max_active_jobs_per_tenant=1, drop_max_active_jobs=3)
    create_job(rt, "a.mp3", JobOptions(), tenant="alpha", duration_s=60)
    with pytest.raises(TooBusy, match="VOXBATCH_MAX_ACTIVE_JOBS_PER_TENANT"):
        create_job(rt, "b.mp3", JobOptions(), tenant="alpha", duration_s=60)
    for name in ("c.mp3", "d.mp3", "e.mp3"):  # a storm is not refused at an API tenant's limit
        create_job(rt, name, JobOptions(priority="batch"), tenant="drop", duration_s=60)
    with pytest.raises(TooBusy, match="VOXBATCH_DROP_MAX_ACTIVE_JOBS"):
        create_job(rt, "f.mp3", JobOptions(priority="batch"), tenant="drop", duration_s=60)


def test_the_default_drop_limits_take_a_120_recording_storm(rt: Runtime) -> None:
    for n in range(120):  # issue 25's storm, 2-hour recordings (240 h in all)
        create_job(rt, f"{n}.mp3", JobOptions(priority="batch"), tenant="drop", duration_s=7200)
    assert rt.store.tenant_load("drop") == (120, 120 * 7200.0)


def test_a_long_split_makes_room_only_for_a_better_ranked_split_that_waits(
    rt: Runtime, tones: Recording
) -> None:
    from datetime import timedelta

    from jobs.models import Job, utcnow
    from workers.meter import make_room_for

    def waiting_since(job_id: str, seconds: float) -> Job:
        with rt.db.session() as s:  # as if created that long ago
            row = s.get(Job, job_id)
            assert row is not None
            row.created_at = utcnow() - timedelta(seconds=seconds)
            s.add(row)
            s.commit()
        return rt.store.get(job_id)

    def job(priority: Priority, duration_s: float, waiting_s: float) -> Job:
        made = create_job(rt, str(tones.path), JobOptions(priority=priority), duration_s=duration_s)
        return waiting_since(made.id, waiting_s)

    talk = job(Priority.interactive, 7200.0, 60.0)
    dropped = job(Priority.batch, 7200.0, 60.0)
    assert not make_room_for(rt, talk)()  # a batch job waiting never stops an interactive split
    assert make_room_for(rt, dropped)()  # the interactive talk waits: the batch split stops
    clip = job(Priority.interactive, 300.0, 0.0)
    rt.store.transition(talk.id, [JobStatus.queued], JobStatus.splitting)
    assert not make_room_for(rt, talk)()  # a clip queued this instant: an idle slot may take it
    waiting_since(clip.id, 5.0)
    assert make_room_for(rt, talk)()  # the clip has waited: the talk's split stops for it
    claimed: set[str] = set()

    def claim(job_id: str) -> bool:  # as room_claims: the first split to ask, only
        first = job_id not in claimed
        claimed.add(job_id)
        return first

    other_talk = job(Priority.interactive, 7200.0, 60.0)
    rt.store.transition(other_talk.id, [JobStatus.queued], JobStatus.splitting)
    assert make_room_for(rt, talk, claim)()
    assert not make_room_for(rt, other_talk, claim)()  # one split stops for the clip, not both
    assert not make_room_for(rt, rt.store.get(clip.id))()  # a clip never stops
