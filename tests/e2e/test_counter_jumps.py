"""Counters moved while the collector was away (issue 13, point 4), live: a publisher we control
→ real Mosquitto (persistent session: what is published while the collector is stopped waits for
it) → the collector with its durable spool and dead-letter file → a real SQLite store.

The collector is stopped with saved state; meanwhile the PLC's counters are preset forward, set
back and reset; it is restarted. The store holds exactly the parts the machines made (the
publisher's own ledger), each implausible jump is one ``implausible_step`` dead letter (in the
file, the stats and the metrics), and a real reset followed by plausible production counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from collector.deadletter import DeadLetters
from collector.metrics import CollectorMetrics
from collector.pipeline import Collector
from collector.spool import Spool
from core.plant import Plant, parse_plant
from core.store.sqlite import SqliteStore
from tests.collector.conftest import Publisher
from tests.support.procs import collector_running
from tests.support.services import Mosquitto

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
ALL_NS = (0, 4_000_000_000_000_000_000)
log = logging.getLogger(__name__)


def ms(t: float) -> int:
    return int((T0 + timedelta(seconds=t)).timestamp() * 1000)


def plant(broker: Mosquitto, prefix: str) -> Plant:
    def counter(topic: str, field: str) -> dict[str, Any]:
        return {"topic": topic, "field": field, "time_field": "ts", "counter_bits": 16}

    return parse_plant({
        "site": {"id": "jumps"},
        "sources": {"broker": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "qos": 1,
                                        "client_id": f"{prefix}-collector"}}},
        "lines": [{"id": "line-1", "machines": [
            {"id": "press", "source": "broker", "ideal_cycle_s": 1.0, "signals": {
                "good": counter(f"{prefix}/press", "good"), "scrap": counter(f"{prefix}/press", "scrap")}},
            {"id": "cnc", "source": "broker", "ideal_cycle_s": 1.0, "signals": {
                "good": counter(f"{prefix}/cnc", "good")}},
        ]}],
    })


class Plc:
    """The publisher's side: counter values it sends and the parts it really made (its ledger)."""

    def __init__(self, pub: Publisher, prefix: str) -> None:
        self.pub, self.prefix = pub, prefix
        self.made: dict[str, int] = {"press.good": 0, "press.scrap": 0, "cnc.good": 0}
        self.sent = 0  # counter samples published

    async def send(self, machine: str, t: float, made: dict[str, int] | None = None, **values: int) -> None:
        for signal, n in (made or {}).items():
            self.made[f"{machine}.{signal}"] += n
        await self.pub.publish(f"{self.prefix}/{machine}", {"ts": ms(t), **values})
        self.sent += len(values)


async def totals(store: SqliteStore) -> dict[str, int]:
    out = {"press.good": 0, "press.scrap": 0, "cnc.good": 0}
    for b in await store.count_buckets(["press", "cnc"], ["good", "scrap"], *ALL_NS, ALL_NS[1]):
        out[f"{b.machine}.{b.signal}"] += b.total
    return out


def dead_kinds(path: Path) -> list[str]:
    return [json.loads(line)["kind"] for line in path.read_text().splitlines()]


async def test_counters_moved_while_the_collector_was_away_count_no_phantom_parts(
        mosquitto_broker: Mosquitto, tmp_path: Path) -> None:
    prefix = f"j{uuid.uuid4().hex[:8]}"
    p = plant(mosquitto_broker, prefix)
    spool_dir, dead_path = tmp_path / "spool", tmp_path / "spool" / "dead-letters.jsonl"
    store = SqliteStore(tmp_path / "facts.db")
    await store.open()
    pub = Publisher(mosquitto_broker)
    plc = Plc(pub, prefix)
    try:
        # 1. a first run: the press makes 6 parts (good 0 -> 6, scrap stays at 3 048), the cnc 10
        with Spool(spool_dir) as spool, DeadLetters(dead_path, log) as dead:
            first = Collector(p, store, spool=spool, dead_letters=dead, flush_interval_s=0.05)
            async with collector_running(first):
                async with asyncio.timeout(20):
                    await first.wait_ready()
                for i in range(7):
                    await plc.send("press", i, {"good": 1 if i else 0}, good=i, scrap=3048)
                for i in range(11):
                    await plc.send("cnc", i, {"good": 1 if i else 0}, good=100 + i)
                async with asyncio.timeout(20):
                    await first.wait_until(lambda s: s.samples_in >= plc.sent)
                    await first.wait_idle()
            assert first.stats.dead_letters == {}
        assert await totals(store) == plc.made == {"press.good": 6, "press.scrap": 0, "cnc.good": 10}
        sent_before = plc.sent

        # 2. while it is away (the broker keeps the messages for its session) the counters move:
        # preset forward two minutes later, set back, set back again; a made part after each
        await plc.send("press", 126, good=65_530, scrap=3039)  # +65 524 in 2 min at 1 s; 3 048 -> 3 039
        await plc.send("press", 127, {"good": 1, "scrap": 1}, good=65_531, scrap=3040)
        await plc.send("press", 200, good=40_000, scrap=3040)  # set back: no wrap, 40 000 as a reset
        await plc.send("press", 201, {"good": 2}, good=40_002, scrap=3040)
        # the cnc's PLC is really reset, then makes parts at its pace: they count
        await plc.send("cnc", 300, good=0)
        await plc.send("cnc", 310, {"good": 5}, good=5)
        await plc.send("cnc", 320, {"good": 7}, good=12)

        # 3. restarted from the saved state: it reads what waited, then live data
        with Spool(spool_dir) as spool, DeadLetters(dead_path, log) as dead:
            second = Collector(p, store, spool=spool, dead_letters=dead, flush_interval_s=0.05)
            metrics = CollectorMetrics(second)
            port = metrics.serve(0)
            try:
                async with collector_running(second):
                    async with asyncio.timeout(20):
                        await second.wait_ready()
                        await second.wait_until(lambda s: s.samples_in >= plc.sent - sent_before)
                    await plc.send("press", 210, {"good": 8}, good=40_010, scrap=3040)
                    async with asyncio.timeout(20):
                        await second.wait_until(lambda s: s.samples_in >= plc.sent - sent_before)
                        await second.wait_idle()
                    async with httpx.AsyncClient() as http:
                        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            finally:
                metrics.close()

        assert await totals(store) == plc.made == {"press.good": 17, "press.scrap": 1, "cnc.good": 22}
        # one dead letter per jump: 65 530, 3 039, 40 000; the cnc's reset to 0 is none
        assert second.stats.dead_letters == {"implausible_step": 3}
        assert dead_kinds(dead_path) == ["implausible_step"] * 3
        assert 'mieruka_dead_letters_total{kind="implausible_step"} 3.0' in text
    finally:
        pub.close()
        await store.close()
