"""Webhooks: when a job ends (and, if the job asked for ``window.done`` in ``webhook_events``,
when each window is done), POST it as JSON to the job's ``webhook_url``, signed, retried with
backoff, every attempt recorded on the job (``Job.webhook_attempts``, a JSON list).

What a receiver gets::

    POST <webhook_url>
    Content-Type: application/json
    X-Voxbatch-Event: job.finished                  (or window.done)
    X-Voxbatch-Event-Id: <job id>:job.finished:<attempt>:<state>   (or <job id>:window.done:<index>)
    X-Voxbatch-Timestamp: 1764000000
    X-Voxbatch-Signature: sha256=<hex HMAC-SHA256 of the raw body under the tenant's webhook secret>

    {"event": "job.finished", "id": ..., "timestamp": 1764000000, "job": {"id": ..., "status": ...}}
    {"event": "window.done", "id": ..., "timestamp": ..., "job": {...},
     "window": {"index": 0, "start_s": 0.0, "end_s": 1800.0, "summary": ..., "transcript": ...}}

The event id is the same on every delivery of one event (retries, a redelivered task), so a
receiver deduplicates by it. ``webhook_events`` names ``job.done`` for the job's end (the default)
and ``window.done``.

Every delivery of one event carries the same bytes: the timestamp is the event's (the job's end,
the window's), not the delivery's. The body carries it, so it is covered by the signature: verify
the HMAC over the raw bytes (constant-time compare), then refuse timestamps older than the retries
can reach (about six minutes with the default backoff) as replays.

Retries: 5xx, 408, 429, timeouts and connection errors are retried with exponential backoff
(``VOXBATCH_WEBHOOK_BACKOFF_S`` × 2^n) up to ``MAX_DELIVERIES`` attempts; any other answer ends it.

SSRF: the host is resolved and every address must be globally routable (no private, loopback,
link-local, metadata, multicast or reserved address) unless ``VOXBATCH_WEBHOOK_ALLOW_PRIVATE=1``.
The request then goes to the checked address itself (Host header and TLS SNI keep the name), so
a DNS answer that changes between the check and the connection cannot redirect it. Redirects are
not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from jobs.errors import InputError
from jobs.models import Job, JobStatus, utcnow
from jobs.options import JOB_DONE, webhook_events_of
from jobs.runtime import Runtime
from jobs.stitching import WindowResult
from jobs.tenants import tenant_secret
from workers.dispatch import dispatcher

log = logging.getLogger(__name__)

MAX_DELIVERIES = 6
TIMEOUT_S = 10.0
SIGNATURE_HEADER = "X-Voxbatch-Signature"
TIMESTAMP_HEADER = "X-Voxbatch-Timestamp"
EVENT_HEADER = "X-Voxbatch-Event"
EVENT_ID_HEADER = "X-Voxbatch-Event-Id"
JOB_FINISHED = "job.finished"
WINDOW_DONE = "window.done"
_RETRYABLE_CODES = {408, 425, 429}
# Job fields a receiver has no use for (internal bookkeeping, storage layout).
_PRIVATE_FIELDS = {"webhook_attempts", "fingerprint", "reduce_claimed", "source_key", "tenant"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does (and the tests): constant-time comparison of the signature."""
    return hmac.compare_digest(sign(secret, body), header)


