"""GET /api/v1/stream: line status as Server-Sent Events from a real uvicorn on loopback, read by a real
HTTP client; one producer per period for every listener, Last-Event-ID, bounded listeners and queues,
and the stream's end when the server shuts down."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.auth import Auth
from api.cache import Refresh
from api.routes.stream import StatusStream, uvicorn_server
from core.model import Fact
from core.plant import Plant, load_plant
from core.store.sqlite import SqliteStore
from tests.api.support import shift_facts, write_facts
from tests.conftest import DEMO_PLANT
from tests.support.services import free_port

STREAM = "/api/v1/stream"
PERIOD_S = 0.2
OPEN = Auth.open_reads()


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def db(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "mieruka.db"
    write_facts(path, shift_facts(plant))
    return path


@dataclass
class Served:
    url: str
    app: FastAPI
    server: Any
    thread: threading.Thread

    @property
    def hub(self) -> StatusStream:
        hub: StatusStream = self.app.state.stream
        return hub


@contextmanager
def stream_server(plant: Plant, db: Path, **stream_options: Any) -> Iterator[Served]:
    """A real uvicorn on a free loopback port with a short refresh period; stopped after."""
    port = free_port()
    app = create_app(plant, SqliteStore(db), auth=OPEN, refresh=PERIOD_S, stream_options=stream_options)
    server = uvicorn_server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", app, server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "the API did not stop"


@dataclass
class Sse:
    id: int
    event: str
    data: dict[str, Any]


class Listener:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self) -> Sse | None:
        """The next event (None when the stream ended)."""
        fields: dict[str, str] = {}
        async for line in self.lines:
            if line == "":
                if "data" in fields:
                    return Sse(int(fields["id"]), fields.get("event", "message"), json.loads(fields["data"]))
                fields = {}
                continue
            if line.startswith(":"):
                self.comments.append(line)
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        return None

    async def take(self, n: int) -> list[Sse]:
        out: list[Sse] = []
        while len(out) < n:
            e = await self.next()
            assert e is not None, f"the stream ended after {len(out)} of {n} events"
            out.append(e)
        return out


@asynccontextmanager
async def listen(base: str, params: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> AsyncIterator[Listener]:
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10.0)) as c:
        async with c.stream("GET", STREAM, params=params or {"lines": "blade-1"}, headers=headers or {}) as r:
            assert r.status_code == 200, (await r.aread())[:300]
            assert r.headers["content-type"].startswith("text/event-stream")
            yield Listener(r)


async def until(cond: Any, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"not within {deadline_s} s: {what}")
        await asyncio.sleep(0.02)


async def test_one_producer_per_period_for_every_listener(plant: Plant, db: Path) -> None:
    with stream_server(plant, db) as s:
        async with asyncio.timeout(30), listen(s.url) as a, listen(s.url) as b, listen(s.url) as c:
            got = [await x.take(4) for x in (a, b, c)]
            ticks = s.hub.ticks
        for events in got:
            assert all(e.event == "status" and e.data["line"] == "blade-1" for e in events)
            ids = [e.id for e in events]
            assert ids == sorted(set(ids)), ids  # ids only grow
        # one event per period for all three: the same ids, not three computations' worth
        common = set.intersection(*({e.id for e in events} for events in got))
        assert len(common) >= 2, [[e.id for e in events] for events in got]
        assert s.hub.ticks >= ticks
        first = got[0][0].data
        status = first["status"]
        assert status["line"] == "blade-1" and [m["id"] for m in status["machines"]] == \
            ["cnc-1", "cnc-2", "deburr-1", "inspect-1"]
        assert first["as_of"] == status["as_of"]
        # the data is from November: every machine's data is stale now
        assert set(first["stale"]) == {"cnc-1", "cnc-2", "deburr-1", "inspect-1"}
        # the period's instant, aligned: a multiple of the period
        t = datetime.fromisoformat(first["as_of"]).timestamp()
        assert abs(t / PERIOD_S - round(t / PERIOD_S)) < 1e-3
        # and the events were counted once per line and period
        async with httpx.AsyncClient() as c:
            metrics = (await c.get(f"{s.url}/metrics")).text
        events_total = float(next(ln.split()[-1] for ln in metrics.splitlines()
                                  if ln.startswith("mieruka_api_stream_events_total")))
        assert events_total == s.hub.ticks  # one (line, lang) listened to: one event per tick


async def test_last_event_id_gets_what_was_missed_or_the_current_status(plant: Plant, db: Path) -> None:
    en = {"lines": "blade-1", "lang": "en"}
    with stream_server(plant, db) as s:
        async with asyncio.timeout(30):
            async with listen(s.url, en) as a:
                seen = await a.take(2)
            last = seen[-1].id
            async with listen(s.url, en) as other:  # keeps the producer going while the first one is away
                await other.take(3)
                missed = [e.id for e in s.hub.history if e.line == "blade-1" and e.lang == "en" and e.id > last]
                async with listen(s.url, en, {"Last-Event-ID": str(last)}) as again:
                    back = await again.take(len(missed) + 1)
            assert missed and [e.id for e in back[:len(missed)]] == missed, (missed, [e.id for e in back])
            assert back[len(missed)].id > missed[-1]
            # an id whose successors are no longer held (or a stranger's): the newest held status, then on
            newest = max(e.id for e in s.hub.history if e.line == "blade-1" and e.lang == "en")
            async with listen(s.url, en, {"Last-Event-ID": "1"}) as fresh:
                first = await fresh.next()
            assert first is not None and first.id >= newest
            assert first.data["status"]["name"] == "Turbine blade line 1"


async def test_listeners_are_bounded_and_unknown_lines_refused(plant: Plant, db: Path) -> None:
    with stream_server(plant, db, max_subscribers=2) as s:
        async with asyncio.timeout(30), listen(s.url) as a, listen(s.url) as b:
            await until(lambda: len(s.hub.subscribers) == 2, 10, "two listeners")
            async with httpx.AsyncClient(timeout=5) as c:
                r = await c.get(f"{s.url}{STREAM}")
            assert r.status_code == 503 and "Retry-After" in r.headers and isinstance(r.json()["detail"], str)
            await a.take(1)
            await b.take(1)
        await until(lambda: not s.hub.subscribers, 10, "listeners gone after they closed")
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(f"{s.url}{STREAM}", params={"lines": "blade-1,nope"})
        assert r.status_code == 404 and "nope" in r.json()["detail"]


async def test_the_stream_ends_when_the_server_shuts_down(plant: Plant, db: Path) -> None:
    with stream_server(plant, db) as s:
        async with asyncio.timeout(30), listen(s.url) as a:
            await a.take(1)
            s.server.should_exit = True
            while await a.next() is not None:  # the server ends the stream: no hang, no error
                pass
        await until(lambda: not s.thread.is_alive(), 15, "the server stopped")


async def test_a_slow_listener_is_dropped_not_buffered() -> None:
    """The producer's fan-out with a listener that never reads: its queue stays bounded, it is dropped
    (its stream ends), and the one that reads goes on."""
    computed: list[datetime] = []

    async def compute(pairs: list[tuple[str, str]], as_of: datetime) -> dict[tuple[str, str], dict[str, Any]]:
        computed.append(as_of)
        return {p: {"as_of": as_of.isoformat(), "machines": []} for p in pairs}

    dropped: list[int] = []
    hub = StatusStream(compute, refresh=Refresh(3600.0), queue_size=3, on_drop=lambda: dropped.append(1))
    slow = hub.subscribe(["a"], "en", None)
    fast = hub.subscribe(["a"], "en", None)
    reader = hub.events(fast, 1000)
    assert (await anext(reader)).startswith("retry:")
    for _ in range(5):
        await hub.tick()
        assert (await anext(reader)).startswith(f"id: {hub.history[-1].id}\n")
        assert slow.queue.qsize() <= 3
    assert len(computed) == 5  # once per tick for both listeners
    assert dropped == [1] and slow.ended and slow not in hub.subscribers and fast in hub.subscribers
    assert [x async for x in hub.events(slow, 1000)] == ["retry: 1000\n\n"]  # its stream just ends
    hub.close()
    assert [x async for x in reader] == []


async def test_a_state_change_in_the_store_reaches_the_listener(plant: Plant, tmp_path: Path) -> None:
    """A fact written while a client listens shows in a later event: the machine's new state and
    reason, and it is no longer stale."""
    path = tmp_path / "live.db"
    await asyncio.to_thread(write_facts, path, shift_facts(plant))
    with stream_server(plant, path) as s:
        async with asyncio.timeout(30), listen(s.url, {"lines": "blade-1", "lang": "en"}) as a:
            before = (await a.take(1))[0].data
            assert "cnc-1" in before["stale"]
            now_ns = time.time_ns()
            writer = SqliteStore(path)
            await writer.open()
            try:
                await writer.write([Fact("state", now_ns, "blade-1", "cnc-1", "state", "down", 20)])
            finally:
                await writer.close()
            while True:  # bounded by the timeout above
                e = (await a.take(1))[0]
                cnc1 = next(m for m in e.data["status"]["machines"] if m["id"] == "cnc-1")
                if datetime.fromisoformat(e.data["as_of"]).timestamp() * 1e9 >= now_ns:
                    break
        assert (cnc1["state"], cnc1["reason"]["code"], cnc1["reason"]["label"]) == ("down", 20, "Spindle fault")
        assert "cnc-1" not in e.data["stale"] and "cnc-2" in e.data["stale"]
