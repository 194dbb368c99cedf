"""The watcher against a moto S3 server: real boto3, real AWS CLI uploads, real ffprobe, real SQLite.

Jobs are created for real (``jobs.steps.create.create_job``) but not enqueued; the end-to-end test runs them.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import select

from api.keys import create_key
from jobs.errors import StorageUnavailable
from jobs.models import DropObject, Job, utcnow
from jobs.options import JobOptions
from tests.watcher.conftest import CountingAudio, DropWorld
from workers.audio import FfmpegAudio
from workers.drop_ledger import STALE_CLAIM, DropItem, claim
from workers.watcher import Watcher, sidecar_key

NAMES = ["talk.wav", "track b/Panel.wav", "track b/deep/nested/Ünïcode talk ☕.wav", "a+b%20c.wav"]


def jobs(drop: DropWorld) -> list[Job]:
    with drop.db.session() as s:
        return list(s.exec(select(Job)))


def ledger(drop: DropWorld) -> list[DropObject]:
    with drop.db.session() as s:
        return list(s.exec(select(DropObject)))


@pytest.fixture
def inbox_dir(tmp_path: Path, short_speech: Path, long_wav: Path) -> Path:
    """Recordings with spaces, unicode and nesting; one of them multipart-sized; a sidecar; a text file."""
    root = tmp_path / "inbox"
    for name in NAMES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(short_speech, root / name)
    shutil.copyfile(long_wav, root / "track b" / "long recording.wav")
    (root / "track b" / "Panel.json").write_text(
        json.dumps({"instructions": "List every decision.", "language": "en"})
    )
    (root / "notes.txt").write_text("not a recording at all\n")
    return root


def test_scan_ingests_every_recording_once(drop: DropWorld, aws_cp: Any, inbox_dir: Path) -> None:
    aws_cp(inbox_dir, f"s3://{drop.bucket}/inbox/")
    # A console "folder": zero bytes, key ending in "/".
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/empty folder/", Body=b"")

    report = drop.watcher().scan()

    assert report.listed == len(NAMES) + 4  # + long recording, sidecar, text file, folder
    assert report.recordings == len(NAMES) + 2  # sidecar and folder are not recordings
    assert len(report.submitted) == len(NAMES) + 1
    assert report.rejected == ["inbox/notes.txt"]
    created = {j.source_name: j for j in jobs(drop)}
    assert set(created) == {Path(n).name for n in NAMES} | {"long recording.wav"}
    # The job's source names the exact key, however odd its characters.
    from jobs.storage_urls import parse_s3_url

    keys = {parse_s3_url(j.source)[1] for j in created.values()}
    assert keys == {f"inbox/{n}" for n in [*NAMES, "track b/long recording.wav"]}
    # The multipart upload is one object with a multipart ETag, and one job.
    rows = {r.key: r for r in ledger(drop)}
    assert rows["inbox/track b/long recording.wav"].etag.endswith("-2")
    assert rows["inbox/track b/long recording.wav"].job_id == created["long recording.wav"].id
    # The sidecar set Panel's options; the others have the defaults.
    assert created["Panel.wav"].instructions == "List every decision."
    assert created["Panel.wav"].language == "en"
    assert created["talk.wav"].instructions is None
    # The text file got error.json (and no job); nothing else is in the outbox.
    assert drop.outbox_keys() == ["outbox/notes.txt/error.json"]
    error = json.loads(drop.get("outbox/notes.txt/error.json"))
    assert error["key"] == "inbox/notes.txt"
    assert "not an audio or video file" in error["reason"]
    assert rows["inbox/notes.txt"].job_id is None and rows["inbox/notes.txt"].error

    again = drop.watcher().scan()
    assert again.recordings == report.recordings
    assert again.new == 0 and again.submitted == [] and again.rejected == []
    assert len(jobs(drop)) == len(NAMES) + 1


def test_new_content_under_the_same_key_is_a_new_job(
    drop: DropWorld, short_speech: Path, long_wav: Path
) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/a/rec.wav")
    first = drop.watcher().scan()
    drop.s3.upload_file(str(long_wav), drop.bucket, "inbox/a/rec.wav")
    second = drop.watcher().scan()
    assert len(first.submitted) == 1 and len(second.submitted) == 1
    assert first.submitted != second.submitted
    assert len({r.etag for r in ledger(drop)}) == 2
    # The source is never modified or deleted.
    assert (
        drop.s3.head_object(Bucket=drop.bucket, Key="inbox/a/rec.wav")["ContentLength"]
        == long_wav.stat().st_size
    )


def test_two_watchers_at_once_make_no_duplicate(drop: DropWorld, short_speech: Path) -> None:
    keys = [f"inbox/batch/{i:02d} take.wav" for i in range(12)]
    for key in keys:
        drop.s3.upload_file(str(short_speech), drop.bucket, key)
    watchers = [drop.watcher(), drop.watcher(), drop.watcher()]
    start = threading.Barrier(len(watchers))
    reports: list[Any] = [None] * len(watchers)

    def run(i: int) -> None:
        start.wait()
        reports[i] = watchers[i].scan()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(watchers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r.submitted) for r in reports) == len(keys)
    assert sorted(j.source_name for j in jobs(drop)) == sorted(Path(k).name for k in keys)
    assert len(ledger(drop)) == len(keys)


def test_the_loser_of_the_insert_does_nothing(drop: DropWorld, short_speech: Path) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/x.wav")
    etag = drop.s3.head_object(Bucket=drop.bucket, Key="inbox/x.wav")["ETag"].strip('"')
    item = DropItem(drop.bucket, "inbox/x.wav", etag, short_speech.stat().st_size)
    # Another watcher inserted the row after this one's bulk lookup: the constraint decides.
    assert claim(drop.db, item) is not None
    assert claim(drop.db, item) is None
    calls: list[str] = []
    report = drop.watcher(submit=lambda s, o, source_name: calls.append(s) or "x").ingest(item)
    assert report.new == 0 and calls == []
    watcher = drop.watcher(submit=lambda s, o, source_name: calls.append(s) or "x")
    report = watcher.scan()
    assert report.new == 0 and calls == []
    # A race lost inside _ingest_all (lookup said new, insert said no) counts as raced.
    from workers.watcher import ScanReport

    lost = ScanReport()
    watcher._ingest_all([item], lost)
    assert lost.raced == 1 and calls == []


def test_sidecar_and_prefix_presets(drop: DropWorld, short_speech: Path) -> None:
    for key in ["inbox/panels/a.wav", "inbox/panels/b.wav", "inbox/panels/standup/c.wav", "inbox/d.wav"]:
        drop.s3.upload_file(str(short_speech), drop.bucket, key)
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/panels/b.json", Body=b'{"preset": "lecture"}')
    watcher = drop.watcher(drop_presets={"panels/": "panel", "panels/standup/": "meeting"})
    assert len(watcher.scan().submitted) == 4
    presets = {j.source_name: j.preset for j in jobs(drop)}
    assert presets == {"a.wav": "panel", "b.wav": "lecture", "c.wav": "meeting", "d.wav": "conference-talk"}


@pytest.mark.parametrize(
    ("sidecar", "reason"),
    [
        (b"{not json", "is not valid JSON"),
        (b'{"instruction": "typo"}', "unknown field(s) instruction"),
        (b'{"preset": "no-such-preset"}', "no-such-preset"),
        (b'{"language": 12}', "language must be a string"),
    ],
)
def test_a_bad_sidecar_rejects_its_recording(
    drop: DropWorld, short_speech: Path, sidecar: bytes, reason: str
) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/q/talk.mp3")
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/q/talk.json", Body=sidecar)
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/q/fine.wav")
    report = drop.watcher().scan()
    assert report.rejected == ["inbox/q/talk.mp3"]
    assert len(report.submitted) == 1
    assert reason in json.loads(drop.get("outbox/q/talk.mp3/error.json"))["reason"]


def test_empty_object_is_rejected_without_a_probe(drop: DropWorld) -> None:
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/silent.mp3", Body=b"")
    report = drop.watcher().scan()
    assert report.rejected == ["inbox/silent.mp3"]
    assert "empty" in json.loads(drop.get("outbox/silent.mp3/error.json"))["reason"]
    assert jobs(drop) == []


def test_trouble_while_submitting_defers_to_the_next_scan(drop: DropWorld, short_speech: Path) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/r.wav")

    def broker_down(
        source: str,
        options: JobOptions,
        source_name: str,
        tenant: str | None = None,
        duration_s: float | None = None,
    ) -> str:
        raise StorageUnavailable("the broker did not answer")

    report = drop.watcher(submit=broker_down).scan()
    assert report.deferred == ["inbox/r.wav"] and ledger(drop) == []
    assert len(drop.watcher().scan().submitted) == 1


def test_a_claim_left_by_a_dead_watcher_is_taken_again(drop: DropWorld, short_speech: Path) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/s.wav")
    etag = drop.s3.head_object(Bucket=drop.bucket, Key="inbox/s.wav")["ETag"].strip('"')
    row_id = claim(drop.db, DropItem(drop.bucket, "inbox/s.wav", etag, 1))
    assert drop.watcher().scan().submitted == []  # a live claim is respected
    with drop.db.session() as s:
        row = s.get(DropObject, row_id)
        assert row is not None
        row.created_at = utcnow() - STALE_CLAIM * 2
        s.add(row)
        s.commit()
    assert len(drop.watcher().scan().submitted) == 1


def test_tagging_processed_recordings_keeps_owner_tags_and_etag(drop: DropWorld, short_speech: Path) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/t.wav", ExtraArgs={"Tagging": "team=blue"})
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/u.txt", Body=b"text")
    before = drop.s3.head_object(Bucket=drop.bucket, Key="inbox/t.wav")["ETag"]
    report = drop.watcher(drop_tag_processed=True).scan()
    tags = drop.s3.get_object_tagging(Bucket=drop.bucket, Key="inbox/t.wav")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "blue", "voxbatch": report.submitted[0]}
    assert drop.s3.head_object(Bucket=drop.bucket, Key="inbox/t.wav")["ETag"] == before
    tags = drop.s3.get_object_tagging(Bucket=drop.bucket, Key="inbox/u.txt")["TagSet"]
    assert tags == [{"Key": "voxbatch", "Value": "rejected"}]
    # Tagging does not make a new ETag, so the next scan has nothing to do.
    assert drop.watcher(drop_tag_processed=True).scan().new == 0


def test_2500_objects_are_listed_and_looked_up_in_bulk(drop: DropWorld, short_speech: Path) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    old = [f"inbox/archive/{i // 100:02d}/clip {i:04d}.mp3" for i in range(2497)]
    # Seeded straight into the in-process moto server's state (2,500 HTTP PUTs take ~20 s on
    # moto); the scan itself lists them over HTTP like any S3 client.
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in old:
        backend.put_object(drop.bucket, key, b"x")
    etag = drop.s3.head_object(Bucket=drop.bucket, Key=old[0])["ETag"].strip('"')
    # Earlier scans took these (they got their error.json back then): one bulk insert seeds it.
    with drop.db.session() as s:
        s.add_all([DropObject(bucket=drop.bucket, key=k, etag=etag, size=1, error="seen") for k in old])
        s.commit()
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/zz/new one.wav")
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/archive/05/clip 0500b.wav")
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/aa.txt", Body=b"hello")

    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(drop.db.engine, "before_cursor_execute", count)
    try:
        report = drop.watcher().scan()
    finally:
        event.remove(drop.db.engine, "before_cursor_execute", count)
    assert report.listed == 2500 and report.recordings == 2500
    assert report.ledger_queries == 3  # one lookup per page of 1000
    assert report.new == 3 and len(report.submitted) == 2 and report.rejected == ["inbox/aa.txt"]
    # Listing plus the new objects: 3 lookups, the stale-claim sweep, and a handful per new object
    # (one of them, for a recording in a folder, whether the folder names a collection).
    assert len(statements) <= 3 + 1 + 3 * 5, statements
    assert drop.watcher().scan().new == 0


def test_sidecar_key() -> None:
    assert sidecar_key("inbox/a b/Panel.mp3") == "inbox/a b/Panel.json"
    assert sidecar_key("Panel.mp3") == "Panel.json"
    assert sidecar_key("inbox/x.tar.gz") == "inbox/x.tar.json"


def test_run_scans_every_interval_until_stopped(drop: DropWorld, short_speech: Path) -> None:
    from tests.fixtures.services import wait_until

    watcher = drop.watcher(watch_interval_s=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/later.wav")
        wait_until(lambda: [j.source_name for j in jobs(drop)] == ["later.wav"], 30, "a scan to take it")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_an_object_deleted_before_its_probe_is_not_rejected(drop: DropWorld, short_speech: Path) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/gone.wav")
    watcher = drop.watcher()
    page = next(watcher.pages())
    drop.s3.delete_object(Bucket=drop.bucket, Key="inbox/gone.wav")
    from workers.watcher import ScanReport

    report = ScanReport()
    o = page[0]
    watcher._ingest_all([DropItem(drop.bucket, o["Key"], o["ETag"].strip('"'), o["Size"])], report)
    assert report.deferred == ["inbox/gone.wav"] and report.rejected == []
    assert ledger(drop) == [] and drop.outbox_keys() == []


def test_drop_jobs_belong_to_the_drop_tenant_at_batch_priority(drop: DropWorld, short_speech: Path) -> None:
    create_key(drop.db, "acme")
    for key in ("inbox/plain.wav", "inbox/urgent.wav", "inbox/acme.wav"):
        drop.s3.upload_file(str(short_speech), drop.bucket, key)
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/urgent.json", Body=b'{"priority": "interactive"}')
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/acme.json", Body=b'{"tenant": "acme"}')
    assert len(drop.watcher().scan().submitted) == 3
    owners = {j.source_name: (j.tenant, j.priority) for j in jobs(drop)}
    assert owners == {
        "plain.wav": ("drop", "batch"),
        "urgent.wav": ("drop", "interactive"),
        "acme.wav": ("acme", "batch"),
    }


def test_the_drop_tenant_is_a_setting(drop: DropWorld, short_speech: Path) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/a.wav")
    assert len(drop.watcher(drop_tenant="conference").scan().submitted) == 1
    assert [j.tenant for j in jobs(drop)] == ["conference"]


@pytest.mark.parametrize(
    ("sidecar", "reason"),
    [
        (b'{"tenant": "nobody"}', "names the tenant 'nobody', which does not exist"),
        (b'{"priority": "urgent"}', "priority must be interactive or batch, not 'urgent'"),
    ],
)
def test_an_unknown_tenant_or_priority_gets_error_json_in_one_line(
    drop: DropWorld, short_speech: Path, sidecar: bytes, reason: str
) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/t/talk.wav")
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/t/talk.json", Body=sidecar)
    report = drop.watcher().scan()
    assert report.rejected == ["inbox/t/talk.wav"] and jobs(drop) == []
    written = json.loads(drop.get("outbox/t/talk.wav/error.json"))["reason"]
    assert reason in written and "\n" not in written


def test_a_sidecar_asks_for_webhook_events_as_a_string_or_a_list(drop: DropWorld, short_speech: Path) -> None:
    sidecars = {
        "both": {"webhook_url": "https://hooks.example.com/x", "webhook_events": "window.done, job.done"},
        "windows": {"webhook_url": "https://hooks.example.com/x", "webhook_events": ["window.done"]},
        "plain": {"webhook_url": "https://hooks.example.com/x"},
    }
    for name, fields in sidecars.items():
        drop.s3.upload_file(str(short_speech), drop.bucket, f"inbox/w/{name}.wav")
        drop.s3.put_object(Bucket=drop.bucket, Key=f"inbox/w/{name}.json", Body=json.dumps(fields).encode())
    assert len(drop.watcher().scan().submitted) == 3
    stored = {j.source_name: j.webhook_events for j in jobs(drop)}
    # Stored as the API stores them: one form, job.done alone is the default.
    assert stored == {"both.wav": "window.done,job.done", "windows.wav": "window.done", "plain.wav": None}


def _api_reason(value: str) -> str:
    """What the API answers for these webhook_events (the same check, jobs.options)."""
    from jobs.errors import InputError
    from jobs.options import check_webhook_events

    with pytest.raises(InputError) as refused:
        check_webhook_events(value)
    return str(refused.value)


@pytest.mark.parametrize(
    ("sidecar", "reason"),
    [
        (b'{"webhook_events": "window.done,job.started"}', _api_reason("window.done,job.started")),
        (b'{"webhook_events": ["job.done", "Everything"]}', _api_reason("job.done,Everything")),
        (b'{"webhook_events": 7}', "webhook_events must be a string"),
        (b'{"webhook_events": ["job.done", 7]}', "webhook_events must be a string or a list of strings"),
    ],
)
def test_bad_webhook_events_in_a_sidecar_get_error_json_in_one_line(
    drop: DropWorld, short_speech: Path, sidecar: bytes, reason: str
) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/e/talk.wav")
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/e/talk.json", Body=sidecar)
    report = drop.watcher().scan()
    assert report.rejected == ["inbox/e/talk.wav"] and jobs(drop) == []
    written = json.loads(drop.get("outbox/e/talk.wav/error.json"))["reason"]
    assert reason in written and "\n" not in written


def test_a_storm_past_an_api_tenants_limit_is_not_refused(drop: DropWorld, short_speech: Path) -> None:
    for n in range(4):
        drop.s3.upload_file(str(short_speech), drop.bucket, f"inbox/storm/{n}.wav")
    # An API tenant could hold one job at a time here; the drop tenant has its own limit.
    drop.rt.settings = drop.settings.model_copy(update={"max_active_jobs_per_tenant": 1})
    report = drop.watcher().scan()
    assert len(report.submitted) == 4 and report.deferred == [] and report.rejected == []
    # Past the drop tenant's own limit a recording waits in the inbox: deferred, not rejected.
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/storm/4.wav")
    drop.rt.settings = drop.settings.model_copy(update={"drop_max_active_jobs": 4})
    report = drop.watcher().scan()
    assert report.deferred == ["inbox/storm/4.wav"] and report.rejected == []
    assert drop.outbox_keys() == []


def test_a_folder_named_like_a_collection_joins_it(drop: DropWorld, short_speech: Path) -> None:
    from jobs import collections

    dev = collections.create(drop.db, "drop", "DevConf 2027", JobOptions(preset="panel", language="en"))
    for key in ("inbox/DevConf 2027/room a/keynote.wav", "inbox/Elsewhere/talk.wav", "inbox/loose.wav"):
        drop.s3.upload_file(str(short_speech), drop.bucket, key)
    assert len(drop.watcher().scan().submitted) == 3
    joined = {j.source_name: (j.collection_id, j.preset, j.language) for j in jobs(drop)}
    assert joined == {
        "keynote.wav": (dev.id, "panel", "en"),
        "talk.wav": (None, "conference-talk", None),
        "loose.wav": (None, "conference-talk", None),
    }


def test_a_scan_takes_new_recordings_several_at_a_time(drop: DropWorld, short_speech: Path) -> None:
    threads = drop.settings.drop_ingest_threads
    assert threads > 1
    keys = [f"inbox/storm/{i:02d}.wav" for i in range(threads * 2)]
    for key in keys:
        drop.s3.upload_file(str(short_speech), drop.bucket, key)
    audio = CountingAudio(threading.Barrier(threads, timeout=30))
    watcher = Watcher(drop.settings, drop.db, drop.submit, s3=drop.s3, audio=audio)
    report = watcher.scan()
    assert report.new == len(keys) and report.deferred == [] and report.rejected == []
    assert sorted(report.submitted) == sorted(j.id for j in jobs(drop))
    assert sorted(j.source_name for j in jobs(drop)) == sorted(Path(k).name for k in keys)


def test_the_real_submit_does_not_probe_the_recording_again(drop: DropWorld, short_speech: Path) -> None:
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/once.wav")
    audio = CountingAudio()
    drop.rt.audio = audio

    assert (
        len(Watcher(drop.settings, drop.db, drop.real_submit, s3=drop.s3, audio=audio).scan().submitted) == 1
    )
    (job,) = jobs(drop)
    length = FfmpegAudio().probe(str(short_speech)).duration_s
    assert audio.probes == 1 and job.duration_s == pytest.approx(length)
