"""Bounded work per request: the heaviest allowed requests run while /healthz answers within a
second, windows are capped before any work, a request over the time limit is answered 503, and
figures run on worker threads (also over InfluxDB, whose connections live on the server's loop)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import Auth
from api.work import Workers
from core.model import Fact
from core.plant import Plant, load_plant
from core.store import open_store
from core.store.base import CountBucket, GaugeBucket, ProductChange, StateChange, Store
from core.store.sqlite import SqliteStore
from tests.api.heavy import write_heavy
from tests.api.support import shift_facts
from tests.conftest import DEMO_PLANT
from tests.support.influxd import Influxd
from tests.support.procs import api_process

V1 = "/api/v1"
HEAVY_START = "2025-10-01T00:00:00+09:00"
HEAVY_END = "2026-11-05T00:00:00+09:00"  # 400 days: the largest window allowed
BIG = {"start": HEAVY_START, "end": HEAVY_END}
# The heaviest requests allowed: the largest window, with the most buckets each route allows
HEAVIEST = [
    ("/lines/blade-1/throughput", {**BIG, "bucket": "1h"}),  # 9 600 buckets
    ("/lines/press-2/throughput", {**BIG, "bucket": "1h"}),
    ("/lines/blade-1/oee", {**BIG, "bucket": "1d"}),  # 400 points, each its own store reads
    ("/lines/press-2/oee", {**BIG, "bucket": "1d"}),
    ("/machines/cnc-1/oee", {**BIG, "bucket": "1d"}),
    ("/lines/blade-1/downtime", BIG),
    ("/lines/press-2/downtime", BIG),
    ("/machines/cnc-1/states", BIG),
    ("/machines/cnc-1/signals/spindle_temp", {**BIG, "bucket": "1h"}),
]
W = {"start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T11:00:00+09:00"}
OPEN = Auth.open_reads()


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def heavy_db(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("heavy") / "heavy.db"
    n = write_heavy(path, plant, datetime.fromisoformat(HEAVY_START), 400)
    assert n > 900_000
    return path


async def test_healthz_answers_within_a_second_while_the_heaviest_requests_run(
        heavy_db: Path, tmp_path: Path) -> None:
    """Against ``mieruka api`` in its own process (uvicorn, its real event loop)."""
    with api_process(DEMO_PLANT, f"sqlite:///{heavy_db}", tmp_path / "api.log") as base:
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            heavy = [asyncio.create_task(c.get(V1 + p, params=q)) for p, q in HEAVIEST]
            probes: list[float] = []
            stores: list[str] = []
            deadline = time.monotonic() + 120
            while not all(h.done() for h in heavy) and time.monotonic() < deadline and len(probes) < 2000:
                t = time.monotonic()
                r = await c.get("/healthz")
                probes.append(time.monotonic() - t)
                stores.append(r.json()["store"])
                assert r.status_code == 200
                await asyncio.sleep(0.05)
            answers = await asyncio.gather(*heavy)
    assert [a.status_code for a in answers] == [200] * len(HEAVIEST), [a.text[:200] for a in answers]
    assert len(answers[0].json()["points"]) == 9600
    assert len(answers[2].json()["points"]) == 400
    assert len(probes) >= 10, "the heavy requests ended before healthz was probed: nothing was measured"
    assert max(probes) < 1.0, sorted(probes)[-5:]
    assert set(stores) == {"ok"}  # a busy store is not a down one


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c


class BlockingStore:
    """A store whose reads wait on ``release`` while ``blocking`` (the slow-store seam), recording the
    thread each read starts on."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.blocking = True
        self.release = asyncio.Event()
        self.threads: set[str] = set()
        self.reads = 0

    async def _gate(self) -> None:
        self.threads.add(threading.current_thread().name)
        self.reads += 1
        if self.blocking:
            await asyncio.wait_for(self.release.wait(), 60)  # bounded even if the test goes wrong

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, facts: Sequence[Fact]) -> None:
        await self.inner.write(facts)

    async def count_buckets(self, machines: Sequence[str], signals: Sequence[str], start_ns: int, end_ns: int,
                            bucket_ns: int) -> list[CountBucket]:
        await self._gate()
        return await self.inner.count_buckets(machines, signals, start_ns, end_ns, bucket_ns)

    async def state_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[StateChange]:
        await self._gate()
        return await self.inner.state_changes(machines, start_ns, end_ns)

    async def product_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[ProductChange]:
        await self._gate()
        return await self.inner.product_changes(machines, start_ns, end_ns)

    async def gauge_buckets(self, machine: str, signal: str, start_ns: int, end_ns: int,
                            bucket_ns: int) -> list[GaugeBucket]:
        await self._gate()
        return await self.inner.gauge_buckets(machine, signal, start_ns, end_ns, bucket_ns)

    async def last_times(self, machines: Sequence[str]) -> dict[str, int]:
        await self._gate()
        return await self.inner.last_times(machines)

    async def ping(self) -> bool:
        return await self.inner.ping()


