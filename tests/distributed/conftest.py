"""A whole stack per test: redis-server, a fresh PostgreSQL database, the stand-in vLLM server and
real `voxbatch worker` processes (tests/fixtures/services.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fixtures.services import Cluster, Postgres, RedisServer
from tests.standins.vllm_server import StandInVLLM


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
