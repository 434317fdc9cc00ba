"""Sparkplug B end to end: the live simulator publishing Sparkplug B (births with aliases, data by
alias) through a real Mosquitto → the collector (``payload: sparkplug``) → a real SQLite store;
each machine's good and scrap totals equal the ground-truth ledger across a forced ``seq`` gap
(messages lost on the way, twice) and an edge-node restart (NDEATH by the broker, non-retentive
counters from 0, new ``bdSeq``, new births), and the restart shows as ``offline`` in the store.

The collector is connected before the simulator starts, so the first births are the baselines
and every part of the ledger must be counted. ``good`` is non-retentive (the restart sets it to
0: the collector sees the drop and counts the new value as parts since the reset), ``scrap``
retentive (it goes on across the restart)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from collector.metrics import CollectorMetrics
from collector.pipeline import Collector
from collector.sources.mqtt import MqttSource
from core.plant import parse_plant
from core.store.sqlite import SqliteStore
from simulators.faults import parse_fault
from simulators.live import run_live
from tests.support.ledger import read_ledger
from tests.support.procs import collector_running, wait_until
from tests.support.services import Mosquitto

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
STATE_MAP = {0: "planned", 1: "running", 2: "idle", 3: "down", 4: "changeover"}
RUN_S = 24.0
FAULTS = ("seq_gap@5s", "restart@11s+1.5s", "seq_gap:2@17s")


def sparkplug_plant(broker: Mosquitto, group: str) -> Any:
    def machine(mid: str, cycle: float) -> dict[str, Any]:
        return {
            "id": mid, "ideal_cycle_s": cycle, "source": "edge",
            "signals": {
                "good": {"metric": "Counts/Good", "counter_bits": 32},
                "scrap": {"metric": "Counts/Scrap", "counter_bits": 32, "retentive": True},
                "state": {"metric": "State/Code", "map": STATE_MAP},
                "reason": {"metric": "State/Reason"},
            },
            "simulation": {"scrap_rate": 0.15, "mtbf_s": 8, "mttr_s": 1.5, "reasons": [20],
                           "micro_stop_rate_per_h": 0},
        }

    return parse_plant({
        "site": {"id": "spb-e2e", "timezone": "Asia/Tokyo"},
        "calendar": {"shifts": [{"id": "all", "start": "00:00", "end": "00:00", "days": ALL_DAYS}]},
        "reasons": {20: {"name": "Spindle fault", "category": "breakdown"}},
        "sources": {"edge": {"mqtt": {"host": broker.host, "port": broker.port, "qos": 1, "payload": "sparkplug",
                                      "group_id": group, "edge_node_id": "edge-1"}}},
        "lines": [{"id": "sp", "target_per_hour": 3000,
                   "machines": [machine("sp-1", 0.5), machine("sp-2", 0.6)]}],
    }, "<sparkplug e2e plant>")


async def test_sparkplug_totals_equal_the_ledger_across_a_seq_gap_and_a_node_restart(
        tmp_path: Path, mosquitto_broker: Mosquitto) -> None:
    plant = sparkplug_plant(mosquitto_broker, f"spb-{uuid.uuid4().hex[:8]}")
    machines = [m.id for _, m in plant.machines()]
    ledger = tmp_path / "ledger.jsonl"
    store = SqliteStore(tmp_path / "facts.db")
    await store.open()
    try:
        collector = Collector(plant, store, flush_interval_s=0.3)
        src = collector.sources["edge"]
        assert isinstance(src, MqttSource) and src.sparkplug is not None
        node = src.sparkplug
        async with collector_running(collector):
            async with asyncio.timeout(15):
                await collector.wait_ready()
            await asyncio.wait_for(run_live(plant, 11, duration_s=RUN_S, truth_path=ledger,
                                            faults=[parse_fault(f) for f in FAULTS], sparkplug_aliases=True),
                                   RUN_S + 60)
            records = read_ledger(ledger)
            want: Counter[tuple[str, str]] = Counter()
            for r in records:
                if r.get("kind") == "part":
                    want[(r["machine"], "good" if r["good"] else "scrap")] += 1
            assert all(want[(m, "good")] > 10 for m in machines), want
            got: dict[tuple[str, str], int] = {}

            async def totals_equal() -> bool:
                buckets = await store.count_buckets(machines, ["good", "scrap"], 0, 2**62, 2**62)
                got.clear()
                for b in buckets:
                    got[(b.machine, b.signal)] = got.get((b.machine, b.signal), 0) + b.total
                return got == dict(want)

            try:
                await wait_until(totals_equal, 30, "store totals equal to the ledger")
            finally:
                print("ledger", dict(want), "store", got, "node", node.stats)

            async def stop_seen() -> bool:
                return node.stats.deaths == 2  # the simulator's NDEATH at its stop, after its last data

            await wait_until(stop_seen, 10, "the NDEATH of the simulator's stop")
        # the faults happened, and the collector saw them as Sparkplug B says (and its metrics tell)
        scraped = generate_latest(CollectorMetrics(collector).registry).decode()
        assert f'mieruka_sparkplug_seq_gaps_total{{source="edge"}} {float(node.stats.seq_gaps)}' in scraped
        faults = [r["fault"] for r in records if r.get("kind") == "fault"]
        assert faults == ["seq_gap", "restart", "seq_gap"], faults
        assert node.stats.seq_gaps >= 2, node.stats
        # births: the first, one per rebirth asked after a gap, one after the restart
        assert node.stats.births >= 4 and node.stats.rebirth_requests >= 3, node.stats
        restart_t = next(r["_t"] for r in records if r.get("fault") == "restart")
        changes = await store.state_changes(machines, 0, 2**62)
        for m in machines:
            offline = [c for c in changes if c.machine == m and c.state == "offline"]
            assert len(offline) == 2, (m, offline)  # the restart and the stop
            first_ns = offline[0].time_ns
            assert 0 <= first_ns - int(restart_t.timestamp() * 1e9) < 1e9, (offline[0], restart_t)
    finally:
        await store.close()
