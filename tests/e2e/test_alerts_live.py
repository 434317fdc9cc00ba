"""Alerts live: OPC UA simulators with breakdowns → collector (in-process) → real influxd → two
``mieruka api`` processes → a webhook receiver on 127.0.0.1. Every "down" message names a
breakdown of the simulators' ground-truth ledger by its exact start, arrives after the rule's time
and within one check period (plus the pipeline's latency) of it, its "resolved" after the repair;
each is sent once though two replicas check (claims in InfluxDB); every long breakdown is told."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from collector.pipeline import Collector
from core.plant import dump_plant, parse_plant
from core.store import open_store
from tests.e2e.plants import fast_plant
from tests.support.influxd import Influxd
from tests.support.ledger import down_runs, read_ledger
from tests.support.procs import api_process, interrupt, mieruka, wait_until
from tests.support.services import free_port, wait_port
from tests.support.webhook import receiver

FLUSH_S = 0.5
MINUTES = 0.025  # a rule's 1.5 s
CHECK_S = 0.5
# flush + OPC UA publishing + a store read + the InfluxDB claim's settle time + the POST
LATENCY_S = 3.0
RUN_S = 20.0




async def test_breakdowns_are_told_once_with_their_ledger_start(tmp_path: Path, influxd_server: Influxd) -> None:
    base = fast_plant(free_port(), free_port(), prefix=f"al-{uuid.uuid4().hex[:6]}")
    raw: dict[str, Any] = yaml.safe_load(dump_plant(base))
    raw["lines"] = [ln for ln in raw["lines"] if ln["id"] == "ua"]
    raw["sources"] = {"plc": raw["sources"]["plc"]}
    for m in raw["lines"][0]["machines"]:
        m["simulation"].update(mtbf_s=4, mttr_s=4, reasons=[20])  # breakdowns only, some long
    with receiver() as hook:
        raw["alerts"] = {"check_period_s": CHECK_S, "webhooks": [{"id": "chat", "url": hook.url()}],
                         "rules": [{"id": f"{m['id']}-down", "down": {"machine": m["id"], "minutes": MINUTES}}
                                   for m in raw["lines"][0]["machines"]]}
        plant = parse_plant(raw)
        plant_file = tmp_path / "plant.yaml"
        plant_file.write_text(dump_plant(plant), encoding="utf-8")
        ledger = tmp_path / "ledger.jsonl"
        store_url = influxd_server.url(f"alerts_{uuid.uuid4().hex[:8]}")
        machines = [m.id for _, m in plant.machines()]
        store = open_store(store_url)
        await store.open()
        sim = mieruka("simulate", "--plant", str(plant_file), "--seed", "7", "--duration", "120",
                      "--truth", str(ledger), log=tmp_path / "simulate.log")
        opcua_port = int(str(plant.sources["plc"].opcua.endpoint).rsplit(":", 1)[1])  # type: ignore[union-attr]
        await asyncio.to_thread(wait_port, opcua_port, 60.0, sim)
        collector = Collector(plant, store, flush_interval_s=FLUSH_S)
        stop = asyncio.Event()
        collecting = asyncio.create_task(collector.run(stop), name="collector")
        try:
            async def every_machine_stored() -> bool:
                assert sim.poll() is None, (tmp_path / "simulate.log").read_text()
                return set(await store.last_times(machines)) == set(machines)

            await wait_until(every_machine_stored, 60, "a fact from every machine in the store")
            with api_process(plant_file, store_url, tmp_path / "api-a.log"), \
                    api_process(plant_file, store_url, tmp_path / "api-b.log"):
                up = datetime.now().astimezone()
                await asyncio.sleep(RUN_S)  # the simulators break down as they will; nothing to wait for
                end = datetime.now().astimezone()
                # the last messages of the run may still be on their way
                await asyncio.sleep(MINUTES * 60 + CHECK_S + LATENCY_S)
        finally:
            stop.set()
            await asyncio.wait_for(collecting, 30)
            interrupt(sim)
            await store.close()

    runs = {(m, start): until for m, start, until in down_runs(read_ledger(ledger))}
    got = [(r.body["rule"], r.body["kind"], datetime.fromisoformat(r.body["since"]), r.wall) for r in hook.records]
    print("runs:", [(m, s.isoformat(), u and (u - s).total_seconds()) for (m, s), u in runs.items()])
    print("messages:", [(rule, kind, since.isoformat(), (at - since).total_seconds()) for rule, kind, since, at in got])
    keys = [(rule, kind, since) for rule, kind, since, _ in got]
    assert len(keys) == len(set(keys)), "a message was sent twice"
    threshold = timedelta(seconds=MINUTES * 60)
    slack = timedelta(seconds=CHECK_S + LATENCY_S)
    for rule, kind, since, at in got:
        machine = rule.removesuffix("-down")
        assert (machine, since) in runs, f"{rule} {kind} since {since}: no breakdown of {machine} starts then"
        until = runs[(machine, since)]
        if kind == "firing":
            assert at >= since + threshold - timedelta(milliseconds=50)  # not before the rule's time
            assert until is None or until - since >= threshold - timedelta(milliseconds=50)
            if since >= up + timedelta(seconds=2):  # the replicas were checking when it began
                assert at <= since + threshold + slack, f"{rule}: told {(at - since).total_seconds()} s after"
        else:
            assert until is not None and at >= until - timedelta(milliseconds=50)
            assert ((rule, "firing", since)) in keys
    # every breakdown long enough to be seen, begun and ended while the replicas checked, was told twice
    told = [(m, s) for (m, s), u in runs.items()
            if s >= up + timedelta(seconds=2) and u is not None and u - s >= threshold + slack and u <= end]
    assert told, "the seeded simulators had no long breakdown in the run; raise RUN_S or mttr_s"
    for m, s in told:
        assert (f"{m}-down", "firing", s) in keys and (f"{m}-down", "resolved", s) in keys, (m, s)
