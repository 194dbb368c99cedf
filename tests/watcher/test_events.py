"""Event mode: S3 ObjectCreated notifications through SQS, as the moto server really delivers them
(moto's server mode sends PutBucketNotificationConfiguration events to its own SQS queues)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlmodel import select

from jobs.models import Job
from tests.fixtures.services import wait_until
from tests.watcher.conftest import CountingAudio, DropWorld
from workers.drop_events import events_in
from workers.watcher import Watcher


@pytest.fixture
def queue(drop: DropWorld) -> tuple[Any, str]:
    sqs = boto3.client("sqs", endpoint_url=drop.endpoint)
    url = sqs.create_queue(QueueName=f"drop-events-{drop.bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    drop.s3.put_bucket_notification_configuration(
        Bucket=drop.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "inbox/"}]}},
                }
            ]
        },
    )
    return sqs, url


def job_names(drop: DropWorld) -> list[str]:
    with drop.db.session() as s:
        return sorted(j.source_name for j in s.exec(select(Job)))


def drain(watcher: Any) -> Any:
    """Poll until the queue gives nothing; the sum of what the polls ingested."""
    total: list[str] = []
    rejected: list[str] = []
    for _ in range(10):
        report = watcher.poll_events(wait_s=0)
        total += report.submitted
        rejected += report.rejected
        if report.messages == 0:
            break
    return total, rejected


def test_events_ingest_what_was_uploaded(
    drop: DropWorld, queue: tuple[Any, str], aws_cp: Any, short_speech: Path, long_wav: Path, tmp_path: Path
) -> None:
    sqs, url = queue
    watcher = drop.watcher(drop_sqs_queue_url=url)
    # The AWS CLI: one single PUT and one multipart upload (CompleteMultipartUpload event).
    aws_cp(short_speech, f"s3://{drop.bucket}/inbox/track b/Pänel + Q&A.wav")
    aws_cp(long_wav, f"s3://{drop.bucket}/inbox/long one.wav")
    drop.s3.put_object(Bucket=drop.bucket, Key="inbox/readme.txt", Body=b"text")
    drop.s3.put_object(Bucket=drop.bucket, Key="elsewhere/x.wav", Body=b"outside the inbox")

    submitted, rejected = drain(watcher)

    assert len(submitted) == 2
    assert job_names(drop) == ["Pänel + Q&A.wav", "long one.wav"]
    assert rejected == ["inbox/readme.txt"]
    # The queue is empty: the TestEvent and every record were deleted after handling.
    left = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", [])
    assert left == []
    # The periodic scan reconciles and finds nothing left to do: same ledger, same ETags.
    assert watcher.scan().new == 0


def test_the_scan_catches_what_events_missed(
    drop: DropWorld, queue: tuple[Any, str], short_speech: Path
) -> None:
    sqs, url = queue
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/lost.wav")
    sqs.purge_queue(QueueUrl=url)  # the event is lost
    watcher = drop.watcher(drop_sqs_queue_url=url)
    assert drain(watcher) == ([], [])
    assert len(watcher.scan().submitted) == 1


def test_duplicate_and_replayed_events_make_one_job(
    drop: DropWorld, queue: tuple[Any, str], short_speech: Path
) -> None:
    sqs, url = queue
    drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/dup.wav")
    first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    bodies = [m["Body"] for m in first]
    for body in bodies:  # at-least-once delivery: the same records again
        sqs.send_message(QueueUrl=url, MessageBody=body)
    sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(first)
        ],
    )
    watcher = drop.watcher(drop_sqs_queue_url=url)
    submitted, _ = drain(watcher)
    assert len(submitted) == 1
    assert job_names(drop) == ["dup.wav"]


def test_an_event_batch_is_taken_several_at_a_time(
    drop: DropWorld, queue: tuple[Any, str], short_speech: Path
) -> None:
    sqs, url = queue
    threads = drop.settings.drop_ingest_threads
    keys = [f"inbox/storm/{i:02d}.wav" for i in range(threads)]
    for key in keys:
        drop.s3.upload_file(str(short_speech), drop.bucket, key)
    # One receive takes them all (at most 10 a receive; the test event may be one of them).
    assert threads <= 9
    audio = CountingAudio(threading.Barrier(threads, timeout=30))
    watcher = Watcher(
        drop.settings.model_copy(update={"drop_sqs_queue_url": url}), drop.db, drop.submit, s3=drop.s3,
        sqs=sqs, audio=audio,
    )  # fmt: skip
    report = watcher.poll_events(wait_s=1)
    assert report.deferred == [] and len(report.submitted) == threads
    assert job_names(drop) == sorted(Path(k).name for k in keys)
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []


def test_event_format() -> None:
    body = json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:CompleteMultipartUpload",
                    "s3": {
                        "bucket": {"name": "b"},
                        "object": {"key": "inbox/track+b/Caf%C3%A9+%2B+1.mp3", "size": 9, "eTag": "abc-3"},
                    },
                },
                {
                    "eventName": "ObjectRemoved:Delete",
                    "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}},
                },
            ]
        }
    )
    (item,) = events_in(body)
    assert (item.bucket, item.key, item.etag, item.size) == ("b", "inbox/track b/Café + 1.mp3", "abc-3", 9)
    assert events_in(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})) == []
    wrapped = json.dumps({"Type": "Notification", "Message": body})
    assert [i.key for i in events_in(wrapped)] == ["inbox/track b/Café + 1.mp3"]
    with pytest.raises(ValueError):
        events_in('{"hello": 1}')


def test_run_consumes_events_between_scans_and_stops(
    drop: DropWorld, queue: tuple[Any, str], short_speech: Path
) -> None:
    _, url = queue
    watcher = drop.watcher(drop_sqs_queue_url=url, watch_interval_s=3600.0)
    watcher.event_wait_s = 1.0
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        # The first scan runs at once and finds nothing; the upload arrives as an event.
        wait_until(lambda: watcher.sqs is not None, 5, "the watcher to start")
        drop.s3.upload_file(str(short_speech), drop.bucket, "inbox/live/event.wav")
        wait_until(lambda: job_names(drop) == ["event.wav"], 30, "the event to make a job")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