# IPv6 prefixes that carry an IPv4 address inside them: a packet to one may reach that IPv4 host
# (NAT64 /96 and its local-use /48: the last 32 bits; 6to4: bits 16-48).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_6TO4 = ipaddress.ip_network("2002::/16")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# IETF protocol assignments (192.0.0.192 among them, on some clouds a metadata-like service).
_EXTRA_FORBIDDEN = (ipaddress.ip_network("192.0.0.0/24"),)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _forbidden(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            if ip in _NAT64[1]:  # local-use NAT64 is never global, whatever it embeds
                return True
            return _forbidden(inner)
    if any(ip in net for net in _EXTRA_FORBIDDEN if net.version == ip.version):
        return True
    # is_global is False for private, loopback, link-local (169.254.169.254 metadata included),
    # shared (100.64/10), reserved and unspecified ranges; multicast is excluded separately.
    return not ip.is_global or ip.is_multicast


def check_url(url: str, allow_private: bool = False) -> list[IPAddress]:
    """The addresses ``url`` may be delivered to; InputError naming why it is refused."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (an out-of-range or non-numeric port raises here)
    except ValueError as exc:  # "http://[::1" and friends
        raise InputError(f"webhook_url {url[:200]!r} is not a valid URL") from exc
    if parts.scheme not in ("http", "https"):
        raise InputError(f"webhook_url must be an http:// or https:// URL, not {url[:200]!r}")
    host = parts.hostname
    if not host:
        raise InputError(f"webhook_url {url[:200]!r} names no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InputError(f"webhook_url {url[:200]!r} has an invalid port") from exc
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InputError(f"webhook host {host} does not resolve") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not allow_private:
        bad = [str(ip) for ip in addresses if _forbidden(ip)]
        if bad:
            raise InputError(
                f"webhook host {host} resolves to a private or reserved address ({', '.join(bad)}); "
                "set VOXBATCH_WEBHOOK_ALLOW_PRIVATE=1 to allow it"
            )
    if not addresses:
        raise InputError(f"webhook host {host} does not resolve")
    return addresses


def payload(job: Job) -> dict[str, Any]:
    data = {k: v for k, v in job.model_dump(mode="json").items() if k not in _PRIVATE_FIELDS}
    data["progress"] = {"windows_done": job.windows_done, "windows_total": job.windows_total}
    return data


# --- the record on the job ----------------------------------------------------------------------


def _attempts(job: Job) -> list[dict[str, Any]]:
    try:
        value = json.loads(job.webhook_attempts) if job.webhook_attempts else []
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _append(rt: Runtime, job_id: str, record: dict[str, Any], *, unless_queued: bool = False) -> bool:
    """Append ``record`` with compare-and-swap (workers and the API write concurrently).

    With ``unless_queued``, nothing is written when a delivery for the same job attempt and final
    status was already queued: that is how one ending sends one webhook.
    """
    for _ in range(10):
        job = rt.store.get(job_id)
        old = job.webhook_attempts
        records = _attempts(job)
        if unless_queued and any(
            r.get("status") == "queued" and r.get("event_id", _legacy_id(job_id, r)) == record["event_id"]
            for r in records
        ):
            return False
        if rt.store.compare_and_set(job_id, "webhook_attempts", old, json.dumps([*records, record])):
            return True
    log.warning("job %s: could not record a webhook attempt (contention)", job_id)
    return False


def event_id(job_id: str, job_status: str, job_attempt: int, window: int | None = None) -> str:
    """One event's id, the same on every delivery of it."""
    if window is not None:
        return f"{job_id}:{WINDOW_DONE}:{window}"
    return f"{job_id}:{JOB_FINISHED}:{job_attempt}:{job_status}"


def _legacy_id(job_id: str, record: dict[str, Any]) -> str:
    """The event id of a record written before records carried one (a job's end)."""
    return event_id(job_id, str(record.get("job_status")), int(record.get("job_attempt") or 0))


def settled(job: Job, job_attempt: int, window: int | None = None) -> bool:
    """Whether an event's deliveries are over, by the job's record: one was delivered, or the last
    gave up. A job's end is one event per job attempt; a window's is one event whatever the attempt
    (``event_id``). Queued and failed deliveries settle nothing: a retry may still be on its way."""
    event = JOB_FINISHED if window is None else WINDOW_DONE
    for record in _attempts(job):
        if record.get("status") not in ("delivered", "gave_up") or record.get("event", JOB_FINISHED) != event:
            continue
        if window is not None and record.get("window") == window:
            return True
        if window is None and record.get("job_attempt") == job_attempt:
            return True
    return False


def notify(rt: Runtime, job_id: str) -> bool:
    """Enqueue the webhook of a job that has ended (its ``job.finished`` event). True when queued or
    not wanted; False when it could not be queued now (the job's announce step stays in the
    outbox and calls this again).

    Sent each time it is called, so each run of the announce step (at least once) sends it at
    least once; the ``queued`` record is written once per event. Never raises: a webhook is a
    courtesy, the job's outcome is already stored.
    """
    try:
        job = rt.store.get(job_id)
        if not job.webhook_url or not JobStatus(job.status).finished:
            return True
        if JOB_DONE not in webhook_events_of(job.webhook_events):
            return True
        record = {
            "at": utcnow().isoformat().replace("+00:00", "Z"),
            "status": "queued",
            "event": JOB_FINISHED,
            "event_id": event_id(job_id, str(job.status), job.attempt),
            "job_status": str(job.status),
            "job_attempt": job.attempt,
        }
        first = _append(rt, job_id, record, unless_queued=True)
        dispatcher(rt).send_webhook(job_id, job.attempt)
        log.info("job %s: webhook queued (%s)%s", job_id, job.status, "" if first else " again")
        return True
    except Exception:
        log.exception("job %s: could not queue the webhook (tried again later)", job_id)
        return False


def notify_window(rt: Runtime, job_id: str, index: int) -> bool:
    """Enqueue the ``window.done`` webhook of a window just done, once per window, if the job
    asked for it. Never raises."""
    try:
        job = rt.store.get(job_id)
        if not job.webhook_url or WINDOW_DONE not in webhook_events_of(job.webhook_events):
            return False
        record = {
            "at": utcnow().isoformat().replace("+00:00", "Z"),
            "status": "queued",
            "event": WINDOW_DONE,
            "event_id": event_id(job_id, str(job.status), job.attempt, index),
            "window": index,
            "job_status": str(job.status),
            "job_attempt": job.attempt,
        }
        if not _append(rt, job_id, record, unless_queued=True):
            return False
        dispatcher(rt).send_webhook(job_id, job.attempt, index)
        log.info("job %s: window %d webhook queued", job_id, index)
        return True
    except Exception:
        log.exception("job %s: could not queue the webhook of window %d", job_id, index)
        return False


# --- delivery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    ok: bool
    retry: bool
    status_code: int | None = None
    error: str | None = None


def _pinned(url: str, ip: IPAddress) -> tuple[str, str, str]:
    """``url`` with its host replaced by ``ip``; plus the Host header and TLS server name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), host_header, host


def send(
    url: str,
    secret: str | None,
    body: bytes,
    timestamp: int,
    allow_private: bool,
    event: str = JOB_FINISHED,
    event_id: str | None = None,
) -> Delivery:
    """One POST of ``body`` to ``url``; never raises."""
    try:
        addresses = check_url(url, allow_private)
    except InputError as exc:
        return Delivery(ok=False, retry=False, error=str(exc))
    target, host_header, server_name = _pinned(url, addresses[0])
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "voxbatch-webhook/1",
        "Host": host_header,
        EVENT_HEADER: event,
        TIMESTAMP_HEADER: str(timestamp),
    }
    if event_id:
        headers[EVENT_ID_HEADER] = event_id
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    try:
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False, trust_env=False) as client:
            resp = client.post(
                target, content=body, headers=headers, extensions={"sni_hostname": server_name}
            )
    except httpx.HTTPError as exc:
        return Delivery(ok=False, retry=True, error=f"{exc.__class__.__name__}: {exc}"[:500])
    code = resp.status_code
    if 200 <= code < 300:
        return Delivery(ok=True, retry=False, status_code=code)
    return Delivery(
        ok=False, retry=code >= 500 or code in _RETRYABLE_CODES, status_code=code, error=f"answered {code}"
    )


def _event_time(rt: Runtime, job: Job, window: int | None) -> int:
    when = job.finished_at
    if window is not None:
        when = next((w.finished_at for w in rt.store.windows(job.id) if w.index == window), None)
    if when is None:
        return int(time.time())
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def _window_payload(rt: Runtime, job_id: str, index: int) -> dict[str, Any]:
    window = next(w for w in rt.store.windows(job_id) if w.index == index)
    result = WindowResult.from_json(rt.storage.get_bytes(window.result_key))
    return {
        "index": index,
        "start_s": result.start_s,
        "end_s": result.end_s,
        "summary": result.summary,
        "transcript": result.transcript,
    }


def deliver(rt: Runtime, job_id: str, job_attempt: int, delivery: int, window: int | None = None) -> Delivery:
    """Send the job's webhook (its end, or ``window``'s ``window.done``) once and record the attempt."""
    job = rt.store.get(job_id)
    if not job.webhook_url:
        return Delivery(ok=True, retry=False)
    secret = tenant_secret(rt.db, job.tenant)
    event = JOB_FINISHED if window is None else WINDOW_DONE
    # A window's event id does not depend on the job's state: the same on every delivery.
    eid = event_id(job_id, str(job.status), job_attempt, window)
    # Every delivery of one event sends the same bytes: the timestamp is the event's (when the job
    # ended, when the window was done), and a window's event names its job without its progress.
    timestamp = _event_time(rt, job, window)
    about: dict[str, Any] = payload(job) if window is None else {"id": job.id, "attempt": job_attempt}
    message: dict[str, Any] = {"event": event, "id": eid, "timestamp": timestamp, "job": about}
    if window is not None:
        message["window"] = _window_payload(rt, job_id, window)
    body = json.dumps(message, separators=(",", ":")).encode()
    result = send(job.webhook_url, secret, body, timestamp, rt.settings.webhook_allow_private, event, eid)
    final = not result.ok and (not result.retry or delivery >= MAX_DELIVERIES)
    record = {
        "at": utcnow().isoformat().replace("+00:00", "Z"),
        "status": "delivered" if result.ok else ("gave_up" if final else "failed"),
        "delivery": delivery,
        "status_code": result.status_code,
        "error": result.error,
        "event": event,
        "event_id": eid,
        **({"window": window} if window is not None else {}),
        "job_status": str(job.status),
        "job_attempt": job_attempt,
    }
    _append(rt, job_id, record)
    log.info("job %s: webhook delivery %d: %s", job_id, delivery, result.status_code or result.error or "ok")
    return result


def backoff_s(rt: Runtime, delivery: int) -> float:
    return float(rt.settings.webhook_backoff_s * (2 ** (delivery - 1)))
