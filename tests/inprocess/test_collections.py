"""Collections in process: shared options, manifests checked whole, the proceedings built after
each of a collection's jobs (one summary call, none when nothing changed), deleting jobs and
collections, and the retention sweep."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import create_key
from jobs import collections, manifest, proceedings, retention, search, tenants
from jobs.errors import Conflict, NotFound
from jobs.models import JobStatus, utcnow
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.steps.create import create_job
from jobs.steps.local import run_local
from tests.fixtures.services import free_port
from tests.inprocess.conftest import FakeEngine
from tests.speech import Recording
from workers import submission


def test_a_job_that_joins_takes_the_options_it_does_not_set(rt: Runtime, tones: Recording) -> None:
    conf = collections.create(
        rt.db,
        "acme",
        "KubeCon",
        JobOptions(preset="panel", language="en", vocabulary="Kubernetes", priority="batch"),
    )
    own = create_job(
        rt,
        str(tones.path),
        JobOptions(collection="KubeCon", language="fr", vocabulary="Alice", title="Opening"),
        tenant="acme",
    )
    assert (own.collection_id, own.preset, own.language, own.priority, own.title) == (
        conf.id,
        "panel",
        "fr",
        "batch",
        "Opening",
    )
    assert own.vocabulary == "Kubernetes\nAlice"
    with pytest.raises(NotFound):  # another tenant's collection, by name or id
        create_job(rt, str(tones.path), JobOptions(collection=conf.id), tenant="bolt")
    with pytest.raises(Conflict):
        collections.create(rt.db, "acme", "KubeCon", JobOptions())
    assert collections.create(rt.db, "bolt", "KubeCon", JobOptions()).id != conf.id


@pytest.mark.parametrize("name", ["", "a/b", "..", "x" * 101, "bad\x01name"])
def test_collection_names_are_safe_folder_names(rt: Runtime, name: str) -> None:
    with pytest.raises(Exception, match="name"):
        collections.create(rt.db, "acme", name, JobOptions())


def _talks(tmp_path: Path, tones: Recording, *names: str) -> Path:
    for name in names:
        shutil.copyfile(tones.path, tmp_path / name)
    return tmp_path


def _submit(rt: Runtime, path: Path, text: str, tenant: str | None = "acme") -> list[str]:
    rows = manifest.parse(text.encode(), path.name)
    base = path.parent

    def probe(row: manifest.ManifestRow) -> float:
        source = base / row.source
        if not source.is_file():
            raise submission.unreadable(row.source)
        return rt.audio.probe(str(source)).duration_s

    def submit_one(row: manifest.ManifestRow, options: JobOptions) -> object:
        return create_job(rt, str(base / row.source), options, tenant=tenant)

    jobs = submission.submit_manifest(rt, tenant, "DevConf", rows, probe, submit_one)  # type: ignore[arg-type]
    return [j.id for j in jobs]


def test_a_manifest_with_bad_rows_is_refused_whole_with_one_line_each(
    rt: Runtime, tones: Recording, tmp_path: Path
) -> None:
    collections.create(rt.db, "acme", "DevConf", JobOptions())
    _talks(tmp_path, tones, "a.flac", "b.flac")
    bad_fields = (
        "source,title,speakers\n"
        "a.flac,Keynote,Ada Lovelace; Alan Turing\n"
        ",No source,\n"
        "a.flac,Again,\n"
        f"b.flac,{'T' * 400},\n"
        "b.flac,x,y,extra\n"
    )
    with pytest.raises(manifest.ManifestRefused) as refused:
        manifest.parse(bad_fields.encode(), "talks.csv")
    assert refused.value.problems == [
        "line 3: no source",
        "line 4: a.flac is listed twice (first on line 2)",
        "line 5: the title is longer than 300 characters",
        "line 6: 4 values for 3 columns",
    ]
    missing = "".join(
        line + "\n"
        for line in (
            '{"source": "a.flac", "title": "Keynote"}',
            '{"source": "gone.flac"}',
            '{"source": "b.flac", "tenant": "x"}',
        )
    )
    with pytest.raises(manifest.ManifestRefused) as refused:
        _submit(rt, tmp_path / "talks.jsonl", missing)
    assert refused.value.problems == [
        "line 3: unknown field(s) tenant; allowed: source, title, speakers, vocabulary"
    ]
    with pytest.raises(manifest.ManifestRefused) as refused:
        _submit(rt, tmp_path / "talks.jsonl", missing.rsplit("\n", 2)[0] + "\n")
    assert refused.value.problems == ["line 2: gone.flac does not exist or is not readable"]
    rt.settings.max_queued_hours_per_tenant = 0.05  # 3 minutes: two talks of ~2.5 min are over it
    with pytest.raises(manifest.ManifestRefused) as refused:
        _submit(rt, tmp_path / "talks.csv", "source\na.flac\nb.flac\n")
    assert len(refused.value.problems) == 1 and "h of audio" in refused.value.problems[0]
    assert rt.store.list_jobs()[1] == 0  # nothing half-submitted


def test_a_manifest_becomes_one_job_per_row_with_titles_and_speakers(
    rt: Runtime, tones: Recording, tmp_path: Path
) -> None:
    conf = collections.create(rt.db, "acme", "DevConf", JobOptions(vocabulary="Voxtral"))
    _talks(tmp_path, tones, "a.flac", "b.flac")
    text = (
        '{"source": "a.flac", "title": "Keynote", "speakers": ["Ada Lovelace"]}\n'
        '{"source": "b.flac", "vocabulary": "KV-cache, vLLM"}\n'
    )
    ids = _submit(rt, tmp_path / "talks.jsonl", text)
    jobs = [rt.store.get(i) for i in ids]
    assert [(j.collection_id, j.title, j.vocabulary) for j in jobs] == [
        (conf.id, "Keynote", "Voxtral\nAda Lovelace"),
        (conf.id, None, "Voxtral\nKV-cache\nvLLM"),
    ]


def test_proceedings_list_every_finished_talk_with_one_summary_call_per_change(
    rt: Runtime, tones: Recording, engine: FakeEngine
) -> None:
    conf = collections.create(rt.db, "acme", "DevConf", JobOptions(instructions="Mention the rooms."))
    prompts: list[str] = []
    complete = engine.complete
    engine.complete = lambda prompt: (prompts.append(prompt), complete(prompt))[1]  # type: ignore[method-assign]
    first = create_job(
        rt, str(tones.path), JobOptions(collection="DevConf", title="Keynote <1>"), tenant="acme"
    )
    second = create_job(rt, str(tones.path), JobOptions(collection="DevConf", title="Panel"), tenant="acme")
    run_local(rt, first.id)
    built = json.loads(rt.storage.get_bytes(collections.proceedings_prefix(conf.id) + "collection.json"))
    assert [t["title"] for t in built["talks"]] == ["Keynote <1>"] and built["pending"] == 1
    run_local(rt, second.id)
    prefix = collections.proceedings_prefix(conf.id)
    built = json.loads(rt.storage.get_bytes(prefix + "collection.json"))
    assert [t["job_id"] for t in built["talks"]] == [first.id, second.id] and built["pending"] == 0
    assert built["summary"] == "overall summary"
    assert built["talks"][0]["documents"]["transcript.vtt"] == f"talks/{first.id}/transcript.vtt"
    page = rt.storage.get_bytes(prefix + "index.html").decode()
    assert "Keynote &lt;1&gt;" in page and "<script" not in page
    assert "# DevConf" in rt.storage.get_bytes(prefix + "collection.md").decode()
    collection_prompts = [p for p in prompts if "recordings of one collection" in p]
    assert len(collection_prompts) == 2 and "Mention the rooms." in collection_prompts[-1]
    assert "[Panel]" in collection_prompts[-1]
    proceedings.build(rt, second.id)  # nothing changed: no new call
    assert len([p for p in prompts if "recordings of one collection" in p]) == 2
    assert sorted(proceedings.built(rt.storage, conf.id)) == [
        "collection.json",
        "collection.md",
        "index.html",
    ]
    # A deleted talk leaves the proceedings at once, with no model call; the last takes them along.
    retention.delete_job(rt, first.id, "acme")
    built = json.loads(rt.storage.get_bytes(prefix + "collection.json"))
    assert [t["job_id"] for t in built["talks"]] == [second.id] and built["summary"] == "overall summary"
    assert len([p for p in prompts if "recordings of one collection" in p]) == 2
    retention.delete_job(rt, second.id, "acme")
    assert proceedings.built(rt.storage, conf.id) == []


def test_deleting_a_job_leaves_nothing_of_its_own_and_never_the_users_recording(
    rt: Runtime, tones: Recording, tmp_path: Path
) -> None:
    source = tmp_path / "mine.flac"
    shutil.copyfile(tones.path, source)
    job = run_local(rt, create_job(rt, str(source), JobOptions(), tenant="acme").id)
    upload = "uploads/0123456789abcdef/" + "0" * 32 + "/mine.flac"
    rt.storage.put_bytes(upload, b"stored upload")
    rt.store.update(job.id, source_key=upload)
    assert list(rt.storage.list(f"jobs/{job.id}/")) and search.indexed(rt.db, job.id)
    with pytest.raises(NotFound):
        retention.delete_job(rt, job.id, "bolt")
    retention.delete_job(rt, job.id, "acme")
    assert list(rt.storage.list(f"jobs/{job.id}/")) == [] and not rt.storage.exists(upload)
    assert search.indexed(rt.db, job.id) is None and rt.store.find(job.id) is None
    assert source.read_bytes() == tones.path.read_bytes()  # the user's file is untouched
    running = create_job(rt, str(source), JobOptions(), tenant="acme")
    with pytest.raises(Conflict, match="cancel it first"):
        retention.delete_job(rt, running.id, "acme")
    assert rt.store.find(running.id) is not None


def test_the_retention_sweep_deletes_only_old_finished_jobs_of_tenants_that_ask(
    rt: Runtime, tones: Recording
) -> None:
    create_key(rt.db, "acme")
    create_key(rt.db, "bolt")
    assert tenants.set_retention(rt.db, "acme", 30)
    old, recent, other = (
        run_local(rt, create_job(rt, str(tones.path), JobOptions(), tenant=t).id)
        for t in ("acme", "acme", "bolt")
    )
    long_ago = utcnow() - timedelta(days=31)
    for job in (old, other):
        rt.store.update(job.id, finished_at=long_ago)
    assert retention.sweep_expired(rt) == [old.id]
    assert rt.store.find(old.id) is None and list(rt.storage.list(f"jobs/{old.id}/")) == []
    assert rt.store.find(recent.id) is not None and rt.store.find(other.id) is not None


def test_a_tenant_reads_and_sets_its_own_retention_over_the_api(rt: Runtime, tones: Recording) -> None:
    keys = {t: create_key(rt.db, t) for t in ("acme", "bolt")}
    app = create_app(rt.settings, rt)
    acme: httpx.Client = TestClient(app, headers={"Authorization": f"Bearer {keys['acme']}"})
    bolt: httpx.Client = TestClient(app, headers={"Authorization": f"Bearer {keys['bolt']}"})
    assert acme.get("/v1/tenant/retention").json() == {"retention_days": None}
    assert TestClient(app).get("/v1/tenant/retention").status_code == 401
    for days in (1, 30, 3650):
        answer = acme.put("/v1/tenant/retention", json={"retention_days": days})
        assert answer.status_code == 200 and answer.json() == {"retention_days": days}, answer.text
    assert acme.get("/v1/tenant/retention").json() == {"retention_days": 3650}
    assert bolt.get("/v1/tenant/retention").json() == {"retention_days": None}  # its own only
    out_of_range = "retention_days must be from 1 to 3650 (null keeps finished jobs), not "
    refused = {
        '{"retention_days": 0}': out_of_range + "0",
        '{"retention_days": 3651}': out_of_range + "3651",
        '{"retention_days": -5}': out_of_range + "-5",
        '{"retention_days": 7.5}': "retention_days must be a whole number of days or null, not '7.5'",
        '{"retention_days": "30"}': "retention_days must be a whole number of days or null, not '30'",
        '{"retention_days": true}': "retention_days must be a whole number of days or null, not 'True'",
        '{"days": 30}': 'send {"retention_days": DAYS} (DAYS from 1 to 3650, or null to keep finished jobs)',
        '{"retention_days": 30, "x": 1}': "unknown field(s): x; only retention_days",
        "[30]": 'send {"retention_days": DAYS} (DAYS from 1 to 3650, or null to keep finished jobs)',
        "thirty": 'the body is not JSON; send {"retention_days": 30} or {"retention_days": null}',
        "[" * 5000: 'the body is not JSON; send {"retention_days": 30} or {"retention_days": null}',
    }
    for body, reason in refused.items():
        answer = acme.put("/v1/tenant/retention", content=body, headers={"Content-Type": "application/json"})
        assert (answer.status_code, answer.json()) == (422, {"detail": reason}), body[:40]
    assert acme.get("/v1/tenant/retention").json() == {"retention_days": 3650}  # unchanged
    # What the API set is what the sweep applies: a job that ended 31 days ago goes at 30.
    assert acme.put("/v1/tenant/retention", json={"retention_days": 30}).status_code == 200
    old = run_local(rt, create_job(rt, str(tones.path), JobOptions(), tenant="acme").id)
    rt.store.update(old.id, finished_at=utcnow() - timedelta(days=31))
    assert retention.sweep_expired(rt) == [old.id]
    assert acme.put("/v1/tenant/retention", json={"retention_days": None}).json() == {"retention_days": None}
    assert tenants.retention_days(rt.db) == {}


def test_the_api_creates_shows_uploads_into_and_deletes_a_collection(rt: Runtime, tones: Recording) -> None:
    key = create_key(rt.db, "acme")
    client: httpx.Client = TestClient(create_app(rt.settings, rt), headers={"Authorization": f"Bearer {key}"})
    made = client.post(
        "/v1/collections", json={"name": "DevConf", "preset": "panel", "vocabulary": ["Voxtral"]}
    )
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    assert client.post("/v1/collections", json={"name": "DevConf"}).status_code == 409
    with tones.path.open("rb") as f:
        up = client.post(
            "/v1/jobs", files={"file": ("t.flac", f)}, data={"collection": "DevConf", "title": "Keynote"}
        )
    assert up.status_code == 202, up.text
    assert (up.json()["collection_id"], up.json()["preset"], up.json()["title"]) == (cid, "panel", "Keynote")
    job = run_local(rt, up.json()["id"])
    assert job.status == JobStatus.succeeded
    shown = client.get(f"/v1/collections/{cid}").json()
    assert [j["id"] for j in shown["jobs"]] == [job.id]
    assert sorted(shown["documents"]) == ["collection.json", "collection.md", "index.html"]
    page = client.get(f"/v1/collections/{cid}/documents/index.html")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    talk = client.get(f"/v1/collections/DevConf/documents/talks/{job.id}/document.md")
    assert talk.status_code == 200 and talk.text.startswith("# Keynote")
    hits = client.get("/v1/search", params={"q": "marker", "collection": "DevConf"}).json()["hits"]
    assert {h["job_id"] for h in hits} == {job.id}
    other = create_key(rt.db, "bolt")
    assert (
        client.get(f"/v1/collections/{cid}", headers={"Authorization": f"Bearer {other}"}).status_code == 404
    )
    assert client.delete(f"/v1/collections/{cid}").status_code == 204
    assert client.get(f"/v1/collections/{cid}").status_code == 404
    assert rt.store.find(job.id) is None and list(rt.storage.list(collections.proceedings_prefix(cid))) == []


def test_the_api_refuses_a_manifest_whole(rt: Runtime) -> None:
    key = create_key(rt.db, "acme")
    client: httpx.Client = TestClient(create_app(rt.settings, rt), headers={"Authorization": f"Bearer {key}"})
    assert client.post("/v1/collections", json={"name": "DevConf"}).status_code == 201
    body = "source,title\ns3://nowhere/a.mp3,A\nnot-a-source,B\ns3://nowhere/a.mp3,C\n"
    answer = client.post(
        "/v1/collections/DevConf/manifest", content=body, headers={"Content-Type": "text/csv"}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["problems"] == ["line 4: s3://nowhere/a.mp3 is listed twice (first on line 2)"]
    answer = client.post(
        "/v1/collections/DevConf/manifest",
        content=body.rsplit("\n", 2)[0] + "\n",
        headers={"Content-Type": "text/csv"},
    )
    problems = answer.json()["problems"]
    assert len(problems) == 2 and problems[0].startswith("line 2: bucket nowhere is not one")
    assert problems[1] == "line 3: a source is s3://bucket/key or the id of a completed upload"
    assert client.post("/v1/collections/DevConf/manifest", content=body).status_code == 415
    assert rt.store.list_jobs()[1] == 0


def test_the_command_line_acts_for_a_tenant_whose_key_then_sees_and_searches_it(
    tmp_path: Path, tones: Recording
) -> None:
    # What the command line makes with --tenant is what that tenant's API key lists; without it,
    # the command line's own collections, which no key sees (a name a tenant has is hinted at).
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
    # No broker answers there: submit commits the job with its step in the outbox and returns.
    env.update(
        VOXBATCH_DATA_DIR=str(tmp_path / "data"), VOXBATCH_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    key = cli("keys", "create", "acme").stdout.strip().splitlines()[-1]
    refused = cli("collection", "create", "DevConf", "--tenant", "nobody")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "voxbatch: error: no tenant 'nobody' (it is made with its first key: voxbatch keys create NAME)"
    ]
    assert cli("collection", "create", "DevConf", "--tenant", "acme", "--preset", "panel").returncode == 0
    done = cli("submit", str(tones.path), "--tenant", "acme", "--collection", "DevConf", "--title", "Keynote")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().splitlines()[-1]
    hinted = cli("submit", str(tones.path), "--collection", "DevConf")
    assert hinted.returncode == 2 and hinted.stderr.strip().splitlines() == [
        "voxbatch: error: no collection 'DevConf'; tenant 'acme' has one: add --tenant acme"
    ]
    shown = cli("collection", "show", "DevConf", "--tenant", "acme", "--json")
    assert [j["id"] for j in json.loads(shown.stdout)["jobs"]] == [job_id]

    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        seen = client.get("/v1/collections/DevConf").json()
        assert [(j["id"], j["preset"], j["title"]) for j in seen["jobs"]] == [(job_id, "panel", "Keynote")]
    assert cli("collection", "delete", "DevConf", "--yes").returncode == 2  # not the command line's
    cancelled = cli("cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    deleted = cli("collection", "delete", "DevConf", "--tenant", "acme", "--yes")
    assert deleted.returncode == 0, deleted.stderr
