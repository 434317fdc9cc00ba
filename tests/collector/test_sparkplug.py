"""The MQTT source reading Sparkplug B from a real Mosquitto, fed by a test edge node whose
messages are encoded with Eclipse Tahu's generated protobuf module (``esio-spb-builder``, test
extra), so the collector's decoder is checked against the reference schema, not against the
simulator's encoder: births with aliases, data by alias, ``seq`` gaps answered with a rebirth
request (an ``NCMD`` the test decodes with Tahu), deaths matched by ``bdSeq``, malformed input
as dead letters."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from esio_spb_builder.core import sparkplug_b_pb2 as tahu
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from collector.deadletter import DeadLetters
from collector.pipeline import Collector
from collector.sources import MachinesOffline, SourceOffline, SourceOnline
from collector.sources.mqtt import MqttSource
from collector.sources.sparkplug import SparkplugNode
from core.model import Sample, from_ns
from core.plant import Plant
from core.store.sqlite import SqliteStore
from tests.collector.conftest import build_plant, eventually, running, take
from tests.support.services import Mosquitto

STATE_MAP = {1: "running", 2: "idle", 3: "down"}


class EdgeNode:
    """A test edge node: publishes Tahu-encoded payloads and records the commands it receives."""

    def __init__(self, broker: Mosquitto, group: str, node: str) -> None:
        self.group, self.node = group, node
        self.commands: list[Any] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"spBv1.0/{group}/NCMD/{node}", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p=None: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.seq = 0

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.commands.append(tahu.Payload.FromString(msg.payload))

    def rebirths_asked(self) -> int:
        with self._lock:
            return sum(1 for p in self.commands for m in p.metrics
                       if m.name == "Node Control/Rebirth" and m.boolean_value)

    def send(self, kind: str, payload: Any, device: str | None = None, *, seq: int | None = -1) -> None:
        """Publish ``payload`` (a ``tahu.Payload``) as ``kind``; ``seq=-1``: the node's next seq."""
        if seq == -1:
            seq, self.seq = self.seq, (self.seq + 1) % 256
        if seq is not None:
            payload.seq = seq
        topic = f"spBv1.0/{self.group}/{kind}/{self.node}" + (f"/{device}" if device else "")
        self.client.publish(topic, payload.SerializeToString(), qos=0).wait_for_publish(5)

    def send_raw(self, kind: str, data: bytes, device: str | None = None) -> None:
        topic = f"spBv1.0/{self.group}/{kind}/{self.node}" + (f"/{device}" if device else "")
        self.client.publish(topic, data, qos=0).wait_for_publish(5)

    def nbirth(self, bd_seq: int) -> None:
        self.seq = 0
        p = tahu.Payload(timestamp=ms_now())
        p.metrics.add(name="bdSeq", datatype=tahu.Int64, long_value=bd_seq, timestamp=ms_now())
        p.metrics.add(name="Node Control/Rebirth", datatype=tahu.Boolean, boolean_value=False, timestamp=ms_now())
        self.send("NBIRTH", p)

    def ndeath(self, bd_seq: int) -> None:
        p = tahu.Payload(timestamp=ms_now())
        p.metrics.add(name="bdSeq", datatype=tahu.Int64, long_value=bd_seq)
        self.send("NDEATH", p, seq=None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def ms_now() -> int:
    return time.time_ns() // 1_000_000


def utc_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def plant(broker: Mosquitto, group: str) -> Plant:
    return build_plant(
        {"edge": {"mqtt": {"host": broker.host, "port": broker.port, "qos": 1, "payload": "sparkplug",
                           "group_id": group, "edge_node_id": "node-1"}}},
        [("ln", "press-1", {"source": "edge", "signals": {
            "good": {"metric": "Counts/Good", "counter_bits": 32},
            "state": {"metric": "State/Code", "map": STATE_MAP},
            "temp": {"unit": "°C"}}})])


def source(p: Plant, **kw: Any) -> MqttSource:
    broker = p.sources["edge"].mqtt
    assert broker is not None
    signals = [(m.id, name, sig) for _, m in p.machines() for name, sig in m.signals.items()]
    return MqttSource("edge", broker, signals, **kw)


def dbirth(good: int, state: int, temp: float, t: int) -> Any:
    p = tahu.Payload(timestamp=t)
    p.metrics.add(name="Counts/Good", alias=1, datatype=tahu.UInt32, int_value=good, timestamp=t)
    p.metrics.add(name="State/Code", alias=2, datatype=tahu.Int32, int_value=state, timestamp=t)
    p.metrics.add(name="temp", alias=3, datatype=tahu.Double, double_value=temp, timestamp=t)
    p.metrics.add(name="Other/Metric", alias=4, datatype=tahu.String, string_value="not collected", timestamp=t)
    return p


def ddata(t: int, **by_alias: Any) -> Any:
    p = tahu.Payload(timestamp=t)
    for alias, (field, value) in by_alias.items():
        m = p.metrics.add(alias=int(alias[1:]), timestamp=t)
        setattr(m, field, value)
    return p


@pytest.fixture
def group() -> str:
    return f"g{uuid.uuid4().hex[:8]}"


@pytest.fixture
def edge(mosquitto_broker: Mosquitto, group: str) -> Iterator[EdgeNode]:
    node = EdgeNode(mosquitto_broker, group, "node-1")
    assert node.subscribed.wait(10)
    try:
        yield node
    finally:
        node.close()


async def test_births_aliases_seq_gaps_and_deaths(mosquitto_broker: Mosquitto, group: str, edge: EdgeNode,
                                                  tmp_path: Path) -> None:
    dead = DeadLetters(tmp_path / "dead.jsonl", logging.getLogger("test.sparkplug"))
    src = source(plant(mosquitto_broker, group), dead_letters=dead)
    node = src.sparkplug
    assert node is not None
    async with running(src, skip=()) as got:
        # a host that connects asks for the births it missed (births are never retained)
        await eventually(lambda: edge.rebirths_asked() == 1, what="a rebirth request at connect")
        first = await take(got, 1)
        assert isinstance(first[0], SourceOnline)  # the MQTT connection

        # data before any birth cannot be read: dropped, and a rebirth is asked (rate-limited)
        edge.send("DDATA", ddata(ms_now(), a1=("int_value", 5)), "press-1")
        await eventually(lambda: node.stats.dropped_unborn == 1, what="data before a birth dropped")

        t0 = ms_now()
        edge.nbirth(bd_seq=7)
        edge.send("DBIRTH", dbirth(100, 1, 41.5, t0), "press-1")
        items = await take(got, 3)
        samples = [i for i in items if isinstance(i, Sample)]
        assert {(s.signal, s.value, s.time) for s in samples} == {
            ("good", 100, utc_ms(t0)), ("state", 1, utc_ms(t0)), ("temp", 41.5, utc_ms(t0))}
        assert node.born and node.bd_seq == 7

        # data by alias alone, each metric with its own timestamp
        t1 = t0 + 10
        edge.send("DDATA", ddata(t1, a1=("int_value", 101), a2=("int_value", 3)), "press-1")
        items = await take(got, 2)
        assert [(i.signal, i.value, i.time) for i in items if isinstance(i, Sample)] == [
            ("good", 101, utc_ms(t1)), ("state", 3, utc_ms(t1))]

        # a lost message: seq jumps by two; the message is still read, the gap asks for a rebirth
        asked = edge.rebirths_asked()
        edge.seq += 1
        edge.send("DDATA", ddata(t1 + 10, a1=("int_value", 104)), "press-1")
        [sample] = await take(got, 1)
        assert isinstance(sample, Sample) and sample.value == 104
        await eventually(lambda: edge.rebirths_asked() == asked + 1, what="a rebirth request after the gap")
        assert node.stats.seq_gaps == 1

        # an unknown alias asks for a rebirth too; an undecodable payload is a dead letter
        edge.send("DDATA", ddata(t1 + 20, a9=("int_value", 1)), "press-1")
        edge.send_raw("DDATA", b"\x12\x05\x0a\x03ab", "press-1")  # a metric cut short
        await eventually(lambda: dead.counts["not_protobuf"] == 1 and dead.counts["unknown_metric"] == 1,
                         what="dead letters")

        # the Will of an older session is ignored; the current one makes the node offline
        edge.ndeath(bd_seq=6)
        edge.nbirth(bd_seq=8)  # (a new session: the births after it)
        edge.send("DBIRTH", dbirth(110, 1, 40.0, ms_now()), "press-1")
        await take(got, 3)
        edge.ndeath(bd_seq=7)
        assert node.bd_seq == 8
        edge.ndeath(bd_seq=8)
        [offline] = await take(got, 1)
        assert isinstance(offline, SourceOffline) and "bdSeq 8" in offline.reason
        assert node.stats.stale_deaths == 2 and node.stats.deaths == 1 and not node.born
        edge.nbirth(bd_seq=9)
        [online] = await take(got, 1)
        assert isinstance(online, SourceOnline)
        # DDEATH forgets the device's birth: its data is dropped until the next DBIRTH
        edge.send("DBIRTH", dbirth(120, 1, 40.0, ms_now()), "press-1")
        await take(got, 3)
        edge.send("DDEATH", tahu.Payload(timestamp=ms_now()), "press-1")
        [gone] = await take(got, 1)  # the device's machine is offline; the node stays up
        assert isinstance(gone, MachinesOffline) and gone.machines == ("press-1",)
        dropped = node.stats.dropped_unborn
        edge.send("DDATA", ddata(ms_now(), a1=("int_value", 121)), "press-1")
        await eventually(lambda: node.stats.dropped_unborn == dropped + 1, what="data of a dead device dropped")
        assert node.stats.device_deaths == 1
        assert got.empty()
    dead.close()


async def test_ddeath_makes_that_devices_machine_offline_until_its_next_dbirth(
        mosquitto_broker: Mosquitto, group: str, edge: EdgeNode, sqlite_store: SqliteStore) -> None:
    """Through the whole pipeline into a real store: DDEATH of a born device is an ``offline``
    state fact for its machine at the death's arrival (its sibling device stays as it was); its
    next DBIRTH brings it back, stamped no earlier than the birth's arrival even though the birth
    repeats an unchanged state with its old timestamp."""
    signals = {"good": {"metric": "Counts/Good", "counter_bits": 32}, "state": {"metric": "State/Code",
                                                                                "map": STATE_MAP}}
    p = build_plant(
        {"edge": {"mqtt": {"host": mosquitto_broker.host, "port": mosquitto_broker.port, "qos": 1,
                           "payload": "sparkplug", "group_id": group, "edge_node_id": "node-1"}}},
        [("ln", "press-1", {"source": "edge", "signals": signals}),
         ("ln", "press-2", {"source": "edge", "signals": signals})])
    collector = Collector(p, sqlite_store, flush_interval_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        async with asyncio.timeout(10):
            await collector.wait_ready()
        await eventually(lambda: edge.rebirths_asked() >= 1, what="the rebirth request at connect")
        t0 = ms_now() - 60_000
        edge.nbirth(bd_seq=1)
        for device in ("press-1", "press-2"):
            edge.send("DBIRTH", dbirth(10, 1, 20.0, t0), device)
        async with asyncio.timeout(10):
            await collector.wait_until(lambda s: s.samples_in == 4)  # good and state of each

        before_death = datetime.now(UTC)
        edge.send("DDEATH", tahu.Payload(timestamp=ms_now()), "press-1")
        async with asyncio.timeout(10):
            await collector.wait_until(lambda s: s.offline_facts == 1)
        after_death = datetime.now(UTC)
        edge.send("DDATA", ddata(ms_now(), a1=("int_value", 11)), "press-1")  # dropped: not born again yet

        before_birth = datetime.now(UTC)
        edge.send("DBIRTH", dbirth(12, 1, 20.0, t0), "press-1")  # same state, its old timestamp
        async with asyncio.timeout(10):
            await collector.wait_until(lambda s: s.samples_in == 6)
            await collector.wait_idle()
        changes = await sqlite_store.state_changes(["press-1", "press-2"], 0, ms_now() * 1_000_000 + 10**9)
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task
    got: dict[str, list[tuple[datetime, str]]] = {}
    for c in changes:
        got.setdefault(c.machine, []).append((from_ns(c.time_ns), c.state))
    assert got["press-2"] == [(utc_ms(t0), "running")]
    (t_run, s_run), (t_off, s_off), (t_back, s_back) = got["press-1"]
    assert (t_run, s_run) == (utc_ms(t0), "running")
    assert s_off == "offline" and before_death <= t_off <= after_death
    assert s_back == "running" and t_back >= before_birth  # not backdated over the outage
    assert collector.stats.offline_facts == 1


async def test_a_sparkplug_source_acks_after_the_pipeline_says_so(mosquitto_broker: Mosquitto, group: str,
                                                                  edge: EdgeNode) -> None:
    """QoS 1 Sparkplug messages go through the same manual acknowledgement as JSON ones."""
    src = source(plant(mosquitto_broker, group))
    async with running(src) as got:
        await eventually(lambda: edge.rebirths_asked() == 1, what="the rebirth request")
        edge.nbirth(bd_seq=0)
        p = dbirth(1, 1, 20.0, ms_now())
        p.seq = 1
        edge.client.publish(f"spBv1.0/{group}/DBIRTH/node-1/press-1", p.SerializeToString(),
                            qos=1).wait_for_publish(5)
        await take(got, 3)
        await eventually(lambda: src.stats.acks >= 1, what="the QoS 1 birth acknowledged")


@given(st.binary(max_size=300), st.sampled_from(["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"]))
@settings(max_examples=300, deadline=None)
def test_any_bytes_are_a_reading_or_a_dead_letter_never_an_exception(data: bytes, kind: str) -> None:
    from core import sparkplug as spb
    from core.plant import parse_plant

    p = parse_plant({"site": {"id": "fz"}, "sources": {"edge": {"mqtt": {
        "payload": "sparkplug", "group_id": "g", "edge_node_id": "n"}}}, "lines": [{"id": "ln", "machines": [
            {"id": "m1", "source": "edge", "signals": {"good": {"counter_bits": 16}, "state": {"map": STATE_MAP},
                                                         "temp": {}}}]}]})
    broker = p.sources["edge"].mqtt
    assert broker is not None
    node = SparkplugNode("edge", broker, [("m1", n, s) for n, s in p.lines[0].machines[0].signals.items()])
    problems: list[str] = []
    # born, so data reaches the metric decoding
    birth = tahu.Payload(seq=0)
    birth.metrics.add(name="bdSeq", datatype=tahu.Int64, long_value=1)
    node.handle("spBv1.0/g/NBIRTH/n", birth.SerializeToString(), datetime.now(UTC), lambda k, m: problems.append(k))
    try:
        spb.decode(data)
    except ValueError:
        pass
    topic = f"spBv1.0/g/{kind}/n" + ("/m1" if kind.startswith("D") else "")
    node.handle(topic, data, datetime.now(UTC), lambda k, m: problems.append(k))


_metric = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["good", "state", "temp", "bdSeq", "other", ""]),
    "alias": st.integers(0, 2**64 - 1),
    "timestamp": st.integers(0, 2**64 - 1),
    "datatype": st.integers(0, 40),
    "is_null": st.booleans(),
    "int_value": st.integers(0, 2**32 - 1),
    "long_value": st.integers(0, 2**64 - 1),
    "double_value": st.floats(allow_nan=True, allow_infinity=True),
    "float_value": st.floats(width=32, allow_nan=True, allow_infinity=True),
    "boolean_value": st.booleans(),
    "string_value": st.text(max_size=20),
})


