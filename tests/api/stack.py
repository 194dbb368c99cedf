"""A running voxbatch for API tests: redis-server, PostgreSQL, the stand-in vLLM, real worker
processes, a moto S3 server (for S3 storage) and the API itself as a `voxbatch api` subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.services import VOXBATCH, Cluster, Postgres, RedisServer, free_port, wait_until
from tests.standins.vllm_server import StandInVLLM

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SHARED_BUCKET = "shared-recordings"  # a bucket the operator opens to tenants as sources
BUCKET = "voxbatch-test"
METRICS_TOKEN = "operator-token-for-tests"


@dataclass
class ApiStack:
    url: str
    cluster: Cluster
    api: subprocess.Popen[bytes]
    api_log: Path
    s3_endpoint: str | None
    keys: dict[str, str]
    vllm: StandInVLLM  # the stand-in every stack's workers call (StandInVLLM.hold holds answers)

    def key(self, tenant: str) -> str:
        if tenant not in self.keys:
            done = self.cluster.cli("keys", "create", tenant)
            assert done.returncode == 0, done.stderr
            self.keys[tenant] = done.stdout.strip().splitlines()[-1]
        return self.keys[tenant]

    def client(self, tenant: str | None = "alice", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key(tenant)}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def wait_finished(self, client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        try:
            return wait_until(finished, timeout_s, f"job {job_id} to finish", poll_s=0.3)  # type: ignore[no-any-return]
        except AssertionError:
            print(self.logs())
            raise

    def stop_api(self) -> None:
        """SIGTERM the API process (uvicorn cuts open streams after its graceful timeout)."""
        self.api.send_signal(signal.SIGTERM)

    def start_api(self) -> None:
        """A new API process on the same port, database and storage (after ``stop_api``)."""
        self.api.wait(30)
        port = self.url.rsplit(":", 1)[1]
        with self.api_log.open("ab") as out:
            self.api = subprocess.Popen(
                [*VOXBATCH, "api", "--port", port],
                env=self.cluster.env, cwd=self.cluster.tmp, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

        def healthy() -> bool:
            assert self.api.poll() is None, self.api_log.read_text()
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the restarted API to answer")

    def logs(self) -> str:
        return self.cluster.logs() + "\n=== api\n" + self.api_log.read_text(errors="replace")[-6000:]


def start_moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    for k, v in AWS_ENV.items():
        os.environ.setdefault(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **_creds()).create_bucket(Bucket=BUCKET)
    return server, endpoint


def _creds() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, **_creds())


@dataclass
class StackFactory:
    tmp: Path
    redis: RedisServer
    postgres: Postgres
    vllm: StandInVLLM
    stacks: list[ApiStack]

    def make(self, name: str, *, s3_endpoint: str | None = None, **env: str) -> ApiStack:
        tmp = self.tmp / name
        tmp.mkdir()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
        environ.update(AWS_ENV)
        environ.update(
            VOXBATCH_DATA_DIR=str(tmp / "data"),
            VOXBATCH_BROKER_URL=self.redis.url.replace("/0", f"/{2 * len(self.stacks) + 2}"),
            VOXBATCH_DATABASE_URL=self.postgres.fresh_database_url(),
            VOXBATCH_ENGINE="vllm",
            VOXBATCH_VLLM_URL=self.vllm.url,
            VOXBATCH_FLOWER_URL="http://flower.invalid:5555",
            VOXBATCH_WEBHOOK_ALLOW_PRIVATE="1",
            VOXBATCH_WEBHOOK_BACKOFF_S="0.3",
            VOXBATCH_METRICS_TOKEN=METRICS_TOKEN,
        )
        if s3_endpoint:
            environ.update(
                VOXBATCH_STORAGE_URL=f"s3://{BUCKET}/{name}",
                VOXBATCH_S3_ENDPOINT_URL=s3_endpoint,
                VOXBATCH_SOURCE_BUCKETS=SHARED_BUCKET,
            )
        environ.update(env)
        cluster = Cluster(tmp, environ)
        cluster.start_worker("cpu,gpu", concurrency=2)
        port = free_port()
        log = tmp / "api.log"
        with log.open("wb") as out:
            api = subprocess.Popen(
                [*VOXBATCH, "api", "--port", str(port)],
                env=environ, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        stack = ApiStack(url, cluster, api, log, s3_endpoint, {}, self.vllm)
        self.stacks.append(stack)

        def healthy() -> bool:
            assert api.poll() is None, log.read_text()
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the API to answer")
        return stack

    def stop(self) -> None:
        for stack in self.stacks:
            if stack.api.poll() is None:
                stack.api.send_signal(signal.SIGTERM)
                try:
                    stack.api.wait(15)
                except subprocess.TimeoutExpired:
                    stack.api.kill()
            stack.cluster.stop()


@pytest.fixture(scope="session")
def stack_maker(
    tmp_path_factory: pytest.TempPathFactory, postgres: Postgres
) -> Iterator[Callable[..., ApiStack]]:
    tmp = tmp_path_factory.mktemp("api-stacks")
    (tmp / "redis").mkdir()
    redis = RedisServer(tmp / "redis", free_port())
    redis.start()
    vllm = StandInVLLM().__enter__()
    factory = StackFactory(tmp, redis, postgres, vllm, [])
    try:
        yield factory.make
    finally:
        factory.stop()
        vllm.__exit__(None, None, None)
        redis.stop()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server, endpoint = start_moto()
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def local_stack(stack_maker: Callable[..., ApiStack]) -> ApiStack:
    """Local-directory storage."""
    return stack_maker("local", VOXBATCH_MAX_UPLOAD_MB="50")


@pytest.fixture(scope="session")
def s3_stack(stack_maker: Callable[..., ApiStack], moto_endpoint: str) -> ApiStack:
    """S3 storage on a moto server."""
    return stack_maker("s3", s3_endpoint=moto_endpoint)
