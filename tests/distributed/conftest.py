"""A whole stack per test: redis-server, a fresh PostgreSQL database, the stand-in vLLM server and
real `voxbatch worker` processes (tests/fixtures/services.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.services import Cluster, Postgres, RedisServer
from tests.speech import Recording
from tests.standins.vllm_server import StandInVLLM

MARKER = re.compile(r"marker-(\d+)")


@dataclass
class Stack:
    redis: RedisServer
    vllm: StandInVLLM
    cluster: Cluster
    database_url: str

    def ok_transcriptions(self) -> list[dict[str, Any]]:
        return [
            e for e in self.vllm.stats()["log"] if e["endpoint"] == "transcriptions" and e["status"] == 200
        ]


@pytest.fixture
def stack_factory(
    redis_server: RedisServer, postgres: Postgres, cluster_factory: Callable[..., Cluster]
) -> Iterator[Callable[..., Stack]]:
    servers: list[StandInVLLM] = []

    def make(vllm: dict[str, Any] | None = None, **env: str) -> Stack:
        server = StandInVLLM(**(vllm or {})).__enter__()
        servers.append(server)
        url = postgres.fresh_database_url()
        cluster = cluster_factory(redis_server.url, url, server.url, **env)
        return Stack(redis_server, server, cluster, url)

    yield make
    for server in servers:
        server.__exit__(None, None, None)


def markers_in(text: str) -> list[int]:
    return [int(m) for m in MARKER.findall(text)]


def check_document(out: Path, rec: Recording) -> dict[str, Any]:
    """Every marker once and in order, and each window holding exactly the markers in its range."""
    doc: dict[str, Any] = json.loads((out / "document.json").read_text())
    expected = [m.k for m in rec.markers]
    assert markers_in(doc["transcript"]) == expected
    assert markers_in((out / "transcript.txt").read_text()) == expected
    previous_end = 0.0
    for w in doc["windows"]:
        assert w["start_s"] == pytest.approx(previous_end, abs=1e-3)
        previous_end = w["end_s"]
        inside = [m.k for m in rec.markers if w["start_s"] <= m.start_s and m.end_s <= w["end_s"]]
        assert markers_in(w["transcript"]) == inside, w
    return doc
