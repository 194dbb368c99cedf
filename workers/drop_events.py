"""Talking to the drop folder's S3 and SQS: clients, and the objects an S3 event message names."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from jobs.errors import InputError
from workers.drop_ledger import DropItem, normalize_etag


def make_client(service: str, endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client(service, endpoint_url=endpoint_url, config=config)  # type: ignore[call-overload]


def sqs_client(queue_url: str) -> Any:
    """A client for the queue's own endpoint: the queue may live apart from a non-AWS S3."""
    import boto3
    from botocore.config import Config

    parts = urlsplit(queue_url)
    if not parts.scheme or not parts.netloc:
        raise InputError(f"VOXBATCH_DROP_SQS_QUEUE_URL is not a queue URL: {queue_url}")
    host = parts.hostname or ""
    labels = host.split(".")
    # https://sqs.<region>.amazonaws.com/<account>/<name>: sign for the queue's region.
    region = labels[1] if len(labels) > 3 and labels[0] == "sqs" and host.endswith(".amazonaws.com") else None
    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client(
        "sqs", endpoint_url=f"{parts.scheme}://{parts.netloc}", region_name=region, config=config
    )


def events_in(body: str) -> list[DropItem]:
    """The created objects an SQS message names. ``s3:TestEvent`` and other events name none.

    Accepts S3's own message and the same wrapped by SNS. Raises ValueError on anything else.
    """
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    if message.get("Type") == "Notification" and isinstance(message.get("Message"), str):
        message = json.loads(message["Message"])
    if message.get("Event") == "s3:TestEvent":
        return []
    records = message.get("Records")
    if not isinstance(records, list):
        raise ValueError("no Records")
    items = []
    for record in records:
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        s3 = record["s3"]
        items.append(
            DropItem(
                bucket=s3["bucket"]["name"],
                # Event keys are form-encoded: "track b/x.mp3" arrives as "track+b/x.mp3".
                key=unquote_plus(s3["object"]["key"]),
                etag=normalize_etag(str(s3["object"].get("eTag", ""))),
                size=int(s3["object"].get("size", 0)),
            )
        )
    return items
