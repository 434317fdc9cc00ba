"""``GET /api/v1/stream?lines=a,b``: line status as Server-Sent Events, computed once per period for all.

One producer (:class:`StatusStream`) wakes at every refresh period boundary, computes the status of
every (line, language) some client listens to, once, on a figure worker, and hands each event to the
clients that want it. Each event is ``event: status``, ``id: <n>`` (ids only grow, also across
restarts: they start at the start time in ms), and ``data:`` a JSON object
``{"line", "lang", "as_of", "stale": [machine ids], "status": <the /lines/{id}/status answer>}``;
a machine is stale when its newest data is older than ``stale_after_s`` (default 60 s) at ``as_of``.

- A client that reconnects with ``Last-Event-ID`` gets the events it missed if they are all still
  held (the last ``history`` events), else the newest held status of each of its lines.
- At most ``max_subscribers`` clients (503 with Retry-After beyond); each has a queue of
  ``queue_size`` events: a client that does not keep up is dropped (its stream ends; its reconnect
  with Last-Event-ID picks up), never buffered without bound.
- A stream ends after ``max_connection_s`` (default 15 min; the browser's EventSource reconnects at
  once and its token is checked again) and when the server shuts down (:func:`uvicorn_server` tells
  the streams before uvicorn waits for open connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from api.cache import DEFAULT_REFRESH_PERIOD_S, Refresh
from api.deps import Lang, LangDep, PlantDep
from api.schemas import Problem

log = logging.getLogger(__name__)

STREAM_PATH = "/api/v1/stream"
DEFAULT_MAX_SUBSCRIBERS = 100
DEFAULT_QUEUE_SIZE = 32
DEFAULT_HISTORY = 512
DEFAULT_MAX_CONNECTION_S = 900.0
DEFAULT_STALE_AFTER_S = 60.0
KEEPALIVE_S = 15.0

# compute(pairs, as_of) -> {(line, lang): the status answer as JSON-able dict}
Compute = Callable[[list[tuple[str, str]], datetime], Awaitable[dict[tuple[str, str], dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    line: str
    lang: str
    data: str

    def text(self) -> str:
        return f"id: {self.id}\nevent: status\ndata: {self.data}\n\n"


@dataclass(eq=False)
class Subscriber:
    lines: frozenset[str]
    lang: str
    queue: asyncio.Queue[Event | None]
    backlog: list[Event] = field(default_factory=list)
    ended: bool = False

    def wants(self, e: Event) -> bool:
        return e.line in self.lines and e.lang == self.lang

    def end(self) -> None:
        """Stop this client's stream at its next read (whatever it has queued is dropped)."""
        self.ended = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class StreamFull(Exception):
    pass


