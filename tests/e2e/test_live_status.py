"""Live status: simulators (OPC UA + real Mosquitto) → collector (in-process) → real influxd → API
process. ``/lines/{id}/status`` shows each machine's state, reason and since-when as the simulators'
ground-truth ledger has it, within a few flush intervals.

The ledger is re-read on every poll: a machine may change state between reading the ledger and
asking the API, so each poll compares the API's answer with the ledger read right after it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from collector.pipeline import Collector
from core.plant import Plant, dump_plant
from core.store import open_store
from tests.e2e.plants import fast_plant
from tests.support.influxd import Influxd
from tests.support.ledger import parse_t
from tests.support.procs import api_process, interrupt, mieruka, wait_until
from tests.support.services import Mosquitto, free_port, wait_port

FLUSH_S = 0.5
DEADLINE_S = 6 * FLUSH_S  # a few flush intervals: flush + OPC UA publishing + MQTT + one API round trip
CHECKS = 5  # ledger changes the API must catch up with

State = tuple[str, int | None, datetime]  # state, reason, since


def latest_states(ledger: Path) -> dict[str, State]:
    """Each machine's current (state, reason, since) per the ledger; identical records in a row are one
    stretch. Only complete lines count (the simulator may be writing the last one)."""
    text = ledger.read_text(encoding="utf-8")
    out: dict[str, State] = {}
    for line in text[: text.rfind("\n") + 1].splitlines():
        if not line.strip():
            continue
        r: dict[str, Any] = json.loads(line)
        if r.get("kind") != "state":
            continue
        m, state, reason = r["machine"], r["state"], r.get("reason")
        prev = out.get(m)
        if prev is not None and (prev[0], prev[1]) == (state, reason):
            continue
        out[m] = (state, reason, parse_t(r["t"]))
    return out


def api_states(body: dict[str, Any]) -> dict[str, State | None]:
    out: dict[str, State | None] = {}
    for m in body["machines"]:
        since = m["since"]
        reason = m["reason"]["code"] if m["reason"] is not None else None
        out[m["id"]] = (m["state"], reason, datetime.fromisoformat(since)) if since is not None else None
    return out


def ledger_moved(ledger: Path, seen: dict[str, State]) -> Callable[[], Awaitable[bool]]:
    async def moved() -> bool:
        return latest_states(ledger) != seen

    return moved


async def catch_up(client: httpx.AsyncClient, plant: Plant, ledger: Path) -> None:
    """Poll status until every machine has once shown the state the ledger has right after the poll."""
    pending = {m.id for _, m in plant.machines()}
    last: dict[str, Any] = {}

    async def caught_up() -> bool:
        for line in plant.lines:
            r = await client.get(f"/api/v1/lines/{line.id}/status")
            assert r.status_code == 200, r.text
            got = api_states(r.json())
            now = latest_states(ledger)  # re-read: a change may have happened meanwhile
            for m in [m.id for m in line.machines]:
                last[m] = (got[m], now[m])
                if got[m] == now[m]:
                    pending.discard(m)
        return not pending

    try:
        await wait_until(caught_up, DEADLINE_S, "status equal to the ledger", poll_s=0.05)
    except TimeoutError:
        print("still pending:", pending, "(api, ledger):", {m: last[m] for m in pending})
        raise


async def test_status_follows_the_ledger_live(tmp_path: Path, mosquitto_broker: Mosquitto,
                                              influxd_server: Influxd) -> None:
    plant = fast_plant(free_port(), mosquitto_broker.port, prefix=f"status-{uuid.uuid4().hex[:6]}")
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(dump_plant(plant), encoding="utf-8")
    ledger = tmp_path / "ledger.jsonl"
    store_url = influxd_server.url(f"status_{uuid.uuid4().hex[:8]}")
    machines = [m.id for _, m in plant.machines()]

    store = open_store(store_url)
    await store.open()
    sim = mieruka("simulate", "--plant", str(plant_file), "--seed", "5", "--duration", "120",
                  "--truth", str(ledger), log=tmp_path / "simulate.log")
    # the collector starts once the PLC listens: were it unreachable first, its machines would be
    # offline until the connection (as they should), and a state unchanged since the simulator's
    # start would show the connection time as its start, not the ledger's
    opcua_port = int(str(plant.sources["plc"].opcua.endpoint).rsplit(":", 1)[1])  # type: ignore[union-attr]
    await asyncio.to_thread(wait_port, opcua_port, 60.0, sim)
    collector = Collector(plant, store, flush_interval_s=FLUSH_S)
    stop = asyncio.Event()
    collecting = asyncio.create_task(collector.run(stop), name="collector")
    try:
        async def every_machine_stored() -> bool:
            assert sim.poll() is None, (tmp_path / "simulate.log").read_text()
            assert not collecting.done(), collecting
            return set(await store.last_times(machines)) == set(machines)

        await wait_until(every_machine_stored, 60, "a fact from every machine in the store")

        # status is at most one refresh period behind (answers about "now" are computed once per
        # period): a short period here, so the catch-up deadline still measures the pipeline
        with api_process(plant_file, store_url, tmp_path / "api.log", "--refresh-period", "0.5") as base:
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                lags: list[float] = []
                seen = latest_states(ledger)
                for _ in range(CHECKS):
                    # each check starts right after the ledger records a change: the hardest moment
                    await wait_until(ledger_moved(ledger, seen), 30, "a state change in the ledger", poll_s=0.02)
                    t0 = time.monotonic()
                    seen = latest_states(ledger)  # the ledger at T
                    assert set(seen) == set(machines), seen
                    await catch_up(client, plant, ledger)
                    lags.append(time.monotonic() - t0)
                print("catch-up after a ledger change (s):", [round(x, 3) for x in lags])
                body = (await client.get(f"/api/v1/lines/{plant.lines[0].id}/status")).json()
                assert body["shift"] is not None and body["counts"]["good"] >= 0
                assert all(m["last_data"] is not None for m in body["machines"])
    finally:
        stop.set()
        await asyncio.wait_for(collecting, 30)
        interrupt(sim)
        await store.close()
