"""Fixtures for the collector tests: a real asyncua server in its own thread and event loop
(so one server serves every test whatever its event loop), an MQTT publisher on the session's
real Mosquitto, plants built from dicts, and a store that can be made unavailable."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes
from paho.mqtt.enums import CallbackAPIVersion

from collector.sources import AckPoint, SampleBatch, SampleSource, SourceItem, SourceOnline
from core.model import Fact, Sample
from core.plant import Plant, parse_plant
from core.store.base import StoreUnavailable
from core.store.sqlite import SqliteStore
from tests.support.services import Mosquitto, free_port

T = TypeVar("T")
NS_URI = "urn:mieruka:test"

# asyncua logs every publish at INFO and its teardown noise at WARNING
logging.getLogger("asyncua").setLevel(logging.ERROR)


class OpcServer:
    """An asyncua server on 127.0.0.1, run by a thread with its own event loop.

    Tests add their own variables (unique names), write values with source timestamps and
    status codes, and stop/start the server to simulate a PLC going away or restarting."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}"
        self.ns = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="opcua-server", daemon=True)
        self._server = Server()
        self._vars: dict[str, Any] = {}
        self._types: dict[str, ua.VariantType] = {}

    # sync, for fixture setup / teardown
    def open(self) -> None:
        self._thread.start()
        self._call(self._open())

    def close(self) -> None:
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _shutdown(self) -> None:
        await self._server.stop()
        # sessions of clients that went away keep timer tasks; end them before the loop closes
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def _open(self) -> None:
        await self._server.init()
        self._server.set_endpoint(self.url)
        self.ns = await self._server.register_namespace(NS_URI)
        await self._server.start()

    # async, for tests (run the coroutine on the server's loop, await it from the test's loop)
    async def _in_server(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def node(self, name: str) -> str:
        return f"ns={self.ns};s={name}"

    async def add(self, name: str, vtype: ua.VariantType, initial: Any) -> str:
        async def add() -> None:
            self._vars[name] = await self._server.nodes.objects.add_variable(
                ua.NodeId(ua.String(name), ua.Int16(self.ns)), name, ua.Variant(initial, vtype))
            self._types[name] = vtype
        await self._in_server(add())
        return self.node(name)

    async def write(self, name: str, value: Any, *, source_time: datetime | None = None,
                    status: int = StatusCodes.Good) -> None:
        dv = ua.DataValue(ua.Variant(value, self._types[name]), StatusCode=ua.StatusCode(ua.UInt32(status)),
                          SourceTimestamp=source_time, ServerTimestamp=datetime.now(UTC))  # type: ignore[arg-type]
        await self._in_server(self._vars[name].write_value(dv))

    async def stop(self) -> None:
        await self._in_server(self._server.stop())

    async def start(self) -> None:
        await self._in_server(self._server.start())


@pytest.fixture(scope="session")
def opc_server() -> Iterator[OpcServer]:
    """One real asyncua server for all collector tests (Server.init() takes ~2 s)."""
    server = OpcServer()
    server.open()
    try:
        yield server
    finally:
        server.close()


class Publisher:
    """A paho client publishing to the test broker; every publish waits for the broker's ack."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    async def publish(self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> None:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        info = self.client.publish(topic, data, qos=qos)
        await asyncio.to_thread(info.wait_for_publish, 10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto_broker: Mosquitto) -> Iterator[Publisher]:
    p = Publisher(mosquitto_broker)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def prefix() -> str:
    """A unique topic / variable prefix, so tests sharing the broker and server never meet."""
    return f"t{uuid.uuid4().hex[:8]}"


def build_plant(sources: dict[str, Any], machines: Sequence[tuple[str, str, dict[str, Any]]]) -> Plant:
    """A plant from (line id, machine id, {source, signals}) triples; one line per distinct id."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for line_id, machine_id, spec in machines:
        lines.setdefault(line_id, []).append({"id": machine_id, **spec})
    return parse_plant({
        "site": {"id": "test-site", "timezone": "Asia/Tokyo"},
        "sources": sources,
        "lines": [{"id": lid, "machines": ms} for lid, ms in lines.items()],
    })


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> Any:
    store = SqliteStore(tmp_path / "facts.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


class FlakyStore:
    """Wraps a real store; while ``down`` every write raises StoreUnavailable (nothing written)."""

    def __init__(self, inner: Any, down: bool = False) -> None:
        self.inner = inner
        self.down = down
        self.attempts = 0
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, facts: Sequence[Fact]) -> None:
        self.attempts += 1
        if self.down:
            self.failures += 1
            raise StoreUnavailable("test: store is down")
        await self.inner.write(facts)


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], within_s: float = 10.0,
                     what: str = "condition") -> None:
    """Poll ``predicate`` until it holds, failing after ``within_s`` seconds (for conditions that
    live outside the collector's stats, e.g. in the store)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while True:
        r = predicate()
        if not isinstance(r, bool):
            r = await r
        if r:
            return
        if loop.time() > end:
            raise TimeoutError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(src: SampleSource, skip: tuple[type, ...] = (SourceOnline, AckPoint)
                  ) -> AsyncIterator[asyncio.Queue[SourceItem]]:
    """Iterate ``src`` in a task into a queue the test reads with deadlines (leaving out the
    markers of the ``skip`` types: by default the per-connection and acknowledgement ones; a
    :class:`SampleBatch` arrives as its samples, one by one)."""
    got: asyncio.Queue[SourceItem] = asyncio.Queue()

    async def pump() -> None:
        async with src:
            async for item in src:
                if isinstance(item, AckPoint):
                    src.ack(item.token)  # as the pipeline does once the facts are durable
                if isinstance(item, SampleBatch) and SampleBatch not in skip:
                    for sample in item.samples():
                        got.put_nowait(sample)
                elif not isinstance(item, skip):
                    got.put_nowait(item)

    task = asyncio.create_task(pump(), name=f"pump:{src.source_id}")
    try:
        async with asyncio.timeout(10):
            await src.wait_ready()
        yield got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def take(q: asyncio.Queue[SourceItem], n: int, within_s: float = 10) -> list[SourceItem]:
    async with asyncio.timeout(within_s):
        return [await q.get() for _ in range(n)]


async def take_samples(q: asyncio.Queue[SourceItem], n: int, within_s: float = 10) -> list[Sample]:
    items = await take(q, n, within_s)
    samples = [i for i in items if isinstance(i, Sample)]
    assert len(samples) == len(items), items
    return samples
