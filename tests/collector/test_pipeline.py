"""Collector end to end: real asyncua server and Mosquitto → Normalizer → real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncua import ua

from collector.pipeline import Collector, build_sources
from collector.sources.mqtt import MqttSource
from collector.sources.opcua import OpcUaSource
from core.model import Fact, Quality
from core.plant import Plant
from core.store.sqlite import SqliteStore
from tests.collector.conftest import FlakyStore, OpcServer, Publisher, build_plant, eventually
from tests.support.services import Mosquitto

ALL_NS = (0, 4_000_000_000_000_000_000)  # 1970 .. 2096: one bucket holds everything
T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


async def totals(store: Any, machines: list[str], signals: tuple[str, ...] = ("good", "scrap")) -> dict[str, int]:
    buckets = await store.count_buckets(machines, list(signals), *ALL_NS, ALL_NS[1])
    out: dict[str, int] = {}
    for b in buckets:
        out[f"{b.machine}.{b.signal}"] = out.get(f"{b.machine}.{b.signal}", 0) + b.total
    return out


@asynccontextmanager
async def collecting(collector: Collector, ready: bool = True) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop), name="collector")
    try:
        if ready:
            async with asyncio.timeout(10):
                await collector.wait_ready()
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


def mqtt_plant(broker: Mosquitto, prefix: str) -> Plant:
    counts, state = f"{prefix}/press/counts", f"{prefix}/press/state"
    return build_plant({"broker": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "qos": 1}}}, [
        ("press-line", "press", {"source": "broker", "signals": {
            "good": {"topic": counts, "field": "good", "time_field": "ts", "counter_bits": 32},
            "scrap": {"topic": counts, "field": "scrap", "time_field": "ts", "counter_bits": 32},
            "state": {"topic": state, "field": "code", "time_field": "ts", "map": {1: "running", 3: "down"}},
            "reason": {"topic": state, "field": "reason", "time_field": "ts"},
        }}),
    ])


async def test_opcua_and_mqtt_into_sqlite(opc_server: OpcServer, mosquitto_broker: Mosquitto,
                                          publisher: Publisher, prefix: str, sqlite_store: SqliteStore) -> None:
    good = await opc_server.add(f"{prefix}.cnc.Good", ua.VariantType.UInt16, 100)
    state = await opc_server.add(f"{prefix}.cnc.State", ua.VariantType.Int32, 1)
    temp = await opc_server.add(f"{prefix}.cnc.Temp", ua.VariantType.Double, 20.0)
    counts, press_state = f"{prefix}/press/counts", f"{prefix}/press/state"
    plant = build_plant({
        "plc": {"opcua": {"endpoint": opc_server.url}},
        "broker": {"mqtt": {"host": "127.0.0.1", "port": mosquitto_broker.port, "qos": 1}},
    }, [
        ("blade", "cnc", {"source": "plc", "signals": {
            "good": {"node": good, "counter_bits": 16},
            "state": {"node": state, "map": {1: "running", 3: "down"}},
            "spindle_temp": {"node": temp, "unit": "°C"},
        }}),
        ("press-line", "press", mqtt_plant(mosquitto_broker, prefix).lines[0].machines[0].model_dump()),
    ])
    collector = Collector(plant, sqlite_store, flush_interval_s=0.05)
    async with collecting(collector):
        for i, v in enumerate((101, 103, 104), start=1):
            await opc_server.write(f"{prefix}.cnc.Good", v, source_time=T0 + timedelta(seconds=i))
        await opc_server.write(f"{prefix}.cnc.State", 3, source_time=T0 + timedelta(seconds=5))
        await publisher.publish(counts, {"ts": T0_MS, "good": 10, "scrap": 0})
        await publisher.publish(counts, {"ts": T0_MS + 1000, "good": 12, "scrap": 1})
        await publisher.publish(counts, {"ts": T0_MS + 2000, "good": 15})
        await publisher.publish(press_state, {"ts": T0_MS + 2500, "code": 3, "reason": 20})
        async with asyncio.timeout(10):
            # OPC UA: 3 initial values + 4 changes; MQTT: 2 + 2 + 1 + 2 samples
            await collector.wait_until(lambda s: s.samples_in == 14)
            await collector.wait_idle()
        assert collector.stats.dead_letters == {}
        assert collector.stats.facts_written == collector.stats.facts_out > 0
        assert collector.stats.last_flush is not None

    assert await totals(sqlite_store, ["cnc", "press"]) == {"cnc.good": 4, "press.good": 5, "press.scrap": 1}
    changes = await sqlite_store.state_changes(["cnc", "press"], *ALL_NS)
    assert [(c.machine, c.state, c.reason) for c in changes if c.machine == "cnc"][-1] == ("cnc", "down", None)
    assert [(c.machine, c.state, c.reason) for c in changes if c.machine == "press"] == [("press", "down", 20)]
    gauges = await sqlite_store.gauge_buckets("cnc", "spindle_temp", *ALL_NS, ALL_NS[1])
    assert [(g.count, g.mean) for g in gauges] == [(1, 20.0)]


async def test_bad_payloads_are_counted_logged_once_and_valid_data_still_stored(
        mosquitto_broker: Mosquitto, publisher: Publisher, prefix: str, sqlite_store: SqliteStore,
        caplog: pytest.LogCaptureFixture) -> None:
    plant = mqtt_plant(mosquitto_broker, prefix)
    counts, state = f"{prefix}/press/counts", f"{prefix}/press/state"
    collector = Collector(plant, sqlite_store, flush_interval_s=0.05)
    with caplog.at_level("WARNING"):
        async with collecting(collector):
            await publisher.publish(counts, {"ts": T0_MS, "good": 1, "scrap": 0})
            for _ in range(3):
                await publisher.publish(counts, b"not json")
                await publisher.publish(counts, {"ts": T0_MS, "good": [1]})
                await publisher.publish(counts, {"ts": T0_MS})
                await publisher.publish(state, {"ts": T0_MS, "code": 9})  # not in the map: normalize refuses
            await publisher.publish(counts, {"ts": T0_MS + 1000, "good": 4, "scrap": 2})
            async with asyncio.timeout(10):
                await collector.wait_until(lambda s: s.samples_in == 2 + 3 + 2)
                await collector.wait_idle()
    assert collector.sources["broker"].stats.errors == {"not_json": 3, "wrong_type": 3, "missing_field": 3}
    assert collector.stats.dead_letters == {"unmapped_state": 3}
    messages = [r.getMessage() for r in caplog.records]
    for kind in ("not_json", "wrong_type", "missing_field", "unmapped_state"):
        assert sum(f"counted as '{kind}'" in m for m in messages) == 1, (kind, messages)
    assert await totals(sqlite_store, ["press"]) == {"press.good": 3, "press.scrap": 2}


async def test_writer_keeps_and_retries_batches_while_the_store_is_down(
        mosquitto_broker: Mosquitto, publisher: Publisher, prefix: str, sqlite_store: SqliteStore) -> None:
    store = FlakyStore(sqlite_store, down=True)
    collector = Collector(mqtt_plant(mosquitto_broker, prefix), store, batch_size=2, flush_interval_s=0.02,
                          retry_initial_s=0.01, retry_max_s=0.05)
    counts = f"{prefix}/press/counts"
    async with collecting(collector):
        for i in range(8):  # a baseline, then +1 good and +1 scrap per message: 14 facts
            await publisher.publish(counts, {"ts": T0_MS + i, "good": 100 + i, "scrap": i})
        async with asyncio.timeout(10):
            await collector.wait_until(lambda s: s.facts_out == 14 and s.write_failures >= 3)
        assert collector.stats.facts_written == 0 and collector.stats.pending == 14
        assert await totals(sqlite_store, ["press"]) == {}
        store.down = False
        async with asyncio.timeout(10):
            await collector.wait_idle()
    assert collector.stats.facts_written == 14 and collector.stats.batches_written == 7
    assert collector.stats.facts_dropped == 0
    assert await totals(sqlite_store, ["press"]) == {"press.good": 7, "press.scrap": 7}


async def test_stop_flushes_pending_facts(mosquitto_broker: Mosquitto, publisher: Publisher, prefix: str,
                                          sqlite_store: SqliteStore) -> None:
    collector = Collector(mqtt_plant(mosquitto_broker, prefix), sqlite_store, flush_interval_s=3600)
    counts = f"{prefix}/press/counts"
    async with collecting(collector):
        for i in range(4):
            await publisher.publish(counts, {"ts": T0_MS + i, "good": i, "scrap": 0})
        async with asyncio.timeout(10):
            await collector.wait_until(lambda s: s.facts_out == 3)
        assert collector.stats.facts_written == 0  # a whole hour before the timer would flush
    assert collector.stats.facts_written == 3 and collector.stats.pending == 0
    assert await totals(sqlite_store, ["press"]) == {"press.good": 3}


async def test_stop_gives_up_after_the_drain_timeout_when_the_store_stays_down(
        mosquitto_broker: Mosquitto, publisher: Publisher, prefix: str, sqlite_store: SqliteStore,
        caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore(sqlite_store, down=True)
    collector = Collector(mqtt_plant(mosquitto_broker, prefix), store, flush_interval_s=0.01,
                          retry_initial_s=0.01, retry_max_s=0.02, drain_timeout_s=0.2)
    async with collecting(collector):
        await publisher.publish(f"{prefix}/press/counts", {"ts": T0_MS, "good": 1, "scrap": 1})
        await publisher.publish(f"{prefix}/press/counts", {"ts": T0_MS + 1, "good": 2, "scrap": 2})
        async with asyncio.timeout(10):
            await collector.wait_until(lambda s: s.facts_out == 2 and s.write_failures >= 1)
    assert collector.stats.facts_dropped == 2 and collector.stats.pending == 0
    assert any("2 facts are lost" in r.getMessage() for r in caplog.records)


async def test_a_plc_restart_reaches_the_normalizer(opc_server: OpcServer, prefix: str,
                                                    sqlite_store: SqliteStore) -> None:
    good = await opc_server.add(f"{prefix}.cnc.Good", ua.VariantType.UInt16, 5)
    plant = build_plant({"plc": {"opcua": {"endpoint": opc_server.url}}}, [
        ("blade", "cnc", {"source": "plc", "signals": {"good": {"node": good, "counter_bits": 16}}})])
    collector = Collector(plant, sqlite_store, flush_interval_s=0.02)
    [src] = collector.sources.values()
    assert isinstance(src, OpcUaSource)
    src._backoff.initial_s, src._backoff.max_s, src._watchdog_interval_s = 0.05, 0.2, 0.5
    seen: list[object] = []  # what the normalizer is handed, in order
    normalizer = collector.normalizer
    feed, restarted = normalizer.feed_ns, normalizer.source_restarted

    def recording_feed(machine: str, signal: str, value: object, src_ns: int, quality: Quality) -> list[Fact]:
        seen.append(value)
        return feed(machine, signal, value, src_ns, quality)

    def recording_restarted(source_id: str) -> None:
        seen.append(f"restarted:{source_id}")
        restarted(source_id)

    normalizer.feed_ns = recording_feed  # type: ignore[method-assign]
    normalizer.source_restarted = recording_restarted  # type: ignore[method-assign]
    async with collecting(collector):
        await opc_server.write(f"{prefix}.cnc.Good", 7)  # baseline 5, +2
        async with asyncio.timeout(10):
            await collector.wait_until(lambda s: s.samples_in == 2)
        await opc_server.stop()
        # the PLC restarts from 0 and makes 9 parts while we are away: 9 > 7, yet it is a reset
        await opc_server.write(f"{prefix}.cnc.Good", 9)
        await eventually(lambda: src.stats.losses == 1, what="the loss to be noticed")
        await opc_server.start()
        async with asyncio.timeout(20):
            await collector.wait_until(lambda s: s.samples_in == 3)
            await collector.wait_idle()
    assert seen == [5, 7, "restarted:plc", 9]
    assert await totals(sqlite_store, ["cnc"], ("good",)) == {"cnc.good": 2 + 9}


def test_build_sources_filters_by_line(mosquitto_broker: Mosquitto) -> None:
    plant = build_plant({
        "plc": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}},
        "broker": {"mqtt": {"port": mosquitto_broker.port, "client_id": "col"}},
    }, [
        ("a", "cnc", {"source": "plc", "signals": {"good": {"node": "ns=2;s=a", "counter_bits": 16}}}),
        ("a", "wash", {"source": "broker", "signals": {"temp": {"topic": "x/wash", "field": "t"}}}),
        ("b", "press", {"source": "broker", "signals": {"good": {"topic": "x/press", "field": "good",
                                                                 "counter_bits": 32}}}),
    ])
    every = build_sources(plant)
    assert sorted(s.source_id for s in every) == ["broker", "plc"]
    [only_b] = build_sources(plant, {"b"})
    assert isinstance(only_b, MqttSource) and only_b.topics == ["x/press"] and only_b.client_id == "col-b"
    with pytest.raises(ValueError, match="unknown line"):
        build_sources(plant, {"c"})
