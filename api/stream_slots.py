"""Open event streams per tenant (``VOXBATCH_MAX_EVENT_STREAMS_PER_TENANT``, 429 past it), counted
across the whole fleet of API processes when they share a Redis, else in this process.

Fleet-wide, each tenant has one Redis sorted set (``voxbatch:event-streams:<tenant>``) of its open
streams' ids, each scored by the time it stops counting: its lease, ``VOXBATCH_EVENT_STREAMS_LEASE_S``
from its last renewal. A stream is taken by one Lua script (drop the expired members, count the
rest, add the new one only below the limit), so two API processes never both take the last slot;
each process renews the leases of its open streams every third of a lease from one thread, so a
stream that waits on a slow reader still counts; a closed stream is removed at once. A process that
dies (SIGKILL, OOM, a lost node) renews nothing: its streams stop counting when their leases run
out, with nothing to clean up. Times are Redis's own clock (``TIME`` inside the scripts), so API
hosts' clocks do not matter.

Without Redis (the broker is not Redis, or it does not answer: the embedded single-process
default), a stream is counted in this process only; a Redis that is away is tried again after
``REDIS_RETRY_S``, and streams taken meanwhile count in this process only.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from jobs.errors import TooBusy
from jobs.settings import Settings

log = logging.getLogger(__name__)

RETRY_STREAM_S = 10  # Retry-After of a 429
REDIS_RETRY_S = 10.0  # after Redis failed, streams count in this process for this long
REDIS_TIMEOUT_S = 2.0
KEY_PREFIX = "voxbatch:event-streams:"

# KEYS[1]: the tenant's set; ARGV: limit, lease in ms, the new stream's id. 1 if taken, else 0.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS[1]: the tenant's set; ARGV: lease in ms, then the ids of this process's open streams.
# ZADD without XX: a stream still open counts again even if its member was dropped meanwhile (a
# renewal late past its lease, a Redis that lost its data).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return #ARGV - 1
"""


def _refused(limit: int) -> TooBusy:
    return TooBusy(
        f"this API key already has {limit} event streams open "
        "(VOXBATCH_MAX_EVENT_STREAMS_PER_TENANT); close one first",
        RETRY_STREAM_S,
    )


class FleetStreams:
    """The tenants' sorted sets in Redis: take, renew and give back streams' leases."""

    def __init__(self, client: Any, lease_s: float) -> None:
        self.client = client
        self.lease_ms = max(1, round(lease_s * 1000))
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)

    @staticmethod
    def key(tenant: str) -> str:
        return KEY_PREFIX + tenant

    def take(self, tenant: str, stream_id: str, limit: int) -> bool:
        return bool(self._take(keys=[self.key(tenant)], args=[limit, self.lease_ms, stream_id]))

    def renew(self, held: dict[str, list[str]]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for tenant, ids in held.items():
                self._renew(keys=[self.key(tenant)], args=[self.lease_ms, *ids], client=pipe)
            pipe.execute()

    def give(self, tenant: str, stream_id: str) -> None:
        self.client.zrem(self.key(tenant), stream_id)


class StreamSlots:
    """Open event streams per tenant: fleet-wide through ``fleet`` when it answers, else in this
    process. ``take`` and ``give`` block on Redis: call them from a thread, not the event loop."""

    def __init__(self, per_tenant: int, fleet: FleetStreams | None = None, lease_s: float = 30.0) -> None:
        self.per_tenant = per_tenant
        self.fleet = fleet
        self.renew_every_s = lease_s / 3
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()  # this process's streams, however counted
        self._leased: dict[str, str] = {}  # stream id → tenant, for the streams counted in Redis
        self._redis_down_until = 0.0
        self._renewer: threading.Thread | None = None
        self.cut = 0  # streams ended because their client read nothing

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamSlots:
        fleet = None
        if urlsplit(settings.broker_url).scheme in ("redis", "rediss"):
            import redis

            client = redis.Redis.from_url(
                settings.broker_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
            )
            fleet = FleetStreams(client, settings.event_streams_lease_s)
        return cls(settings.max_event_streams_per_tenant, fleet, settings.event_streams_lease_s)

    def open_streams(self, tenant: str | None = None) -> int:
        """Streams open in this process (of ``tenant``, or in all)."""
        with self._lock:
            return self._open[tenant] if tenant is not None else sum(self._open.values())

    def take(self, tenant: str) -> str:
        """A slot for one more stream of ``tenant`` (its id, for ``give``); TooBusy past the limit."""
        stream_id = uuid.uuid4().hex
        if self.fleet is not None and time.monotonic() >= self._redis_down_until:
            import redis

            try:
                taken = self.fleet.take(tenant, stream_id, self.per_tenant)
            except redis.RedisError as exc:
                self._redis_down_until = time.monotonic() + REDIS_RETRY_S
                log.warning("event streams count in this API process only: Redis did not answer (%s)", exc)
            else:
                if not taken:
                    raise _refused(self.per_tenant)
                with self._lock:
                    self._open[tenant] += 1
                    self._leased[stream_id] = tenant
                self._start_renewer()
                return stream_id
        with self._lock:
            if self._open[tenant] >= self.per_tenant:
                raise _refused(self.per_tenant)
            self._open[tenant] += 1
        return stream_id

    def give(self, tenant: str, stream_id: str, cut: bool = False) -> None:
        """The stream ``stream_id`` ended (``cut``: its client read nothing)."""
        with self._lock:
            self.cut += cut
            self._open[tenant] -= 1
            if self._open[tenant] <= 0:
                del self._open[tenant]
            leased = self._leased.pop(stream_id, None) is not None
        if leased and self.fleet is not None:
            import redis

            try:
                self.fleet.give(tenant, stream_id)
            except redis.RedisError as exc:  # its lease runs out by itself
                log.warning("an event stream's slot stays counted until its lease ends: %s", exc)

    def _start_renewer(self) -> None:
        with self._lock:
            if self._renewer is not None:
                return
            self._renewer = threading.Thread(
                target=self._renew_forever, name="event-stream-leases", daemon=True
            )
        self._renewer.start()

    def _renew_forever(self) -> None:
        import redis

        assert self.fleet is not None
        while True:  # a daemon thread: it ends with the process
            time.sleep(self.renew_every_s)
            with self._lock:
                held: dict[str, list[str]] = {}
                for stream_id, tenant in self._leased.items():
                    held.setdefault(tenant, []).append(stream_id)
            if not held:
                continue
            try:
                self.fleet.renew(held)
            except redis.RedisError as exc:
                log.warning("could not renew %d event streams' leases: %s", len(held), exc)