@given(st.lists(_metric, max_size=5), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
       st.lists(st.sampled_from(["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"]), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_any_sparkplug_payload_is_a_reading_or_a_dead_letter(metrics: list[dict[str, Any]], seq: int, ts: int,
                                                            kinds: list[str]) -> None:
    """Payloads built with the reference module, with any field values (a value field set last
    wins, as protobuf's oneof does): the node takes each as readings or dead letters."""
    from core.plant import parse_plant

    p = parse_plant({"site": {"id": "fz"}, "sources": {"edge": {"mqtt": {
        "payload": "sparkplug", "group_id": "g", "edge_node_id": "n"}}}, "lines": [{"id": "ln", "machines": [
            {"id": "m1", "source": "edge", "signals": {"good": {"counter_bits": 16}, "state": {"map": STATE_MAP},
                                                         "temp": {}}}]}]})
    broker = p.sources["edge"].mqtt
    assert broker is not None
    node = SparkplugNode("edge", broker, [("m1", n, s) for n, s in p.lines[0].machines[0].signals.items()])
    payload = tahu.Payload(seq=seq, timestamp=ts)
    for fields in metrics:
        m = payload.metrics.add()
        for k, v in fields.items():
            setattr(m, k, v)
    data = payload.SerializeToString()
    for kind in kinds:
        topic = f"spBv1.0/g/{kind}/n" + ("/m1" if kind.startswith("D") else "")
        out = node.handle(topic, data, datetime.now(UTC), lambda k, m: None)
        for item in out.items:
            if isinstance(item, Sample):
                assert item.machine == "m1" and item.signal in ("good", "state", "temp")
