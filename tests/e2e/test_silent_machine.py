"""Silent machines (issue 13, point 3), live: machines publishing to a real Mosquitto (persistent
session, so the broker stays up and the collector's link never drops) → the collector → a real
SQLite store → the API app.

A machine that stops publishing is ``offline`` in ``/lines/{id}/status`` within its
``stale_after_s`` plus one flush, from the moment its silence reached ``stale_after_s``; its
neighbour that keeps publishing stays ``running``; when its data returns it is back in its state,
not backdated over the silence. With the collector stopped, the API marks every machine whose
newest data is older than its ``stale_after_s`` as ``stale`` (what the wall board marks).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from api.auth import Auth
from collector.pipeline import Collector
from collector.spool import Spool
from core.plant import Plant, parse_plant
from core.store.sqlite import SqliteStore
from tests.collector.conftest import Publisher
from tests.support.procs import collector_running
from tests.support.services import Mosquitto

STALE_S = 1.0
FLUSH_S = 0.4
# what the deadline allows beyond stale_after_s + one flush: the silence check's period (0.1 s
# here), a spool commit (0.02 s), a poll of the API (0.05 s) and scheduling on a busy machine
SLACK_S = 0.6
STATUS = "/api/v1/lines/line-1/status"


def plant(broker: Mosquitto, prefix: str) -> Plant:
    def machine(mid: str) -> dict[str, Any]:
        topic = f"{prefix}/{mid}"
        return {"id": mid, "source": "broker", "ideal_cycle_s": 1.0, "stale_after_s": STALE_S, "signals": {
            "good": {"topic": topic, "field": "good", "time_field": "ts", "counter_bits": 32},
            "state": {"topic": topic, "field": "state", "time_field": "ts", "map": {1: "running", 3: "down"}}}}

    return parse_plant({
        "site": {"id": "silence"},
        "sources": {"broker": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "qos": 1,
                                        "client_id": f"{prefix}-collector"}}},
        "lines": [{"id": "line-1", "machines": [machine("press"), machine("lathe")]}],
    })


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@contextlib.asynccontextmanager
async def api(p: Plant, db: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(p, SqliteStore(db), auth=Auth.open_reads(), refresh=0)  # live answers: no refresh period
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            yield c


async def machines(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    r = await client.get(STATUS)
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["machines"]}


async def poll(client: httpx.AsyncClient, what: str, ok: Any, within_s: float) -> dict[str, dict[str, Any]]:
    """The API's machines once ``ok(machines)`` holds; fails after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        ms = await machines(client)
        if ok(ms):
            return ms
        assert time.monotonic() < deadline, f"{what} not within {within_s}s: {ms}"
        await asyncio.sleep(0.05)


