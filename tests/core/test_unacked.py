"""The pure parts of the unacked sweep (workers/unacked.py): kombu's key names and what decodes.
Entries made by kombu and dropped from a real Redis: tests/distributed/test_unacked.py."""

from __future__ import annotations

import base64
import json

import pytest

from workers import unacked
from workers.celery_app import RETRY_BACKOFF_MAX_S


def test_the_keys_are_kombus_own_unless_the_transport_options_name_others() -> None:
    assert unacked.unacked_keys() == ("unacked", "unacked_index")
    options = {"unacked_key": "held", "global_keyprefix": "vox:"}
    assert unacked.unacked_keys(options) == ("vox:held", "vox:unacked_index")


def test_the_safe_age_is_one_lease_and_never_less_than_the_longest_retry_backoff() -> None:
    assert unacked.safe_age_s(20.0) == RETRY_BACKOFF_MAX_S
    assert unacked.safe_age_s(900.0) == 900.0


def entry(
    body: object, headers: dict[str, object] | None = None, content_type: str = "application/json"
) -> str:
    message = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"task": "voxbatch.window"} if headers is None else headers,
        "properties": {"body_encoding": "base64", "delivery_tag": "t"},
    }
    return json.dumps([message, "gpu", "gpu"])


def test_a_celery_protocol_2_message_decodes_to_its_task_and_job() -> None:
    decoded = unacked.decode("t", 5.0, entry([["job1", 2], {}, {"callbacks": None}]))
    assert decoded is not None
    assert (decoded.task, decoded.args, decoded.job_id, decoded.reserved_at) == (
        "voxbatch.window",
        ["job1", 2],
        "job1",
        5.0,
    )


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        json.dumps({"a": 1}),
        entry({"task": "voxbatch.window", "args": ["job1", 2]}, headers={}),  # protocol 1: no task header
        entry([["job1", 2], {}, {}], content_type="application/x-python-serialize"),
        entry("not a list"),
    ],
)
def test_what_is_not_a_json_celery_message_does_not_decode(raw: str) -> None:
    assert unacked.decode("t", 0.0, raw) is None
