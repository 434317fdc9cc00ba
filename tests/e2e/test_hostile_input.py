"""The collector cannot be poisoned: hostile input from a real Mosquitto and a real asyncua server
goes to the dead letters, the collector keeps running, every valid increment around it is stored
at its own time in a real store (SQLite and influxd), and a restart on the same spool and MQTT
session comes up clean, losing and inventing nothing.

The hostile input, interleaved with valid readings of the same counters:

- MQTT: 1 000 nested ``[`` (once a RecursionError out of the source), a ``ts`` in year 9999 and
  one in 2200 (once an OverflowError in the SQLite writer, and every later fact of the signal
  moved to 2200), a step of 2**64 - 1 on a 64-bit counter (beyond the stores' int64);
- OPC UA: a SourceTimestamp in year 9999.

And a fact a store cannot hold that gets past the normalizer (its clock check opened wide) is
quarantined in the spool, the facts around it are written, and a retry moves it back. As
processes: ``mieruka collect`` stays up through the hostile messages and a ``kill -9`` with more of
them queued, and exits 1 with the broker's reason when its subscription is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from asyncua import ua
from paho.mqtt.enums import CallbackAPIVersion

from collector.deadletter import DeadLetters
from collector.metrics import CollectorMetrics
from collector.pipeline import Collector
from collector.spool import Spool
from core.model import to_ns
from core.plant import Plant, dump_plant, parse_plant
from core.store import open_store
from core.store.base import MAX_TIME_NS, Store
from mieruka.status import StatusError, fetch_metrics, render_status
from tests.collector.conftest import OpcServer, Publisher
from tests.support.influxd import Influxd
from tests.support.procs import collector_running, interrupt, mieruka, wait_until
from tests.support.services import Mosquitto, free_port, mosquitto, stop, subscribe_only_to

S = 1_000_000_000
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def opc() -> Iterator[OpcServer]:
    server = OpcServer()
    server.open()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "influxdb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/facts.db"
    influxd: Influxd = request.getfixturevalue("influxd_server")
    return influxd.url()


def hostile_plant(broker: Mosquitto, opc: OpcServer, prefix: str) -> Plant:
    return parse_plant({
        "site": {"id": "hostile", "timezone": "Asia/Tokyo"},
        "sources": {"broker": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "qos": 1}},
                    "plc": {"opcua": {"endpoint": opc.url}}},
        "lines": [{"id": "line-1", "machines": [
            {"id": "mq-1", "source": "broker", "signals": {
                "good": {"topic": f"{prefix}/mq-1/counts", "field": "good", "counter_bits": 64,
                         "time_field": "ts", "time_unit": "ms"},
                "temp": {"topic": f"{prefix}/mq-1/temp", "field": "temp", "time_field": "ts", "time_unit": "ms"}}},
            {"id": "ua-1", "source": "plc", "signals": {
                "good": {"node": opc.node(f"{prefix}.Good"), "counter_bits": 32}}},
        ]}],
    }, "<hostile plant>")


@dataclass
class Setup:
    plant: Plant
    store: Store
    spool_dir: Path
    client_id: str
    publisher: Publisher
    topic: str


@asynccontextmanager
async def collector_on(setup: Setup, **kw: Any) -> AsyncIterator[Collector]:
    """A collector wired as ``mieruka collect`` wires it (durable spool, dead-letter file, fixed
    MQTT client id: a persistent session), running until the block ends."""
    dead_path = setup.spool_dir / "dead-letters.jsonl"
    with Spool(setup.spool_dir, synchronous="normal") as spool, \
            DeadLetters(dead_path, logging.getLogger("collector.deadletter")) as dead:
        collector = Collector(setup.plant, setup.store, spool=spool, dead_letters=dead, client_id=setup.client_id,
                              flush_interval_s=0.2, retry_initial_s=0.05, retry_max_s=0.5, **kw)
        async with collector_running(collector) as run:
            async with asyncio.timeout(DEADLINE_S):
                await collector.wait_ready()
            yield collector
            assert not run.task.done(), "the collector ended while it should be running"


async def counts_at(store: Store, machine: str, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
    """(time, increment) of every count fact of ``machine``.good in the window: one-second buckets,
    and the facts here lie on whole seconds, one per second at most."""
    buckets = await store.count_buckets([machine], ["good"], start_ns, end_ns, S)
    return sorted((b.start_ns, b.total) for b in buckets)


async def wait_stored(collector: Collector, store: Store, machine: str, window: tuple[int, int],
                      expected: list[tuple[int, int]]) -> None:
    async def done() -> bool:
        return collector.stats.pending == 0 and await counts_at(store, machine, *window) == expected

    try:
        await wait_until(done, DEADLINE_S, f"{machine}'s counts stored", poll_s=0.1)
    except TimeoutError:
        got = await counts_at(store, machine, *window)
        raise AssertionError(f"{machine}: stored {got}, expected {expected}; stats {collector.stats}") from None


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()
    return check


def letters(spool_dir: Path) -> list[dict[str, Any]]:
    path = spool_dir / "dead-letters.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def whole_second(t: datetime) -> datetime:
    return t.replace(microsecond=0)


async def test_hostile_mqtt_and_opcua_input_is_dead_lettered_and_every_valid_increment_is_stored_at_its_time(
        mosquitto_broker: Mosquitto, opc: OpcServer, store_url: str, tmp_path: Path) -> None:
    prefix = f"h{uuid.uuid4().hex[:8]}"
    await opc.add(f"{prefix}.Good", ua.VariantType.UInt32, 0)
    plant = hostile_plant(mosquitto_broker, opc, prefix)
    topic = f"{prefix}/mq-1/counts"
    # valid readings one second apart, a minute ago (inside the clock margin, on whole seconds)
    t0 = whole_second(datetime.now(UTC)) - timedelta(seconds=60)

    def at(k: int) -> datetime:
        return t0 + timedelta(seconds=k)

    def ms(t: datetime) -> int:
        return to_ns(t) // 1_000_000

    window = (to_ns(t0) - 3600 * S, to_ns(t0) + 3600 * S)
    far = {"9999": int(datetime(9999, 12, 31, tzinfo=UTC).timestamp() * 1000),
           "2200": int(datetime(2200, 1, 1, tzinfo=UTC).timestamp() * 1000)}
    # (payload, what it is): the counter's valid increments are +1 .. +6 at at(1), at(3), ...
    mqtt: list[tuple[bytes | dict[str, Any], str]] = [
        ({"ts": ms(at(0)), "good": 0}, "baseline"),
        ({"ts": ms(at(1)), "good": 1}, "+1"),
        (b"[" * 1000, "not_json"),
        ({"ts": ms(at(3)), "good": 3}, "+2"),
        ({"ts": far["9999"], "good": 4}, "bad_time"),
        ({"ts": ms(at(5)), "good": 6}, "+3"),
        ({"ts": far["2200"], "good": 7}, "bad_time"),
        ({"ts": ms(at(7)), "good": 10}, "+4"),
        ({"ts": ms(at(8)), "good": 0}, "reset to 0: no parts"),
        ({"ts": ms(at(9)), "good": (1 << 64) - 1}, "implausible_step"),  # a step of 2**64 - 1
        ({"ts": ms(at(10)), "good": 4}, "+5"),  # the 64-bit counter wrapped from its new baseline
        ({"ts": ms(at(11)), "good": 10}, "+6"),
    ]
    mq_expected = [(to_ns(at(k)), inc) for k, inc in ((1, 1), (3, 2), (5, 3), (7, 4), (10, 5), (11, 6))]
    ua_expected = [(to_ns(at(k)), inc) for k, inc in ((21, 2), (23, 3))]

    store = open_store(store_url)
    await store.open()
    publisher = Publisher(mosquitto_broker)
    setup = Setup(plant, store, tmp_path / "spool", f"hostile-{prefix}", publisher, topic)
    try:
        async with collector_on(setup) as collector:
            for payload, _ in mqtt:
                await publisher.publish(topic, payload)
            # OPC UA: the subscription's first value (0) is the baseline
            await opc.write(f"{prefix}.Good", 2, source_time=at(21))
            await opc.write(f"{prefix}.Good", 3, source_time=datetime(9999, 12, 31, tzinfo=UTC))
            await opc.write(f"{prefix}.Good", 5, source_time=at(23))
            await wait_stored(collector, store, "mq-1", window, mq_expected)
            await wait_stored(collector, store, "ua-1", window, ua_expected)
            assert dict(collector.stats.dead_letters) == {"not_json": 1, "bad_time": 3, "implausible_step": 1}
            assert collector.stats.facts_rejected == 0 and collector.spool.stats.quarantined == 0

        # nothing anywhere in the future: no fact was stamped at (or after) the bad clocks
        for machine in ("mq-1", "ua-1"):
            assert await store.count_buckets([machine], ["good"], window[1], MAX_TIME_NS, MAX_TIME_NS - window[1]) == []
        kept = letters(setup.spool_dir)
        assert sorted(d["kind"] for d in kept) == ["bad_time", "bad_time", "bad_time", "implausible_step", "not_json"]
        assert next(d for d in kept if d["kind"] == "not_json")["payload"] == "[" * 1000
        assert {d["source"] for d in kept if d["kind"] == "bad_time"} == {"broker", "plc"}
        assert any("9999" in d["reason"] for d in kept if d["source"] == "plc")

        # while the collector is away its persistent session queues hostile and valid messages at
        # the broker; the restart (same spool, same client id) takes them, dead-letters the hostile
        # ones, and continues the counters from their saved baselines
        await publisher.publish(topic, b"[" * 1000)
        await publisher.publish(topic, {"ts": far["9999"], "good": 11})
        await publisher.publish(topic, {"ts": ms(at(12)), "good": 12})
        mq_expected.append((to_ns(at(12)), 2))
        ua_expected.append((to_ns(at(24)), 4))
        async with collector_on(setup) as collector:
            await opc.write(f"{prefix}.Good", 9, source_time=at(24))
            await wait_stored(collector, store, "mq-1", window, mq_expected)
            await wait_stored(collector, store, "ua-1", window, ua_expected)
            assert dict(collector.stats.dead_letters) == {"not_json": 1, "bad_time": 1}
        # and they were acknowledged: the next start gets nothing again, loses nothing, invents nothing
        async with collector_on(setup) as collector:
            await publisher.publish(topic, {"ts": ms(at(13)), "good": 13})
            mq_expected.append((to_ns(at(13)), 1))
            await wait_stored(collector, store, "mq-1", window, mq_expected)
            await wait_stored(collector, store, "ua-1", window, ua_expected)
            assert dict(collector.stats.dead_letters) == {} and collector.stats.facts_rejected == 0
        assert len(letters(setup.spool_dir)) == len(kept) + 2
        for machine in ("mq-1", "ua-1"):
            assert await store.count_buckets([machine], ["good"], window[1], MAX_TIME_NS, MAX_TIME_NS - window[1]) == []
    finally:
        publisher.close()
        await store.close()


async def test_a_fact_the_real_store_cannot_hold_is_quarantined_and_a_retry_moves_it_back(
        mosquitto_broker: Mosquitto, opc: OpcServer, store_url: str, tmp_path: Path) -> None:
    """With the normalizer's clock check opened wide (a margin of 10 000 years), a gauge reading
    stamped 2300 gets past it; the store cannot hold it (InfluxDB's int64 ns end in 2262), the
    writer quarantines it and writes the facts around it; a retry queues it again."""
    prefix = f"q{uuid.uuid4().hex[:8]}"
    await opc.add(f"{prefix}.Good", ua.VariantType.UInt32, 0)
    plant = hostile_plant(mosquitto_broker, opc, prefix)
    counts, temps = f"{prefix}/mq-1/counts", f"{prefix}/mq-1/temp"
    t0 = whole_second(datetime.now(UTC)) - timedelta(seconds=60)
    window = (to_ns(t0) - 3600 * S, to_ns(t0) + 3600 * S)

    def ms(k: int) -> int:
        return to_ns(t0 + timedelta(seconds=k)) // 1_000_000

    y2300 = int(datetime(2300, 1, 1, tzinfo=UTC).timestamp() * 1000)
    store = open_store(store_url)
    await store.open()
    publisher = Publisher(mosquitto_broker)
    setup = Setup(plant, store, tmp_path / "spool", f"quarantine-{prefix}", publisher, counts)
    lax = {"max_clock_ahead_s": 10_000 * 365 * 86_400.0}
    expected = [(to_ns(t0) + S * k, inc) for k, inc in ((1, 1), (3, 5), (4, 4))]
    try:
        async with collector_on(setup, **lax) as collector:
            for topic, payload in ((counts, {"ts": ms(0), "good": 0}), (counts, {"ts": ms(1), "good": 1}),
                                   (temps, {"ts": y2300, "temp": 21.5}),
                                   (counts, {"ts": ms(3), "good": 6}), (counts, {"ts": ms(4), "good": 10})):
                await publisher.publish(topic, payload)
            await wait_until(holds(lambda: collector.spool.stats.quarantined == 1 and collector.stats.pending == 0),
                             DEADLINE_S, "the 2300 reading quarantined")
            # the facts around it are written, and the store never counted as down
            await wait_stored(collector, store, "mq-1", window, expected)
            assert collector.stats.facts_rejected == 1 and collector.stats.store_up
            assert collector.stats.write_failures == 0
            # visible where an operator looks: the metrics and `mieruka status`
            metrics = CollectorMetrics(collector)
            try:
                port = metrics.serve(0)
                text = await asyncio.to_thread(fetch_metrics, f"http://127.0.0.1:{port}/metrics")
            finally:
                metrics.close()
            assert "mieruka_spool_quarantined_facts 1.0" in text
            assert re.search(r"^quarantine +1 facts the store refused", render_status(text), re.MULTILINE)
        with Spool(setup.spool_dir) as spool:
            [(_, _, reason, fact)] = spool.quarantined()
            assert (fact.machine, fact.signal, fact.value, fact.time.year) == ("mq-1", "temp", 21.5, 2300)
            assert "2262" in reason
            # a retry (what `mieruka spool retry-quarantine` does) queues it again; this store
            # refuses it again, so it goes back to the quarantine and disturbs nothing
            assert spool.requeue_quarantine() == 1 and spool.stats.facts == 1 and spool.stats.quarantined == 0
        async with collector_on(setup, **lax) as collector:
            await wait_until(holds(lambda: collector.spool.stats.quarantined == 1 and collector.stats.pending == 0
                                   and collector.stats.facts_rejected == 1),
                             DEADLINE_S, "the retried reading refused again")
        assert await counts_at(store, "mq-1", *window) == expected
        assert await store.gauge_buckets("mq-1", "temp", window[1], MAX_TIME_NS, MAX_TIME_NS - window[1]) == []
    finally:
        publisher.close()
        await store.close()


def test_mieruka_collect_exits_1_with_the_reason_when_the_broker_refuses_its_subscription(
        tmp_path: Path) -> None:
    """Once the collector sat connected to nothing, exit 0; now it stops with the reason."""
    conf = subscribe_only_to(tmp_path / "broker", "allowed/#")
    with mosquitto(tmp_path / "broker", extra_conf=conf) as broker:
        plant = parse_plant({
            "site": {"id": "refused", "timezone": "Asia/Tokyo"},
            "sources": {"broker": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "qos": 1}}},
            "lines": [{"id": "line-1", "machines": [{"id": "m1", "source": "broker", "signals": {
                "good": {"topic": "allowed/m1", "field": "good", "counter_bits": 32},
                "scrap": {"topic": "forbidden/m1", "field": "scrap", "counter_bits": 32}}}]}],
        }, "<refused plant>")
        plant_file = tmp_path / "plant.yaml"
        plant_file.write_text(dump_plant(plant), encoding="utf-8")
        log = tmp_path / "collect.log"
        proc = mieruka("collect", "--plant", str(plant_file), "--store", f"sqlite:///{tmp_path}/facts.db",
                       "--spool-dir", str(tmp_path / "spool"), "--duration", "60", log=log)
        try:
            code = proc.wait(timeout=DEADLINE_S)
        finally:
            stop(proc)
    text = log.read_text(encoding="utf-8")
    assert code == 1, text
    assert "refused the subscription to forbidden/m1" in text and "Traceback" not in text


async def test_mieruka_collect_survives_hostile_messages_and_a_kill_9_with_them_queued(
        mosquitto_broker: Mosquitto, store_url: str, tmp_path: Path) -> None:
    """The review's reproduction as processes: once, one such message made `mieruka collect` exit 1
    and every restart die again on the re-delivered message."""
    prefix = f"p{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}/m1/counts"
    plant = parse_plant({
        "site": {"id": "hostile-proc", "timezone": "Asia/Tokyo"},
        "sources": {"broker": {"mqtt": {"host": "127.0.0.1", "port": mosquitto_broker.port, "qos": 1}}},
        "lines": [{"id": "line-1", "machines": [{"id": "m1", "source": "broker", "signals": {
            "good": {"topic": topic, "field": "good", "counter_bits": 64, "time_field": "ts", "time_unit": "ms"}}}]}],
    }, "<hostile process plant>")
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(dump_plant(plant), encoding="utf-8")
    t0 = whole_second(datetime.now(UTC)) - timedelta(seconds=60)
    window = (to_ns(t0) - 3600 * S, to_ns(t0) + 3600 * S)

    def ms(k: int) -> int:
        return to_ns(t0 + timedelta(seconds=k)) // 1_000_000

    y9999, y2200 = 253_402_214_400_000, 7_258_118_400_000
    client_id = f"hostile-proc-{prefix}"

    def collect(n: int) -> tuple[subprocess.Popen[bytes], str, Path]:
        port, log = free_port(), tmp_path / f"collect-{n}.log"
        proc = mieruka("collect", "--plant", str(plant_file), "--store", store_url, "--spool-dir",
                       str(tmp_path / "spool"), "--client-id", client_id, "--flush-interval", "0.2",
                       "--metrics-port", str(port), log=log)
        return proc, f"http://127.0.0.1:{port}/metrics", log

    async def subscribed(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        async def connected() -> bool:
            assert proc.poll() is None, text_of(log)
            try:
                text = await asyncio.to_thread(fetch_metrics, url, 2.0)
            except StatusError:
                return False
            return 'mieruka_source_connected{source="broker"} 1.0' in text
        await wait_until(connected, DEADLINE_S, "the collector connected", poll_s=0.1)

    store = open_store(store_url)
    await store.open()
    publisher = Publisher(mosquitto_broker)
    expected: list[tuple[int, int]] = []

    def stored(proc: subprocess.Popen[bytes], log: Path) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            assert proc.poll() is None, f"the collector exited with {proc.returncode}:\n{text_of(log)}"
            return await counts_at(store, "m1", *window) == expected
        return check
    try:
        persistent_session(mosquitto_broker, client_id, topic)
        proc, url, log = collect(1)
        try:
            await subscribed(proc, url, log)
            for payload in ({"ts": ms(0), "good": 0}, {"ts": ms(1), "good": 1}, b"[" * 1000,
                            {"ts": y9999, "good": 2}, {"ts": ms(2), "good": 3}, {"ts": y2200, "good": 4},
                            {"ts": ms(3), "good": 6}, {"ts": ms(4), "good": (1 << 64) - 1},
                            {"ts": ms(5), "good": 9}):
                await publisher.publish(topic, payload)
            expected += [(to_ns(t0) + S * k, inc) for k, inc in ((1, 1), (2, 2), (3, 3), (5, 10))]
            await wait_until(stored(proc, log), DEADLINE_S, "the valid increments stored")
            assert proc.poll() is None, text_of(log)
            # killed while nothing more is acknowledged; meanwhile the broker queues more of the same
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
        finally:
            stop(proc)
        for payload in (b"[" * 1000, {"ts": y9999, "good": 10}, {"ts": ms(6), "good": 12}):
            await publisher.publish(topic, payload)
        expected.append((to_ns(t0) + S * 6, 3))
        proc, url, log = collect(2)
        try:
            await wait_until(stored(proc, log), DEADLINE_S, "the increment queued while the collector was down stored")
            await subscribed(proc, url, log)
            text = await asyncio.to_thread(fetch_metrics, url, 2.0)
            assert 'mieruka_dead_letters_total{kind="not_json"} 1.0' in text
            assert 'mieruka_dead_letters_total{kind="bad_time"} 1.0' in text
        finally:
            code = interrupt(proc)
        assert code == 0, text_of(log)
        kinds = [d["kind"] for d in letters(tmp_path / "spool")]
        assert sorted(kinds) == ["bad_time", "bad_time", "bad_time", "implausible_step", "not_json", "not_json"]
        assert await counts_at(store, "m1", window[1], MAX_TIME_NS) == []
    finally:
        publisher.close()
        await store.close()


def text_of(log: Path) -> str:
    return log.read_text(errors="replace")


def persistent_session(broker: Mosquitto, client_id: str, topic: str) -> None:
    """Make the broker hold ``client_id``'s persistent session subscribed to ``topic`` (QoS 1), as
    a collector's first connection would: whatever is published from now on waits for it, so the
    test needs no guess about when the collector has subscribed."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                         protocol=mqtt.MQTTv311)
    subscribed = threading.Event()
    client.on_connect = lambda c, *args: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK within 10 s"
    finally:
        client.disconnect()
        client.loop_stop()
