"""Object storage: a local directory or an S3 bucket, behind one narrow interface.

Keys are POSIX-style relative paths (``jobs/<id>/windows/0003.flac``). Every write goes to a
deterministic key, so a step that runs twice writes the same bytes to the same place.
Objects are streamed to and from files; nothing here holds a whole recording in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any, NoReturn, Protocol, TypeVar
from urllib.parse import unquote, urlparse

from jobs.errors import InputError, NotFound, StorageUnavailable

MIB = 1024 * 1024
CHUNK_BYTES = MIB
# Temporary files of writes in progress; never listed.
_PART = ".part-"
T = TypeVar("T")


class Storage(Protocol):
    url: str

    def put_file(self, key: str, path: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_stream(self, key: str, stream: IO[bytes]) -> int: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, path: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def local_path(self, key: str) -> Path | None: ...
    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None: ...


class UnsafeKey(InputError, ValueError):
    """A key that would escape the store (``../x``, ``/abs``). Also a ValueError for callers that
    treat it as a bad argument."""


def _check_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts or "\x00" in key:
        raise UnsafeKey(f"{key!r} is not a safe storage key: use a relative path without '..'")
    return key


def _check_prefix(prefix: str) -> str:
    # "" lists everything; otherwise a prefix obeys the key rules (a trailing "/" is fine).
    if prefix:
        _check_key(prefix)
    return prefix


class LocalStorage:
    """A directory on disk; the embedded default."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    @contextmanager
    def _atomic_write(self, key: str) -> Iterator[IO[bytes]]:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=_PART)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
            # Readers never see half an object: rename is atomic on one filesystem.
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path) -> None:
        with path.open("rb") as src:
            self.put_stream(key, src)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._atomic_write(key) as out:
            out.write(data)

    def put_stream(self, key: str, stream: IO[bytes]) -> int:
        with self._atomic_write(key) as out:
            shutil.copyfileobj(stream, out, CHUNK_BYTES)
            return out.tell()

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no object {key} in {self.url}")
        return path.read_bytes()

    def download(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"no object {key} in {self.url}")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix`` in lexicographic order (as S3 lists them), lazily."""
        _check_prefix(prefix)
        # Walk only the directory the prefix points into, not the whole store.
        head, _, _ = prefix.rpartition("/")
        start = self.root / head if head else self.root
        yield from (k for k in self._walk(start, head) if k.startswith(prefix))

    def _walk(self, directory: Path, key_prefix: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return

        # Keys under directory d all start with "d/"; sorting directories by name + "/" puts
        # their keys exactly where a flat sort of the full keys would.
        def order(entry: os.DirEntry[str]) -> str:
            return entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name

        for entry in sorted(entries, key=order):
            key = f"{key_prefix}/{entry.name}" if key_prefix else entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key)
            elif entry.is_file() and not entry.name.startswith(_PART):
                yield key

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        return None


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

    def _check_bucket(self, cause: Exception) -> None:
        """HEAD requests answer a bare 404 for a missing key and a missing bucket alike: tell them
        apart once, so that a wrong bucket name is reported as such instead of as missing keys."""
        if self._bucket_checked:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise self._no_bucket() from cause
            # 403 and the like: the bucket exists but HeadBucket is not allowed; ask no more.
        except BotoCoreError:
            return  # no answer now; ask again next time
        self._bucket_checked = True

    def _no_bucket(self) -> InputError:
        return InputError(f"the S3 bucket {self.bucket} does not exist{self._where()}")

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except S3UploadFailedError as exc:
            # boto3's managed upload wraps the ClientError that says what really happened.
            inner = exc.__cause__ or exc.__context__
            if isinstance(inner, ClientError):
                self._raise_client_error(what, inner)
            raise StorageUnavailable(f"S3 upload of {what} to {self.url} failed: {exc}") from exc
        except ClientError as exc:
            self._raise_client_error(what, exc)
        except BotoCoreError as exc:
            raise StorageUnavailable(
                f"S3{self._where()} did not answer for {what} in {self.url}: {exc}"
            ) from exc

    def _raise_client_error(self, what: str, exc: Exception) -> NoReturn:
        response = getattr(exc, "response", {}) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            raise self._no_bucket() from exc
        if code in {"NoSuchKey", "404", "NotFound"}:
            self._check_bucket(exc)
            raise NotFound(f"no object {what} in {self.url}") from exc
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            raise InputError(f"access to {self.url}/{what} was denied ({code})") from exc
        raise StorageUnavailable(f"S3 {code or 'error'} on {what} in {self.url}: {exc}") from exc

    def put_file(self, key: str, path: Path) -> None:
        # Multipart above chunk_bytes, streamed from disk.
        self._call(
            key,
            self.client.upload_file,
            str(path),
            self.bucket,
            self._key(key),
            Config=self.transfer,
        )

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

    def local_path(self, key: str) -> Path | None:
        return None

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires_s,
            )
        )


class _CountingReader:
    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        return data


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → (bucket, key)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InputError(f"not an s3:// URL: {url}")
    return parsed.netloc, unquote(parsed.path.lstrip("/"))


def open_storage(url: str, endpoint_url: str | None = None) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        bucket, prefix = parse_s3_url(url)
        return S3Storage(bucket, prefix, endpoint_url=endpoint_url)
    if parsed.scheme == "":
        return LocalStorage(Path(url))
    raise InputError(f"VOXBATCH_STORAGE_URL must be file:///dir or s3://bucket/prefix, not {url}")
