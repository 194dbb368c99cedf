"""Object storage: a local directory or an S3 bucket, behind one narrow interface.

Keys are POSIX-style relative paths (``jobs/<id>/windows/0003.flac``). Every write goes to a
deterministic key, so a step that runs twice writes the same bytes to the same place.
Objects are streamed to and from files; nothing here holds a whole recording in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Protocol, runtime_checkable

from jobs.errors import InputError, NotFound

MIB = 1024 * 1024
CHUNK_BYTES = MIB
# Temporary files of writes in progress; never listed.
_PART = ".part-"


class Storage(Protocol):
    """Where audio, results and documents live. ``readable_url`` is the one way to hand an object
    to ffmpeg: a local path, or a presigned URL that expires."""

    url: str

    def put_stream(self, key: str, stream: IO[bytes]) -> int: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, path: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...
    def readable_url(self, key: str, expires_s: int = 24 * 3600) -> str: ...


@runtime_checkable
class MultipartUploads(Protocol):
    """What S3 adds: clients upload parts straight to the bucket through presigned URLs."""

    def start_multipart(self, key: str) -> str: ...
    def part_url(self, key: str, upload_id: str, part_number: int, expires_s: int) -> str: ...
    def find_multipart(self, prefix: str) -> tuple[str, str]: ...
    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> int: ...
    def abort_multipart(self, key: str, upload_id: str) -> None: ...


@runtime_checkable
class RangedReads(Protocol):
    """Reading part of an object without reading the rest: what serving a recording to a media
    player needs (HTTP Range requests). ``read_range`` yields the bytes ``[start, stop)`` in chunks
    of at most ``CHUNK_BYTES``; the caller checks the bounds against ``size`` first."""

    def size(self, key: str) -> int: ...
    def read_range(self, key: str, start: int, stop: int) -> Iterator[bytes]: ...


def _check_range(start: int, stop: int, size: int | None = None) -> None:
    if start < 0 or stop < start or (size is not None and stop > size):
        raise ValueError(f"bad byte range [{start}, {stop}) for an object of {size} bytes")


def put_file(storage: Storage, key: str, path: Path) -> None:
    with path.open("rb") as f:
        storage.put_stream(key, f)


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

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Directories exist only to hold keys: remove the ones this delete emptied.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no object {key} in {self.url}")
        return path.stat().st_size

    def read_range(self, key: str, start: int, stop: int) -> Iterator[bytes]:
        """The bytes ``[start, stop)``: one seek, then reads of at most ``CHUNK_BYTES``."""
        _check_range(start, stop)
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no object {key} in {self.url}")
        _check_range(start, stop, path.stat().st_size)
        return self._chunks(path, start, stop)

    @staticmethod
    def _chunks(path: Path, start: int, stop: int) -> Iterator[bytes]:
        # A generator of its own: the checks above run at the call, not at the first next().
        with path.open("rb") as f:
            f.seek(start)
            left = stop - start
            while left > 0:
                data = f.read(min(CHUNK_BYTES, left))
                if not data:
                    return  # the file shrank under us; the caller sees a short read
                left -= len(data)
                yield data

    def readable_url(self, key: str, expires_s: int = 24 * 3600) -> str:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no object {key} in {self.url}")
        return str(path)