async def test_a_silent_machine_is_offline_in_the_api_and_back_when_its_data_returns(
        mosquitto_broker: Mosquitto, tmp_path: Path) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    p = plant(mosquitto_broker, prefix)
    db = tmp_path / "facts.db"
    store = SqliteStore(db)
    await store.open()
    pub = Publisher(mosquitto_broker)
    good = {"press": 0, "lathe": 0}

    async def send(mid: str, **values: int) -> None:
        await pub.publish(f"{prefix}/{mid}", {"ts": now_ms(), **values})

    async def lathe_keeps_publishing() -> None:
        while True:  # a machine publishing every 0.3 s, well inside its stale_after_s
            good["lathe"] += 1
            await send("lathe", good=good["lathe"], state=1)
            await asyncio.sleep(0.3)

    try:
        collector = Collector(p, store, flush_interval_s=FLUSH_S)
        assert collector.silence_check_s == 0.1
        async with collector_running(collector), api(p, db) as client:
            async with asyncio.timeout(20):
                await collector.wait_ready()
            lathe = asyncio.create_task(lathe_keeps_publishing())
            try:
                await send("press", good=0, state=1)
                await poll(client, "both running", lambda ms: ms["press"]["state"] == ms["lathe"]["state"]
                           == "running", 10)
                # the press goes silent now
                await send("press", good=1, state=1)
                silent_at, silent_ms = time.monotonic(), now_ms()
                ms = await poll(client, "press offline", lambda ms: ms["press"]["state"] == "offline",
                                STALE_S + FLUSH_S + SLACK_S)
                took = time.monotonic() - silent_at
                assert took >= STALE_S, f"offline after {took:.2f}s of silence, before stale_after_s"
                assert ms["lathe"]["state"] == "running"
                # the offline fact is when the silence reached stale_after_s (collector clock)
                since = datetime.fromisoformat(ms["press"]["since"])
                start = datetime.fromtimestamp(silent_ms / 1000, UTC)
                assert start + timedelta(seconds=STALE_S) <= since < start + timedelta(seconds=STALE_S + SLACK_S)
                assert collector.stats.silent_facts == 1 and collector.stats.offline_facts == 0

                # data returns (a counter, no state): running again from then, not over the silence
                await send("press", good=2)
                ms = await poll(client, "press back", lambda ms: ms["press"]["state"] == "running", 10)
                assert datetime.fromisoformat(ms["press"]["since"]) > since
            finally:
                lathe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lathe
            async with asyncio.timeout(10):
                await collector.wait_idle()
            assert not (await machines(client))["lathe"]["stale"]

        # the collector is gone: the store still says "running", the API says it is stale
        async with api(p, db) as client:
            ms = await poll(client, "lathe stale", lambda ms: ms["lathe"]["stale"], STALE_S + 5)
            assert ms["lathe"]["state"] == "running"
        changes = await store.state_changes(["press"], 0, 4_000_000_000_000_000_000)
        assert [c.state for c in changes] == ["running", "offline", "running"]
    finally:
        pub.close()
        await store.close()


async def test_a_restart_reads_what_the_persistent_session_kept_before_judging_silence(
        mosquitto_broker: Mosquitto, tmp_path: Path) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    p = plant(mosquitto_broker, prefix)
    db, spool_dir = tmp_path / "facts.db", tmp_path / "spool"
    store = SqliteStore(db)
    await store.open()
    pub = Publisher(mosquitto_broker)

    async def send(mid: str, **values: int) -> None:
        await pub.publish(f"{prefix}/{mid}", {"ts": now_ms(), **values})

    try:
        with Spool(spool_dir) as spool:
            first = Collector(p, store, spool=spool, flush_interval_s=FLUSH_S)
            async with collector_running(first):
                async with asyncio.timeout(20):
                    await first.wait_ready()
                await send("press", good=0, state=1)
                async with asyncio.timeout(20):
                    await first.wait_until(lambda s: s.samples_in >= 2)
                    await first.wait_idle()
        # away for longer than stale_after_s (the point of this test), while the press goes on
        # publishing: the broker keeps its messages for the collector's session
        await send("press", good=1, state=3)
        await asyncio.sleep(STALE_S * 1.5)
        await send("press", good=2, state=3)
        with Spool(spool_dir) as spool:
            second = Collector(p, store, spool=spool, flush_interval_s=FLUSH_S)
            async with collector_running(second), api(p, db) as client:
                async with asyncio.timeout(20):
                    await second.wait_ready()
                    await second.wait_until(lambda s: s.samples_in >= 4)
                # what waited arrives first: the press is down, not offline for the time it was away
                ms = await poll(client, "press down", lambda ms: ms["press"]["state"] == "down", 10)
                down_since = datetime.fromisoformat(ms["press"]["since"])
                await poll(client, "press offline", lambda ms: ms["press"]["state"] == "offline",
                           STALE_S + FLUSH_S + SLACK_S + 1)
        changes = await store.state_changes(["press"], 0, 4_000_000_000_000_000_000)
        assert [c.state for c in changes] == ["running", "down", "offline"]
        assert changes[2].time_ns / 1e9 >= down_since.timestamp() + STALE_S
    finally:
        pub.close()
        await store.close()
