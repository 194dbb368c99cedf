"""``GET /v1/jobs/{id}/events``: a job's events as Server-Sent Events (jobs/events.py derives them
from what is stored; this module only streams them).

Each open stream looks at the stored state every ``VOXBATCH_EVENTS_POLL_S`` and sends what is new;
an idle one sends a comment every ``VOXBATCH_EVENTS_KEEPALIVE_S``. A client that does not read is
cut once one event has waited ``VOXBATCH_EVENTS_SEND_TIMEOUT_S`` to be written: the stream derives
no further events while a write waits, so what a stream holds is one batch of events and the
server's socket buffer, never a growing queue. Streams per tenant are limited across the API
processes that share a Redis (``VOXBATCH_MAX_EVENT_STREAMS_PER_TENANT``, 429 past it;
api/stream_slots.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import Receive, Scope, Send

from api.auth import RuntimeDep, TenantDep
from api.schemas import Problem
from api.stream_slots import StreamSlots
from jobs.documents import DOCUMENT_NAMES
from jobs.events import BATCH, Cursor, Event, next_events
from jobs.runtime import Runtime

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

RETRY_MS = 2000  # what EventSource clients wait before they reconnect


class OpenStreams(Collector):
    """``voxbatch_event_streams_open``: event streams open in this API process (for /metrics)."""

    def __init__(self, slots: StreamSlots) -> None:
        self.slots = slots

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("voxbatch_event_streams_open", "Event streams open in this API process")
        gauge.add_metric([], float(self.slots.open_streams()))
        cut = CounterMetricFamily(
            "voxbatch_event_streams_cut", "Event streams this API process cut: their client read nothing"
        )
        cut.add_metric([], float(self.slots.cut))
        yield gauge
        yield cut


class SlowReader(Exception):
    """The client read nothing for the send timeout: the connection is cut."""


def sse(event: Event) -> bytes:
    data = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()


class EventStreamResponse(Response):
    """text/event-stream from an async iterator of chunks; each chunk's write has a deadline, and
    the iterator is stopped as soon as the client disconnects."""

    media_type = "text/event-stream"

    def __init__(
        self, chunks: AsyncIterator[bytes], send_timeout_s: float, on_close: Callable[[bool], None]
    ) -> None:
        self.chunks = chunks
        self.send_timeout_s = send_timeout_s
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slow = False
        try:
            async with anyio.create_task_group() as tg:

                async def listen() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(listen)
                try:
                    with anyio.fail_after(self.send_timeout_s):
                        await send(
                            {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                        )
                    async for chunk in self.chunks:
                        with anyio.fail_after(self.send_timeout_s):
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    with anyio.fail_after(self.send_timeout_s):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                except TimeoutError:
                    slow = True
                except OSError:
                    pass  # the client went away
                tg.cancel_scope.cancel()
        finally:
            await self.chunks.aclose()  # type: ignore[attr-defined]
            # Shielded: a stream ended by the server's shutdown still gives its slot back.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.on_close, slow)
        if slow:
            # Raising is how an ASGI app aborts a response it has started: the server closes the
            # connection instead of waiting for a reader that does not read.
            raise SlowReader(f"an event stream's client read nothing for {self.send_timeout_s:g} s; cut")


async def _chunks(
    rt: Runtime, request: Request, job_id: str, tenant: str, cursor: Cursor
) -> AsyncIterator[bytes]:
    settings = rt.settings
    base = str(request.base_url).rstrip("/")
    yield f"retry: {RETRY_MS}\n\n".encode()
    idle = 0.0
    while True:

        def step(c: Cursor = cursor) -> tuple[list[Event], Cursor, bool]:
            return next_events(rt, rt.store.get(job_id, tenant), c)

        events, cursor, over = await anyio.to_thread.run_sync(step)
        for event in events:
            if event.kind == "document":
                links = {name: f"{base}/v1/jobs/{job_id}/documents/{name}" for name in DOCUMENT_NAMES}
                event = Event(event.kind, event.id, {**event.data, "documents": links})
            yield sse(event)
        if over:
            return
        if len(events) >= BATCH:
            continue  # a long replay comes in batches: the next one is stored already
        idle = 0.0 if events else idle + settings.events_poll_s
        if idle >= settings.events_keepalive_s:
            idle = 0.0
            yield b": keep-alive\n\n"
        await anyio.sleep(settings.events_poll_s)


@router.get(
    "/{job_id}/events",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "status, segment, window, document, error",
        },
        401: {"model": Problem, "description": "no API key, or an unknown one"},
        404: {"model": Problem, "description": "no such job for this API key"},
        422: {"model": Problem, "description": "a Last-Event-ID this API never sent"},
        429: {"model": Problem, "description": "too many event streams open for this API key"},
    },
    response_class=Response,
)
async def job_events(
    request: Request,
    job_id: str,
    rt: RuntimeDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """A job's events as Server-Sent Events, while it runs and after: `status` (state, progress),
    `segment` (window, index, start_s, end_s, text, speaker when known; in recording order),
    `window` (a window's summary), `document` (the documents' links), `error`. Reconnect with
    `Last-Event-ID` to get exactly the events after it; a finished job's stream replays its
    events and ends."""
    cursor = Cursor.parse(last_event_id)
    await anyio.to_thread.run_sync(lambda: rt.store.get(job_id, tenant))  # 404 for others' jobs
    slots: StreamSlots = request.app.state.event_streams
    stream_id = await anyio.to_thread.run_sync(slots.take, tenant)  # Redis, fleet-wide
    return EventStreamResponse(
        _chunks(rt, request, job_id, tenant, cursor),
        rt.settings.events_send_timeout_s,
        lambda slow: slots.give(tenant, stream_id, cut=slow),
    )
