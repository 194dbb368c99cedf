"""Object storage: a local directory or an S3 bucket, behind one narrow interface.

Keys are POSIX-style relative paths (``jobs/<id>/windows/0003.flac``). Every write goes to a
deterministic key, so a step that runs twice writes the same bytes to the same place.
Objects are streamed to and from files; nothing here holds a whole recording in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Protocol
from urllib.parse import unquote, urlparse

from jobs.errors import InputError, NotFound, StorageUnavailable


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


def _check_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts:
        raise ValueError(f"unsafe storage key {key!r}")
    return key


class LocalStorage:
    """A directory on disk; the embedded default."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _atomic_write(self, key: str) -> tuple[IO[bytes], Path, Path]:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        return os.fdopen(fd, "wb"), Path(tmp), dest

    def put_file(self, key: str, path: Path) -> None:
        with path.open("rb") as src:
            self.put_stream(key, src)

    def put_bytes(self, key: str, data: bytes) -> None:
        out, tmp, dest = self._atomic_write(key)
        with out:
            out.write(data)
        os.replace(tmp, dest)

    def put_stream(self, key: str, stream: IO[bytes]) -> int:
        out, tmp, dest = self._atomic_write(key)
        with out:
            shutil.copyfileobj(stream, out, 1024 * 1024)
            size = out.tell()
        # Readers never see half an object: rename is atomic on one filesystem.
        os.replace(tmp, dest)
        return size

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"no object {key} in {self.url}") from exc

    def download(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"no object {key} in {self.url}")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".part-"):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        return None


class S3Storage:
    """An S3 bucket (AWS or any endpoint speaking the protocol) under an optional prefix."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise NotFound(f"no object {what} in {self.url}") from exc
            if code in {"NoSuchBucket"}:
                raise InputError(f"bucket {self.bucket} does not exist") from exc
            if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                raise InputError(f"access to {self.url}/{what} was denied ({code})") from exc
            raise StorageUnavailable(f"S3 {code or 'error'} on {what}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 did not answer for {what}: {exc}") from exc

    def put_file(self, key: str, path: Path) -> None:
        # upload_file switches to multipart above 8 MB and streams from disk.
        self._call(key, self.client.upload_file, str(path), self.bucket, self._key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_stream(self, key: str, stream: IO[bytes]) -> int:
        counted = _CountingReader(stream)
        self._call(key, self.client.upload_fileobj, counted, self.bucket, self._key(key))
        return counted.count

    def get_bytes(self, key: str) -> bytes:
        resp = self._call(key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return bytes(resp["Body"].read())

    def download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(key, self.client.download_file, self.bucket, self._key(key), str(path))

    def exists(self, key: str) -> bool:
        try:
            self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self._call(prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full))):
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
