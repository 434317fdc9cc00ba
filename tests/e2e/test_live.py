"""Live end to end: simulators (OPC UA + real Mosquitto) → collector → store (real influxd, then
SQLite) → API; the API's per-line totals over a window equal the ground-truth ledger exactly."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from collector.pipeline import Collector
from core.plant import dump_plant
from core.store import open_store
from tests.e2e.plants import fast_plant
from tests.support.ledger import line_totals, read_ledger
from tests.support.procs import api_process, counting_everywhere, interrupt, mieruka, wait_until
from tests.support.services import Mosquitto, free_port

WINDOW_S = 20


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


@pytest.fixture(params=["influxdb", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'live.db'}"
    server = request.getfixturevalue("influxd_server")
    return str(server.url(f"e2e_{uuid.uuid4().hex[:8]}"))


async def test_live_totals_equal_ledger(store_url: str, tmp_path: Path, mosquitto_broker: Mosquitto) -> None:
    plant = fast_plant(free_port(), mosquitto_broker.port, prefix=f"live-{uuid.uuid4().hex[:6]}")
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(dump_plant(plant), encoding="utf-8")
    ledger = tmp_path / "ledger.jsonl"

    store = open_store(store_url)
    await store.open()
    collector = Collector(plant, store, flush_interval_s=0.5)
    stop = asyncio.Event()
    collecting = asyncio.create_task(collector.run(stop), name="collector")
    sim = mieruka("simulate", "--plant", str(plant_file), "--seed", "7", "--duration", "90",
                  "--truth", str(ledger), log=tmp_path / "simulate.log")
    machines = [m.id for _, m in plant.machines()]
    try:
        async def subscribed_everywhere() -> bool:
            assert sim.poll() is None, (tmp_path / "simulate.log").read_text()
            assert not collecting.done(), collecting
            return await counting_everywhere(store, machines)

        await wait_until(subscribed_everywhere, 60, "a count from every machine in the store")
        t0 = datetime.now(UTC) + timedelta(seconds=1)
        t0 = t0.replace(microsecond=t0.microsecond // 1000 * 1000)  # the API gets it to the millisecond
        t1 = t0 + timedelta(seconds=WINDOW_S)
        await asyncio.sleep(max(0.0, (t1 - datetime.now(UTC)).total_seconds()))  # the window must pass first
        records = read_ledger(ledger)
        expected = {}
        for line in plant.lines:
            out = line.output_machines[0].id
            expected[line.id] = line_totals(records, t0, t1, out, [m.id for m in line.machines])
        assert all(g > 0 for g, _ in expected.values()), expected  # a window with production

        with api_process(plant_file, store_url, tmp_path / "api.log") as base:
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                got: dict[str, tuple[int, int]] = {}

                async def api_matches_ledger() -> bool:
                    for line in plant.lines:
                        r = await client.get(f"/api/v1/lines/{line.id}/throughput",
                                             params={"start": _iso(t0), "end": _iso(t1), "bucket": "5m"})
                        assert r.status_code == 200, r.text
                        body = r.json()
                        got[line.id] = (body["total_good"], body["total_scrap"])
                    return got == expected

                # the collector flushes every 0.5 s: wait on the condition, not a sleep
                try:
                    await wait_until(api_matches_ledger, 30, "API totals equal to the ledger")
                finally:
                    print("expected", expected, "got", got)
        assert got == expected
    finally:
        stop.set()
        await asyncio.wait_for(collecting, 30)
        interrupt(sim)
        await store.close()
