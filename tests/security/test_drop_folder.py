"""Drop-folder keys: distinct objects never share an outbox folder; control characters never reach
outbox names."""

from __future__ import annotations

import pytest

from workers.outbox import DropFolder

COLLIDING = [
    "inbox/dup/Panel.mp3",
    "inbox/dup/Panel.wav",
    "inbox/dup//Panel.mp3",
    "inbox/dup/./Panel.mp3",
    "inbox/dup/../Panel.mp3",
    "inbox/dup/%2E/Panel.mp3",
    "inbox/..mp3",
    "inbox/...mp3",
    "inbox/.mp3",
    "inbox/Panel",
    "inbox/Panel.",
    "inbox/a\nb.mp3",
    "inbox/a_b.mp3",
    "inbox/a%0Ab.mp3",
]


def test_the_outbox_mapping_is_injective() -> None:
    folder = DropFolder(bucket="b", prefix="inbox/", outbox_url="file:///tmp/outbox")
    dirs = [folder.output_dir(k) for k in COLLIDING]
    assert len(set(dirs)) == len(dirs), dirs


@pytest.mark.parametrize("key", COLLIDING)
def test_outbox_names_are_safe(key: str) -> None:
    out = DropFolder(bucket="b", prefix="inbox/", outbox_url="file:///tmp/outbox").output_dir(key)
    parts = out.split("/")
    assert all(p not in ("", ".", "..") for p in parts), out
    assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in out), out


def test_common_names_stay_readable() -> None:
    folder = DropFolder(bucket="b", prefix="inbox/", outbox_url="file:///tmp/outbox")
    assert folder.output_dir("inbox/track b/Panel.wav") == "track b/Panel.wav"