@pytest.fixture(scope="module")
def small_db(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.api.support import write_facts

    path = tmp_path_factory.mktemp("small") / "small.db"
    write_facts(path, shift_facts(plant))
    return path


@pytest.mark.parametrize(("path", "extra"), [
    ("/lines/blade-1/throughput", {"bucket": "30d"}),
    ("/lines/blade-1/oee", {}),
    ("/machines/cnc-1/oee", {}),
    ("/lines/blade-1/downtime", {}),
    ("/machines/cnc-1/states", {}),
    ("/machines/cnc-1/signals/spindle_temp", {"bucket": "30d"}),
])
async def test_a_292_year_window_is_refused_before_any_work(plant: Plant, small_db: Path, path: str,
                                                            extra: dict[str, str]) -> None:
    store = BlockingStore(SqliteStore(small_db))  # a read would wait; the refusal must come first
    async with serve(create_app(plant, store, auth=OPEN, request_timeout_s=10)) as c:
        r = await c.get(V1 + path, params={"start": "1970-01-02T00:00:00Z", "end": "2262-04-09T00:00:00Z",
                                           **extra})
    assert r.status_code == 422, r.text
    assert "at most 400 days" in r.json()["detail"]
    assert store.reads == 0


async def test_a_request_over_the_time_limit_is_503_and_frees_its_worker(plant: Plant, small_db: Path) -> None:
    store = BlockingStore(SqliteStore(small_db))
    async with serve(create_app(plant, store, auth=OPEN, request_timeout_s=0.5, workers=1,
                                retry_after_s=4)) as c:
        r = await c.get(f"{V1}/lines/blade-1/throughput", params=W)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "4"
        assert r.json() == {"detail": "the request took longer than the API's limit of 0.5 s; ask for a "
                                      "shorter window or fewer buckets"}
        # the one worker was given back once the cancelled request stopped at its store read
        store.blocking = False
        r = await c.get(f"{V1}/lines/blade-1/throughput", params=W)
        assert r.status_code == 200 and r.json()["total_good"] == 35
        assert (await c.get("/healthz")).json() == {"status": "ok", "store": "ok"}


class AnyLoopStore(BlockingStore):
    """Like the SQLite store it wraps, callable from any loop: no hop to the server's loop."""

    loop_bound = False


async def test_at_most_as_many_figures_run_at_once_as_there_are_workers(plant: Plant, small_db: Path) -> None:
    store = BlockingStore(SqliteStore(small_db))
    # refresh 0: no once-per-period answers, so five identical requests are five computations here
    app = create_app(plant, store, auth=OPEN, workers=2, refresh=0)
    pool: Workers = app.state.workers
    async with serve(app) as c:
        requests = [asyncio.create_task(c.get(f"{V1}/lines/blade-1/throughput", params=W)) for _ in range(5)]
        await wait_for(lambda: store.reads == 2 and pool.waiting == 3, 10, "two reading, three waiting")
        assert pool.busy == 2  # the three others have not begun
        store.release.set()
        answers = await asyncio.gather(*requests)
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.json()["total_good"] for a in answers} == {35}
    assert (pool.busy, pool.waiting) == (0, 0)


async def wait_for(cond: Callable[[], bool], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"not within {deadline_s} s: {what}")
        await asyncio.sleep(0.01)


async def test_figures_run_on_worker_threads_not_the_servers_loop(plant: Plant, small_db: Path) -> None:
    store = AnyLoopStore(SqliteStore(small_db))
    store.blocking = False
    async with serve(create_app(plant, store, auth=OPEN)) as c:
        for path in ("/lines/blade-1/throughput", "/lines/blade-1/oee", "/lines/blade-1/downtime",
                     "/machines/cnc-1/states", "/lines/blade-1/status"):
            assert (await c.get(V1 + path, params=W if not path.endswith("status") else {})).status_code == 200
    assert store.threads and all(t.startswith("api-worker-") for t in store.threads), store.threads


async def test_influxdb_figures_through_the_workers(plant: Plant, influxd_server: Influxd) -> None:
    """InfluxDB's connections belong to the server's loop: worker reads hop to it and back."""
    url = influxd_server.url()
    writer = open_store(url)
    await writer.open()
    try:
        await writer.write(shift_facts(plant))
    finally:
        await writer.close()
    async with serve(create_app(plant, open_store(url), auth=OPEN, workers=2)) as c:
        answers = await asyncio.gather(*(c.get(f"{V1}/lines/blade-1/throughput", params=W) for _ in range(6)),
                                       c.get(f"{V1}/lines/blade-1/oee", params=W))
        assert [a.status_code for a in answers] == [200] * 7, [a.text[:200] for a in answers]
        assert {a.json()["total_good"] for a in answers[:6]} == {35}
        assert answers[6].json()["figures"]["counts"]["good"] == 35


async def test_an_offloaded_route_reads_a_request_body_under_uvicorn() -> None:
    """uvicorn's receive channel belongs to the server's loop: a POST on an offloaded route (operator
    input will be one) gets its body, not an error from awaiting that channel on a worker's loop."""
    import uvicorn
    from fastapi import APIRouter, Body

    from api.work import OffloadedRoute
    from tests.support.procs import wait_until
    from tests.support.services import free_port

    router = APIRouter(route_class=OffloadedRoute)

    @router.post("/echo")
    async def echo(payload: dict[str, int] = Body(...)) -> dict[str, object]:
        return {"sum": sum(payload.values()), "thread": threading.current_thread().name}

    pool = Workers(2)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.start()
        try:
            yield
        finally:
            pool.stop()

    app = FastAPI(lifespan=lifespan)
    app.state.workers = pool
    app.include_router(router)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async def started() -> bool:
            return bool(server.started)

        await wait_until(started, 20, "uvicorn started", poll_s=0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            # large enough to arrive in several reads, so the body is not all there with the headers
            r = await c.post("/echo", json={**{f"k{i}": 0 for i in range(100_000)}, "a": 2, "b": 40})
        assert r.status_code == 200, r.text
        assert r.json()["sum"] == 42
        assert str(r.json()["thread"]).startswith("api-worker-")
    finally:
        server.should_exit = True
        async with asyncio.timeout(20):
            await task
