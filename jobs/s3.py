"""Object storage in an S3 bucket (AWS or any endpoint speaking the protocol), and the one place
where botocore's errors become voxbatch's (``s3_errors``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from jobs.errors import InputError, NotFound, StorageUnavailable
from jobs.storage import _PART, CHUNK_BYTES, MIB, _check_key, _check_prefix, _check_range

T = TypeVar("T")

_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_BAD_REQUEST = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "InvalidArgument"}


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


@contextmanager
def s3_errors(what: str, where: str = "", endpoint_url: str | None = None) -> Iterator[None]:
    """Translate botocore and boto3 errors raised inside the block into voxbatch's error tree.

    ``what`` names the object (a key) and ``where`` the store, for the message; with no ``where``,
    ``what`` names the action ("listing s3://bucket/inbox/").
    """
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    at = f" at {endpoint_url}" if endpoint_url else ""
    try:
        yield
    except S3UploadFailedError as exc:
        # boto3's managed upload wraps the ClientError that says what really happened.
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, ClientError):
            raise _translated(what, where, at, inner) from exc
        raise StorageUnavailable(f"S3 upload of {what} to {where} failed: {exc}") from exc
    except ClientError as exc:
        raise _translated(what, where, at, exc) from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"S3{at} did not answer for {what} in {where}: {exc}") from exc


def _translated(what: str, where: str, at: str, exc: BaseException) -> Exception:
    code = error_code(exc)
    if not where:
        return _translated_action(what, code, exc)
    if code == "NoSuchBucket":
        bucket = where.removeprefix("s3://").split("/", 1)[0]
        return InputError(f"the S3 bucket {bucket} does not exist{at}")
    if code in _MISSING:
        return NotFound(f"no object {what} in {where}")
    if code in _DENIED:
        return InputError(f"access to {what} in {where} was denied ({code})")
    if code in _BAD_REQUEST:
        return InputError(f"S3 refused the request for {what} ({code})")
    return StorageUnavailable(f"S3 {code or 'error'} on {what} in {where}: {exc}")


def _translated_action(what: str, code: str, exc: BaseException) -> Exception:
    if code == "NoSuchBucket" or code in _DENIED or code in _BAD_REQUEST:
        return InputError(f"{what} failed: {code}")
    if code in _MISSING or code.endswith("NonExistentQueue"):
        return NotFound(f"{what} failed: {code} (it does not exist)")
    return StorageUnavailable(f"{what} failed: {code or exc}")


class S3Storage:
    """An S3 bucket (AWS or any endpoint speaking the protocol) under an optional prefix.

    Network behaviour: ``max_attempts`` tries per request with botocore's standard retry mode
    (exponential backoff on throttling, 5xx and connection errors), ``connect_timeout_s`` to open a
    connection and ``read_timeout_s`` between bytes of an answer. Transfers stream in parts of
    ``chunk_bytes``, at most ``max_concurrency`` parts in flight, so memory is bounded by
    ``chunk_bytes * max_concurrency`` whatever the object's size.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        max_attempts: int = 5,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        chunk_bytes: int = 8 * MIB,
        max_concurrency: int = 4,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                # S3-compatible servers (and IP-address endpoints) reliably speak path style only.
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=chunk_bytes,
            multipart_chunksize=chunk_bytes,
            max_concurrency=max_concurrency,
            # Downloads queue up to max_io_queue small writes in memory; keep it small.
            max_io_queue=max_concurrency * 2,
        )
        # Reading a stream runs ahead of the uploads by up to this many parts held in memory
        # (s3transfer's default is 10); boto3's TransferConfig takes it only as an attribute.
        self.transfer.max_in_memory_upload_chunks = max_concurrency
        self._bucket_checked = False

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return f" at {self.endpoint_url}" if self.endpoint_url else ""

    def _check_bucket(self) -> None:
        """HEAD requests answer a bare 404 for a missing key and a missing bucket alike: tell them
        apart once, so that a wrong bucket name is reported as such instead of as missing keys."""
        if self._bucket_checked:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if error_code(exc) in {"404", "NoSuchBucket", "NotFound"}:
                raise InputError(f"the S3 bucket {self.bucket} does not exist{self._where()}") from exc
            # 403 and the like: the bucket exists but HeadBucket is not allowed; ask no more.
        except BotoCoreError:
            return  # no answer now; ask again next time
        self._bucket_checked = True

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            with s3_errors(what, self.url, self.endpoint_url):
                return fn(*args, **kwargs)
        except NotFound:
            self._check_bucket()
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_stream(self, key: str, stream: IO[bytes]) -> int:
        counted = _CountingReader(stream)
        self._call(
            key,
            self.client.upload_fileobj,
            counted,
            self.bucket,
            self._key(key),
            Config=self.transfer,
        )
        return counted.count

    def get_bytes(self, key: str) -> bytes:
        resp = self._call(key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return self._call(key, lambda: bytes(resp["Body"].read()))

    def download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A half-written file must not look like a finished download to the next step.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_PART)
        os.close(fd)
        try:
            self._call(
                key,
                self.client.download_file,
                self.bucket,
                self._key(key),
                tmp,
                Config=self.transfer,
            )
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        try:
            self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return False
        return True

    def size(self, key: str) -> int:
        head = self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return int(head.get("ContentLength", 0))

    def read_range(self, key: str, start: int, stop: int) -> Iterator[bytes]:
        """The bytes ``[start, stop)``: one GetObject with a Range header, its body read in chunks
        of at most ``CHUNK_BYTES`` as the caller iterates (the object is never read whole)."""
        _check_range(start, stop)
        if start == stop:
            return iter(())
        resp = self._call(
            key,
            self.client.get_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Range=f"bytes={start}-{stop - 1}",
        )
        return self._chunks(key, resp["Body"])

    def _chunks(self, key: str, body: Any) -> Iterator[bytes]:
        try:
            chunks = body.iter_chunks(CHUNK_BYTES)
            while True:
                chunk = self._call(key, next, chunks, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            body.close()

    def list(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix`` in lexicographic order, fetched one page (1000 keys) at a
        time as the caller iterates: a caller that stops early sends no further requests."""
        _check_prefix(prefix)
        if self.prefix:
            full = f"{self.prefix}/{prefix}"
            strip = len(self.prefix) + 1
        else:
            full, strip = prefix, 0
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=full))
        while True:
            page = self._call(prefix or "(all keys)", next, pages, None)
            if page is None:
                return
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def delete(self, key: str) -> None:
        self._call(key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def readable_url(self, key: str, expires_s: int = 24 * 3600) -> str:
        if not self.exists(key):
            raise NotFound(f"no object {key} in {self.url}")
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires_s,
            )
        )

    # --- presigned multipart uploads (MultipartUploads) ----------------------------------------

    def start_multipart(self, key: str) -> str:
        created = self._call(key, self.client.create_multipart_upload, Bucket=self.bucket, Key=self._key(key))
        return str(created["UploadId"])

    def part_url(self, key: str, upload_id: str, part_number: int, expires_s: int) -> str:
        params = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "UploadId": upload_id,
            "PartNumber": part_number,
        }
        return str(self.client.generate_presigned_url("upload_part", Params=params, ExpiresIn=expires_s))

    def find_multipart(self, prefix: str) -> tuple[str, str]:
        """(key, upload id) of the upload in progress under ``prefix``."""
        listing = self._call(
            prefix, self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=self._key(prefix)
        )
        strip = len(self.prefix) + 1 if self.prefix else 0
        for upload in listing.get("Uploads", []):
            return str(upload["Key"])[strip:], str(upload["UploadId"])
        raise NotFound(f"no upload in progress under this id ({prefix.rstrip('/').rsplit('/', 1)[-1]})")

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> int:
        """Join the parts; returns the object's size."""
        self._call(
            key,
            self.client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]},
        )
        head = self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return int(head.get("ContentLength", 0))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._call(
            key,
            self.client.abort_multipart_upload,
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=upload_id,
        )


class _CountingReader:
    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        return data
