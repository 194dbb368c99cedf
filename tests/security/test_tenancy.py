"""s3:// sources: a tenant reaches only its own uploads in the shared bucket; a missing key and a
forbidden one answer the same."""

from __future__ import annotations

import pytest

from api import staging
from jobs.errors import VoxbatchError
from jobs.options import JobOptions
from jobs.runtime import Runtime


class _Bucket:
    """The storage bucket as the API sees it, with the drop folder's inbox beside it."""

    url = "s3://shared/voxbatch/"

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys

    def exists(self, key: str) -> bool:
        return key in self.keys


def _answer(rt: Runtime, source: str, tenant: str) -> tuple[type, str]:
    try:
        staging.job_from_source(rt, source, JobOptions(), tenant)
    except VoxbatchError as exc:
        return type(exc), str(exc).replace(source, "<source>")
    raise AssertionError(f"{source} was accepted")


@pytest.fixture
def shared(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    keys = {"inbox/team-b/board meeting.mp3", "voxbatch/jobs/abc/output/document.md", "outbox/x/document.md"}
    bucket = _Bucket(keys)
    monkeypatch.setattr(rt, "storage", bucket)
    monkeypatch.setattr("workers.submission.open_storage", lambda url, endpoint=None: bucket)
    rt.settings.drop_url = "s3://shared/inbox/"
    rt.settings.outbox_url = "s3://shared/outbox/"
    return rt


@pytest.mark.parametrize(
    "forbidden",
    [
        "s3://shared/inbox/team-b/board%20meeting.mp3",
        "s3://shared/outbox/x/document.md",
        "s3://shared/voxbatch/jobs/abc/output/document.md",
        "s3://shared/voxbatch/uploads/0000000000000000/" + "0" * 32 + "/a.mp3",
    ],
)
def test_other_prefixes_of_the_shared_bucket_answer_like_missing_keys(
    shared: Runtime, forbidden: str
) -> None:
    missing = _answer(shared, "s3://shared/inbox/team-b/no-such-file.mp3", "mallory")
    assert _answer(shared, forbidden, "mallory") == missing
