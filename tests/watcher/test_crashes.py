"""A watcher killed at each point of taking a recording (issue 25): after its claim, after the job
row, after the send. Each recording still becomes exactly one job, within seconds, not after the
15-minute stale-claim rule or the sweep's 900 s.

A kill is a ``Killed`` (a BaseException: like SIGKILL it skips every ``except Exception`` cleanup)
raised at the crash point; the dead watcher's claim keeper stops with it, as it would with the
process. Tests wait on conditions, never on a fixed sleep."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from jobs.models import DropObject, Job, utcnow
from jobs.options import JobOptions
from jobs.steps.create import create_job
from jobs.store import ClaimLost, joined
from tests.fixtures.services import wait_until
from tests.inprocess.conftest import RecordingDispatcher
from tests.watcher.conftest import DropWorld
from workers import meter, submission
from workers.drop_ledger import DropItem, claim, job_check
from workers.watcher import Watcher

LEASE = {"drop_claim_lease_s": 1.0}


class Killed(BaseException):
    """The watcher process dies here."""


def jobs(drop: DropWorld) -> list[Job]:
    with drop.db.session() as s:
        return list(s.exec(select(Job)))


def ledger(drop: DropWorld) -> list[DropObject]:
    with drop.db.session() as s:
        return list(s.exec(select(DropObject)))


@pytest.fixture
def sent(drop: DropWorld) -> RecordingDispatcher:
    drop.rt.dispatcher = RecordingDispatcher()
    return drop.rt.dispatcher  # type: ignore[no-any-return]


def upload(drop: DropWorld, path: Path, key: str) -> DropItem:
    drop.s3.upload_file(str(path), drop.bucket, key)
    head = drop.s3.head_object(Bucket=drop.bucket, Key=key)
    return DropItem(drop.bucket, key, head["ETag"].strip('"'), int(head["ContentLength"]))


def test_killed_after_the_claim_another_watcher_takes_the_recording_once_the_lease_lapses(
    drop: DropWorld, short_speech: Path, sent: RecordingDispatcher
) -> None:
    upload(drop, short_speech, "inbox/storm/a.wav")

    def die(
        source: str,
        options: JobOptions,
        source_name: str,
        tenant: str | None = None,
        duration_s: float | None = None,
    ) -> str:
        raise Killed  # probed, options read, the claim written: dead before the job

    with pytest.raises(Killed):
        drop.watcher(submit=die, **LEASE).scan()
    (row,) = ledger(drop)
    assert row.job_id is None and row.error is None and row.lease_owner  # a claim nobody renews
    other = drop.watcher(submit=drop.real_submit, **LEASE)
    # Before leases the claim was only released after 15 minutes; now within one lease.
    taken = wait_until(lambda: other.scan().submitted, 20, "another watcher to take the recording", 0.2)
    assert len(taken) == 1 and [j.id for j in jobs(drop)] == taken
    assert [s.job_id for s in sent.sent] == taken
    assert other.scan().new == 0  # and nobody takes it again
    assert [r.job_id for r in ledger(drop)] == taken


def test_a_live_watcher_keeps_its_claim_past_the_lease(
    drop: DropWorld, short_speech: Path, sent: RecordingDispatcher
) -> None:
    upload(drop, short_speech, "inbox/slow.wav")
    probing = threading.Event()
    go_on = threading.Event()
    slow = drop.watcher(submit=drop.real_submit, drop_claim_lease_s=3.0)
    real_probe = slow.probe

    def slow_probe(key: str) -> float:
        probing.set()
        assert go_on.wait(60)
        return real_probe(key)

    slow.probe = slow_probe  # type: ignore[method-assign]
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(slow.scan()))
    thread.start()
    assert probing.wait(30)
    (row,) = ledger(drop)
    first_expiry = row.lease_expires_at
    assert first_expiry is not None
    # The first lease runs out while the watcher still probes: its renewals keep the claim.
    wait_until(lambda: utcnow() > first_expiry + timedelta(seconds=0.5), 10, "the first lease to pass")
    (row,) = ledger(drop)
    assert row.lease_expires_at is not None and row.lease_expires_at > utcnow()
    assert drop.watcher(submit=drop.real_submit, drop_claim_lease_s=3.0).scan().submitted == []
    go_on.set()
    thread.join(30)
    assert len(result[0].submitted) == 1 and len(jobs(drop)) == 1


def test_killed_after_the_job_row_the_split_is_relayed_and_nobody_takes_it_again(
    drop: DropWorld, short_speech: Path, sent: RecordingDispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(drop, short_speech, "inbox/b.wav")

    def die(*_: object) -> None:
        raise Killed  # the job row and its split committed; nothing sent, nothing tagged

    monkeypatch.setattr(submission, "relay_now", die)
    with pytest.raises(Killed):
        drop.watcher(submit=drop.real_submit, **LEASE).scan()
    monkeypatch.undo()
    (job,) = jobs(drop)
    # The ledger got the job id in the job's own transaction: no second job, ever.
    assert [r.job_id for r in ledger(drop)] == [job.id]
    assert drop.watcher(submit=drop.real_submit, **LEASE).scan().new == 0
    assert sent.sent == []
    # A cpu worker's relay poller sends the split in seconds, not the sweep in 900 s.
    poller = meter.RelayPoller(drop.settings.model_copy(update={"relay_poll_s": 0.05}), sent)  # type: ignore[arg-type]
    poller.start()
    try:
        wait_until(lambda: [s.job_id for s in sent.sent] == [job.id], 10, "the relay to send the split")
    finally:
        poller.stop()
    assert len(jobs(drop)) == 1


def test_killed_after_the_send_the_recording_stays_one_job(
    drop: DropWorld, short_speech: Path, sent: RecordingDispatcher
) -> None:
    upload(drop, short_speech, "inbox/c.wav")
    dying = drop.watcher(submit=drop.real_submit, drop_tag_processed=True, **LEASE)

    def die(*_: object) -> None:
        raise Killed  # the split is on the broker; dead before tagging the source

    dying._tag = die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        dying.scan()
    (job,) = jobs(drop)
    assert [(s.kind, s.job_id) for s in sent.sent] == [("split", job.id)]
    assert drop.watcher(submit=drop.real_submit, **LEASE).scan().new == 0
    assert len(jobs(drop)) == 1 and [s.job_id for s in sent.sent] == [job.id]


def test_a_watcher_that_lost_its_claim_makes_no_job(drop: DropWorld, short_speech: Path) -> None:
    item = upload(drop, short_speech, "inbox/d.wav")
    # Watcher A claimed it, then stalled (no renewal) past its lease; B took the recording over.
    row_id = claim(drop.db, item, "A", lease_s=0.0)
    assert row_id is not None
    report = drop.watcher(**LEASE).scan()
    assert len(report.submitted) == 1
    # A wakes up and creates its job: the transaction checks the claim and makes nothing.
    with pytest.raises(ClaimLost), joined(job_check(row_id, "A")):
        create_job(drop.rt, f"s3://{drop.bucket}/{item.key}", JobOptions(), source_name="d.wav")
    assert len(jobs(drop)) == 1


def test_an_event_takes_over_a_lapsed_claim(drop: DropWorld, short_speech: Path) -> None:
    item = upload(drop, short_speech, "inbox/e.wav")
    assert claim(drop.db, item, "dead-watcher", lease_s=0.0) is not None
    watcher: Watcher = drop.watcher(**LEASE)
    report = watcher.ingest(item)  # what an S3 event (SQS) delivers
    assert report.new == 1 and len(report.submitted) == 1
    assert watcher.ingest(item).new == 0  # a replayed event: still one job
    assert len(jobs(drop)) == 1
