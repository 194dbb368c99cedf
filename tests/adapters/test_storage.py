"""One contract for both stores: a local directory and S3 (a real moto server, boto3 over HTTP).

Then what only S3 has: pagination past 1000 keys, presigned URLs, a missing bucket, an endpoint
that does not answer, multipart uploads of a stream, and the AWS CLI reading what we wrote.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, cast

import httpx
import pytest

from jobs.errors import InputError, NotFound, StorageUnavailable
from jobs.s3 import S3Storage
from jobs.storage import CHUNK_BYTES, LocalStorage, RangedReads, Storage, UnsafeKey, put_file
from jobs.storage_urls import open_storage
from tests.fixtures.s3 import MotoS3, free_port

MIB = 1024 * 1024
AWS = str(Path(sys.executable).with_name("aws"))


@pytest.fixture(params=["local", "s3", "s3-prefixed"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    moto_s3: MotoS3 = request.getfixturevalue("moto_s3")
    bucket: str = request.getfixturevalue("s3_bucket")
    prefix = "vb/data" if request.param == "s3-prefixed" else ""
    return S3Storage(bucket, prefix, endpoint_url=moto_s3.endpoint_url)


class ChunkReader(io.RawIOBase):
    """``size`` pseudo-random bytes made on the fly; remembers the largest read it was asked for
    and how often it was asked for everything that is left."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.largest_request = 0
        self.unbounded_reads = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            # s3transfer reads "the rest" once it has seen the end; that costs nothing.
            if self.sent < self.size:
                self.unbounded_reads += 1
            n = self.size - self.sent
        self.largest_request = max(self.largest_request, n)
        n = min(n, self.size - self.sent)
        # Cheap but not constant, so a lost or repeated part changes the hash.
        block = (self.sent // 4096).to_bytes(8, "little") * (4096 // 8)
        data = (block * (n // len(block) + 2))[self.sent % 4096 : self.sent % 4096 + n]
        self.sent += len(data)
        self.sha256.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def as_io(raw: io.RawIOBase) -> IO[bytes]:
    # RawIOBase is a binary file in every way put_stream uses; typing's IO is a separate class.
    return cast(IO[bytes], raw)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the contract, for every store ---------------------------------------------------------------


def test_bytes_round_trip(store: Storage) -> None:
    assert not store.exists("jobs/j1/result.json")
    store.put_bytes("jobs/j1/result.json", b'{"ok": true}')
    assert store.exists("jobs/j1/result.json")
    assert store.get_bytes("jobs/j1/result.json") == b'{"ok": true}'


def test_empty_object(store: Storage) -> None:
    store.put_bytes("empty", b"")
    assert store.exists("empty")
    assert store.get_bytes("empty") == b""


def test_file_round_trip(store: Storage, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    put_file(store, "jobs/j1/windows/0003.flac", src)
    out = tmp_path / "deep" / "er" / "out.bin"
    store.download("jobs/j1/windows/0003.flac", out)
    assert out.read_bytes() == src.read_bytes()


def test_put_stream_counts_and_stores_the_bytes(store: Storage) -> None:
    reader = ChunkReader(3 * MIB + 17)
    assert store.put_stream("big/stream.bin", as_io(reader)) == 3 * MIB + 17
    data = store.get_bytes("big/stream.bin")
    assert len(data) == 3 * MIB + 17
    assert hashlib.sha256(data).hexdigest() == reader.sha256.hexdigest()
    assert reader.unbounded_reads == 0


def test_writing_the_same_bytes_twice_is_idempotent(store: Storage) -> None:
    for _ in range(2):
        store.put_bytes("jobs/j1/windows/0001.json", b"same")
    assert store.get_bytes("jobs/j1/windows/0001.json") == b"same"
    assert list(store.list("jobs/j1/")) == ["jobs/j1/windows/0001.json"]


def test_last_write_wins(store: Storage) -> None:
    store.put_bytes("k", b"first")
    store.put_bytes("k", b"second")
    assert store.get_bytes("k") == b"second"


def test_list_by_prefix_in_key_order(store: Storage) -> None:
    keys = ["jobs/a/2", "jobs/a/1", "jobs/ab/1", "jobs/a-c", "jobs/b/x/y", "other"]
    for key in keys:
        store.put_bytes(key, key.encode())
    # S3's order is the byte order of the full keys ("a-c" before "a/1": '-' < '/').
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("jobs/a/")) == ["jobs/a/1", "jobs/a/2"]
    assert list(store.list("jobs/a")) == ["jobs/a-c", "jobs/a/1", "jobs/a/2", "jobs/ab/1"]
    assert list(store.list("jobs/b")) == ["jobs/b/x/y"]
    assert list(store.list("jobs/zzz/")) == []
    assert list(store.list("nothing")) == []


def test_missing_key_is_not_found(store: Storage, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no object jobs/none"):
        store.get_bytes("jobs/none")
    target = tmp_path / "never.bin"
    with pytest.raises(NotFound, match="no object jobs/none"):
        store.download("jobs/none", target)
    assert not target.exists()
    assert not any(".part-" in p.name for p in tmp_path.iterdir())
    assert not store.exists("jobs/none")


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../../x", "a/..", ""])
def test_unsafe_keys_are_rejected(store: Storage, key: str) -> None:
    with pytest.raises(UnsafeKey, match="not a safe storage key"):
        store.put_bytes(key, b"x")
    with pytest.raises(InputError):
        store.get_bytes(key)
    with pytest.raises(ValueError):
        store.exists(key)


@pytest.mark.parametrize("prefix", ["../", "/etc/"])
def test_unsafe_prefixes_are_rejected(store: Storage, prefix: str) -> None:
    with pytest.raises(UnsafeKey):
        list(store.list(prefix))


def test_readable_url_is_what_ffmpeg_can_open(store: Storage) -> None:
    store.put_bytes("jobs/j1/output/document.md", b"# Title\n")
    url = store.readable_url("jobs/j1/output/document.md", expires_s=600)
    if isinstance(store, LocalStorage):
        assert Path(url).read_bytes() == b"# Title\n"
    else:
        answer = httpx.get(url)
        assert answer.status_code == 200
        assert answer.content == b"# Title\n"
    with pytest.raises(NotFound):
        store.readable_url("jobs/j1/output/missing.md")


def test_delete_removes_the_object_and_nothing_else(store: Storage) -> None:
    store.put_bytes("uploads/t/u1/a.mp3", b"a")
    store.put_bytes("uploads/t/u2/b.mp3", b"b")
    store.delete("uploads/t/u1/a.mp3")
    store.delete("uploads/t/u1/a.mp3")  # twice is fine
    assert not store.exists("uploads/t/u1/a.mp3")
    assert list(store.list("uploads/")) == ["uploads/t/u2/b.mp3"]


def test_ranged_reads_return_exactly_the_bytes_asked_for(store: Storage) -> None:
    assert isinstance(store, RangedReads)
    data = os.urandom(2 * MIB + 123)
    store.put_bytes("jobs/j1/source/talk.mp3", data)
    assert store.size("jobs/j1/source/talk.mp3") == len(data)
    for start, stop in [(0, 1), (0, len(data)), (5, 1000), (MIB - 1, MIB + 1), (len(data) - 1, len(data))]:
        chunks = list(store.read_range("jobs/j1/source/talk.mp3", start, stop))
        assert b"".join(chunks) == data[start:stop], (start, stop)
        assert all(0 < len(c) <= CHUNK_BYTES for c in chunks)
    assert b"".join(store.read_range("jobs/j1/source/talk.mp3", 7, 7)) == b""
    store.put_bytes("empty", b"")
    assert store.size("empty") == 0


def test_ranged_reads_of_a_missing_key_are_not_found(store: Storage) -> None:
    assert isinstance(store, RangedReads)
    with pytest.raises(NotFound, match="no object jobs/none"):
        store.size("jobs/none")
    with pytest.raises(NotFound, match="no object jobs/none"):
        list(store.read_range("jobs/none", 0, 10))
    with pytest.raises(UnsafeKey):
        store.size("../x")
    with pytest.raises(ValueError):
        list(store.read_range("jobs/none", 5, 2))


def test_a_ranged_read_streams_a_large_object_in_bounded_memory(store: Storage) -> None:
    store.put_stream("big/recording.bin", as_io(ChunkReader(24 * MIB)))
    assert isinstance(store, RangedReads)
    tracemalloc.start()
    try:
        digest = hashlib.sha256()
        for chunk in store.read_range("big/recording.bin", 1, 24 * MIB):
            digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256(store.get_bytes("big/recording.bin")[1:]).hexdigest()
    assert digest.hexdigest() == expected
    assert peak < 6 * MIB, f"reading 24 MiB held {peak / MIB:.1f} MiB at once"


# --- local directory only ------------------------------------------------------------------------


def test_local_store_hides_writes_in_progress(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / ".part-abc").write_bytes(b"half")
    store.put_bytes("jobs/done", b"whole")
    assert list(store.list("")) == ["jobs/done"]


def test_local_failed_stream_leaves_nothing(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)

    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            raise OSError("the network went away")

    with pytest.raises(OSError):
        store.put_stream("jobs/upload", as_io(Broken()))
    assert not store.exists("jobs/upload")
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == []


def test_local_stream_reads_in_bounded_chunks(tmp_path: Path) -> None:
    reader = ChunkReader(5 * MIB)
    LocalStorage(tmp_path).put_stream("s", as_io(reader))
    assert reader.unbounded_reads == 0
    assert reader.largest_request <= MIB


def test_local_ranged_read_past_the_end_is_refused(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put_bytes("a", b"0123456789")
    with pytest.raises(ValueError, match="bad byte range"):
        store.read_range("a", 5, 11)
    assert b"".join(store.read_range("a", 9, 10)) == b"9"


# --- S3 only -------------------------------------------------------------------------------------


def test_prefix_is_where_objects_land(moto_s3: MotoS3, s3_bucket: str) -> None:
    S3Storage(s3_bucket, "/vb/data/", endpoint_url=moto_s3.endpoint_url).put_bytes("a/b", b"x")
    listed = moto_s3.client().list_objects_v2(Bucket=s3_bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["vb/data/a/b"]


def test_s3_ranged_read_asks_for_the_range_only(moto_s3: MotoS3, s3_bucket: str) -> None:
    store = S3Storage(s3_bucket, "vb", endpoint_url=moto_s3.endpoint_url)
    store.put_bytes("rec.mp3", bytes(range(256)) * 100)
    ranges: list[bytes | str | None] = []
    store.client.meta.events.register(
        "before-send.s3.GetObject", lambda request, **_: ranges.append(request.headers.get("Range"))
    )
    assert b"".join(store.read_range("rec.mp3", 300, 310)) == bytes(range(44, 54))
    assert b"".join(store.read_range("rec.mp3", 0, 0)) == b""  # no request at all
    assert ranges == [b"bytes=300-309"]


def test_list_pages_past_1000_keys_one_page_at_a_time(moto_s3: MotoS3, s3_bucket: str) -> None:
    client = moto_s3.client(max_pool_connections=16)
    keys = [f"many/{i:05d}" for i in range(1003)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=s3_bucket, Key=k, Body=b""), keys))
    client.put_object(Bucket=s3_bucket, Key="manz", Body=b"")

    store = S3Storage(s3_bucket, endpoint_url=moto_s3.endpoint_url)
    requests: list[str] = []
    store.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: requests.append("list"))
    listing = store.list("many/")
    assert next(listing) == "many/00000"
    assert len(requests) == 1  # the second page is not fetched before it is needed
    rest = list(listing)
    assert len(requests) == 2
    assert ["many/00000", *rest] == keys


def test_missing_bucket_is_a_clear_input_error(moto_s3: MotoS3, tmp_path: Path) -> None:
    store = S3Storage("no-such-bucket-here", endpoint_url=moto_s3.endpoint_url)
    src = tmp_path / "f"
    src.write_bytes(b"x")
    calls = [
        lambda: store.put_bytes("k", b"x"),
        lambda: put_file(store, "k", src),
        lambda: store.put_stream("k", io.BytesIO(b"x")),
        lambda: store.get_bytes("k"),
        lambda: store.download("k", tmp_path / "out"),
        lambda: store.exists("k"),
        lambda: list(store.list("")),
    ]
    for call in calls:
        with pytest.raises(InputError, match=r"^the S3 bucket no-such-bucket-here does not exist"):
            call()


def test_unreachable_endpoint_is_storage_unavailable() -> None:
    # A port nobody listens on: connection refused at once; one attempt keeps the test quick.
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3Storage("b", endpoint_url=endpoint, max_attempts=1, connect_timeout_s=2)
    for call in (
        lambda: store.put_bytes("k", b"x"),
        lambda: store.put_stream("k", io.BytesIO(b"x")),
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        lambda: list(store.list("")),
    ):
        with pytest.raises(StorageUnavailable, match="did not answer"):
            call()


def test_large_stream_goes_up_in_parts(moto_s3: MotoS3, s3_bucket: str, tmp_path: Path) -> None:
    chunk = 5 * MIB  # S3's smallest part
    size = 40 * MIB + 123
    store = S3Storage(s3_bucket, endpoint_url=moto_s3.endpoint_url, chunk_bytes=chunk, max_concurrency=2)
    reader = ChunkReader(size)
    tracemalloc.start()
    try:
        assert store.put_stream("big/recording.wav", as_io(reader)) == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Streamed: never asked for everything, never for more than one part at a time, and no more
    # than a few parts in memory at once (measured: 21 MB for 40 MB and for 80 MB; with
    # s3transfer's default read-ahead of 10 parts it would hold all 40 MB).
    assert reader.unbounded_reads == 0
    assert reader.largest_request <= chunk
    assert peak < 6 * chunk, f"{peak / MIB:.1f} MiB held while uploading {size / MIB:.0f} MiB"
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key="big/recording.wav")
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith(f"-{-(-size // chunk)}")  # a multipart upload
    out = tmp_path / "back.wav"
    store.download("big/recording.wav", out)
    assert sha256_file(out) == reader.sha256.hexdigest()


def _aws(moto_s3: MotoS3, *args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(
        [AWS, "--endpoint-url", moto_s3.endpoint_url, *args],
        env=moto_s3.env(),
        input=stdin,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def test_aws_cli_reads_what_we_write_and_we_read_what_it_writes(
    moto_s3: MotoS3, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3Storage(s3_bucket, "vb", endpoint_url=moto_s3.endpoint_url)
    store.put_bytes("jobs/j1/output/transcript.txt", b"hello from voxbatch\n")
    assert (
        _aws(moto_s3, "s3", "cp", f"s3://{s3_bucket}/vb/jobs/j1/output/transcript.txt", "-")
        == b"hello from voxbatch\n"
    )
    listing = _aws(moto_s3, "s3", "ls", "--recursive", f"s3://{s3_bucket}/vb/jobs/")
    assert b"vb/jobs/j1/output/transcript.txt" in listing

    src = tmp_path / "talk.bin"
    src.write_bytes(os.urandom(200_000))
    _aws(moto_s3, "s3", "cp", str(src), f"s3://{s3_bucket}/vb/inbox/talk.bin")
    assert store.get_bytes("inbox/talk.bin") == src.read_bytes()
    assert list(store.list("inbox/")) == ["inbox/talk.bin"]


# --- open_storage --------------------------------------------------------------------------------


def test_open_storage_picks_the_store(tmp_path: Path, moto_s3: MotoS3) -> None:
    local = open_storage((tmp_path / "a").as_uri())
    assert isinstance(local, LocalStorage) and local.root == (tmp_path / "a").resolve()
    bare = open_storage(str(tmp_path / "b"))
    assert isinstance(bare, LocalStorage) and bare.root == (tmp_path / "b").resolve()
    s3 = open_storage("s3://bucket/some/prefix/", endpoint_url=moto_s3.endpoint_url)
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.url) == ("bucket", "some/prefix", "s3://bucket/some/prefix")
    with pytest.raises(InputError, match="file:///dir or s3://bucket/prefix"):
        open_storage("ftp://host/dir")
