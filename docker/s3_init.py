"""Creates the buckets that VOXBATCH_STORAGE_URL, VOXBATCH_DROP_URL and VOXBATCH_OUTBOX_URL name.

Idempotent: run it on every `compose up` (the s3-init service) or as a Kubernetes Job. For each bucket:
- create it if missing;
- a lifecycle rule that aborts multipart uploads left incomplete for --abort-days days (browser and
  CLI uploads of multi-GB recordings that were interrupted keep costing storage otherwise);
- with --versioning, turn versioning on (overwrites and deletes become recoverable; see
  docs/operations.md, Backups).
Servers that do not implement lifecycle or versioning (some S3-compatible ones) get a warning, not a
failure: the bucket is still usable. Waits up to --wait seconds for the server to answer.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from jobs.settings import Settings

log = logging.getLogger("s3-init")

UNSUPPORTED = {"NotImplemented", "MethodNotAllowed", "InvalidRequest", "XNotImplemented"}


def buckets_from(urls: Iterable[str | None]) -> list[str]:
    names: list[str] = []
    for url in urls:
        if url and url.startswith("s3://"):
            name = urlparse(url).netloc
            if name and name not in names:
                names.append(name)
    return names


def wait_for_server(client: Any, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.list_buckets()
            return
        except (EndpointConnectionError, ClientError, BotoCoreError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"s3-init: no answer from the S3 server in {wait_s:.0f} s: {exc}") from exc
            time.sleep(1)


def ensure_bucket(client: Any, bucket: str, abort_days: int, versioning: bool) -> None:
    try:
        client.head_bucket(Bucket=bucket)
        log.info("bucket %s exists", bucket)
    except ClientError:
        try:
            client.create_bucket(Bucket=bucket)
            log.info("created bucket %s", bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou"}:
                raise
    rule = {
        "ID": "abort-incomplete-multipart-uploads",
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": abort_days},
    }
    optional(
        "lifecycle rule",
        bucket,
        lambda: client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [rule]}
        ),
    )
    if versioning:
        optional(
            "versioning",
            bucket,
            lambda: client.put_bucket_versioning(
                Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
            ),
        )


def optional(what: str, bucket: str, call: Any) -> None:
    try:
        call()
        log.info("%s set on %s", what, bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in UNSUPPORTED:
            raise
        log.warning("this S3 server does not support %s (%s); bucket %s left without it", what, code, bucket)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--abort-days", type=int, default=3)
    parser.add_argument("--versioning", action="store_true")
    parser.add_argument("--wait", type=float, default=120.0)
    args = parser.parse_args(argv)
    settings = Settings()
    buckets = buckets_from([settings.storage_url, settings.drop_url, settings.outbox_url])
    if not buckets:
        log.info("no s3:// URL configured; nothing to do")
        return 0
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    wait_for_server(client, args.wait)
    for bucket in buckets:
        ensure_bucket(client, bucket, args.abort_days, args.versioning)
    return 0


if __name__ == "__main__":
    sys.exit(main())