class StatusStream:
    """The one producer and its subscribers; lives on the server's loop."""

    def __init__(self, compute: Compute, *, refresh: Refresh, max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
                 queue_size: int = DEFAULT_QUEUE_SIZE, history: int = DEFAULT_HISTORY,
                 max_connection_s: float = DEFAULT_MAX_CONNECTION_S, stale_after_s: float = DEFAULT_STALE_AFTER_S,
                 on_event: Callable[[], None] = lambda: None, on_drop: Callable[[], None] = lambda: None,
                 on_count: Callable[[int], None] = lambda n: None) -> None:
        self.compute = compute
        self.refresh = refresh if refresh.on else Refresh(DEFAULT_REFRESH_PERIOD_S, refresh.clock)
        self.max_subscribers = max_subscribers
        self.queue_size = queue_size
        self.max_connection_s = max_connection_s
        self.stale_after_s = stale_after_s
        self.history: deque[Event] = deque(maxlen=history)
        self.subscribers: set[Subscriber] = set()
        self.closed = False
        self.ticks = 0
        self._next_id = time.time_ns() // 1_000_000
        self._task: asyncio.Task[None] | None = None
        self._on_event, self._on_drop, self._on_count = on_event, on_drop, on_count

    # ---- subscribers -------------------------------------------------------------------------------
    def subscribe(self, lines: list[str], lang: str, last_event_id: int | None) -> Subscriber:
        if self.closed:
            raise StreamFull("the server is shutting down")
        if len(self.subscribers) >= self.max_subscribers:
            raise StreamFull(f"{self.max_subscribers} clients listen already")
        sub = Subscriber(frozenset(lines), lang, asyncio.Queue(self.queue_size))
        held = [e for e in self.history if sub.wants(e)]
        if (last_event_id is not None and self.history and self.history[0].id <= last_event_id + 1
                and last_event_id < self._next_id):
            sub.backlog = [e for e in held if e.id > last_event_id]  # everything missed is still held
        else:
            newest: dict[str, Event] = {}
            for e in held:
                newest[e.line] = e
            sub.backlog = sorted(newest.values(), key=lambda e: e.id)
        self.subscribers.add(sub)
        self._on_count(len(self.subscribers))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="status-stream")
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self._on_count(len(self.subscribers))

    def close(self) -> None:
        """End every stream and the producer (the server is shutting down)."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.end()
        if self._task is not None:
            self._task.cancel()

    # ---- the producer ------------------------------------------------------------------------------
    async def _run(self) -> None:
        while self.subscribers and not self.closed:
            period_s = self.refresh.period_s
            # just past the boundary: a timer that fires a hair early would still be in the last period
            await asyncio.sleep(period_s - (self.refresh.clock() % period_s) + 0.002)
            if not self.subscribers:
                break
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store is down, say: try again next period
                log.warning("the status stream could not compute this period's status: %r", e)

    async def tick(self) -> None:
        """Compute each wanted (line, lang) once and fan the events out."""
        pairs = sorted({(line, sub.lang) for sub in self.subscribers for line in sub.lines})
        if not pairs:
            return
        as_of = self.refresh.now()
        answers = await self.compute(pairs, as_of)
        self.ticks += 1
        for (line, lang), status in answers.items():
            stale = [m["id"] for m in status.get("machines", [])
                     if m.get("last_data") is None
                     or (as_of - datetime.fromisoformat(m["last_data"])).total_seconds() > self.stale_after_s]
            data = json.dumps({"line": line, "lang": lang, "as_of": status.get("as_of"), "stale": stale,
                               "status": status}, ensure_ascii=False, separators=(",", ":"))
            event = Event(self._next_id, line, lang, data)
            self._next_id += 1
            self.history.append(event)
            self._on_event()
            for sub in list(self.subscribers):
                if not sub.wants(event) or sub.ended:
                    continue
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    log.info("dropped a stream client that did not keep up (%d events queued)", self.queue_size)
                    self._on_drop()
                    self.unsubscribe(sub)
                    sub.end()

    async def events(self, sub: Subscriber, retry_ms: int) -> AsyncIterator[str]:
        deadline = time.monotonic() + self.max_connection_s
        try:
            yield f"retry: {retry_ms}\n\n"
            for e in sub.backlog:
                yield e.text()
            while not sub.ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    item = await asyncio.wait_for(sub.queue.get(), min(KEEPALIVE_S, left))
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is None:
                    return
                yield item.text()
        finally:
            self.unsubscribe(sub)


def status_compute(app: Any) -> Compute:
    """The stream's compute: each line's status answer, all pairs in one run on a figure worker."""
    from api.routes.status import status
    from core.readside import Figures

    async def on_worker(pairs: list[tuple[str, str]], as_of: datetime) -> dict[tuple[str, str], dict[str, Any]]:
        state = app.state
        plant = state.plant
        store = state.store_here
        if not state.store_open:
            await store.open()
            state.store_open = True
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for line_id, lang in pairs:
            line = plant.line(line_id)
            if line is not None:
                answer = await status(line=line, fig=Figures(plant, store), as_of=as_of, lang=cast(Lang, lang))
                out[(line_id, lang)] = answer.model_dump(mode="json")
        return out

    async def compute(pairs: list[tuple[str, str]], as_of: datetime) -> dict[tuple[str, str], dict[str, Any]]:
        answers: dict[tuple[str, str], dict[str, Any]] = await app.state.workers.run(lambda: on_worker(pairs, as_of))
        return answers

    return compute


router = APIRouter(prefix="/api/v1", tags=["figures"])

_STREAM_EXAMPLE = ('retry: 5000\n\nid: 1796090000001\nevent: status\ndata: {"line":"blade-1","lang":"en",'
                   '"as_of":"2026-11-27T10:30:00+09:00","stale":[],"status":{"line":"blade-1", ...}}\n\n')


@router.get(STREAM_PATH.removeprefix("/api/v1"), response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}, "example": _STREAM_EXAMPLE}},
          "description": "Server-Sent Events: one `status` event per line and period"},
    404: {"model": Problem, "description": "Unknown line"},
    503: {"model": Problem, "description": "Too many clients listen already, or the server is shutting down; "
                                           "see Retry-After"}})
async def stream(request: Request, plant: PlantDep, lang: LangDep,
                 lines: Annotated[str | None, Query(description="Line ids separated by commas; default: every line",
                                                    examples=["blade-1,press-2"])] = None,
                 last_event_id: Annotated[str | None, Header(
                     description="The id of the last event received (browsers send it when they reconnect)")] = None,
                 ) -> StreamingResponse:
    """Each line's status (the ``/lines/{id}/status`` answer: states, counts, OEE so far) once per refresh
    period, with the machines whose data is stale. Computed once per period for all listeners."""
    wanted = [x.strip() for x in (lines or "").split(",") if x.strip()] or [ln.id for ln in plant.lines]
    unknown = [x for x in wanted if plant.line(x) is None]
    if unknown:
        known = ", ".join(ln.id for ln in plant.lines)
        raise HTTPException(404, f"unknown line '{unknown[0][:80]}'; this plant has: {known}")
    last: int | None = None
    if last_event_id is not None:
        with contextlib.suppress(ValueError):
            last = int(last_event_id.strip())
    hub: StatusStream = request.app.state.stream
    try:
        sub = hub.subscribe(list(dict.fromkeys(wanted)), lang, last)
    except StreamFull as e:
        raise HTTPException(503, f"the stream cannot take another client now ({e}); retry later",
                            headers={"Retry-After": str(max(1, round(hub.refresh.period_s)))}) from None
    retry_ms = max(1000, round(hub.refresh.period_s * 1000))
    return StreamingResponse(hub.events(sub, retry_ms), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def close_streams(app: Any) -> None:
    """End the streams of ``app`` (or of the app that uvicorn's wrappers hold)."""
    while app is not None and not hasattr(app, "state"):
        app = getattr(app, "app", None)
    hub = getattr(getattr(app, "state", None), "stream", None)
    if isinstance(hub, StatusStream):
        hub.close()


class ClosesStreams:
    """A mixin for ``uvicorn.Server``: end the app's streams when the server shuts down (else uvicorn
    waits for them forever before the app's own shutdown runs)."""

    config: Any

    async def shutdown(self, sockets: Any = None) -> None:
        close_streams(self.config.loaded_app)
        await super().shutdown(sockets)  # type: ignore[misc]


def uvicorn_server(config: Any) -> Any:
    """A ``uvicorn.Server`` for ``config`` that ends the app's streams when it shuts down."""
    import uvicorn

    class Server(ClosesStreams, uvicorn.Server):
        pass

    return Server(config)
