"""The MQTT publisher against a real Mosquitto and a plain paho subscriber (not the collector):
JSON grouping per topic and per signal, Sparkplug B (decoded with Eclipse Tahu's generated
protobuf module as shipped on PyPI by ``esio-spb-builder``), and the faults the live simulator
drives (malformed, disconnect, silence, skew).

The model runs on a virtual clock that goes ~20x faster than the wall clock (the publisher does
not care what time it is, only the fault windows are on the wall clock), so a test sees hundreds
of messages in a second or two. Each test takes the ledger as the oracle. Waits are on
conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from esio_spb_builder.core import sparkplug_b_pb2 as tahu  # Eclipse Tahu's sparkplug_b.proto, generated
from google.protobuf.message import DecodeError
from paho.mqtt.enums import CallbackAPIVersion

from core.plant import Plant, PlantFileError, parse_plant
from simulators.ledger import LedgerRecord, LedgerWriter, read_ledger
from simulators.live import run_live
from simulators.model import PlantModel
from simulators.mqtt_plc import MALFORMED_JSON_KINDS, MALFORMED_SPARKPLUG_KINDS, MqttPlc, wall_ms
from tests.support.services import Mosquitto

DEADLINE_S = 20.0
STATE_MAP = {0: "planned", 1: "running", 2: "idle", 3: "down", 4: "changeover"}
SIM = {"cycle_cv": 0.1, "scrap_rate": 0.15, "mtbf_s": 6, "mttr_s": 1.0, "micro_stop_rate_per_h": 400,
       "reasons": [10, 20, 40]}
# (machine, ideal cycle s, time unit, counter bits, counter start): m1's counters wrap early
MACHINES = (("m1", 0.4, "ms", 16, 65_500), ("m2", 0.6, "s", 32, 0))


async def wait_for(cond: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def plant_raw(mqtt_source: dict[str, Any], signals: Callable[[str, str, int], dict[str, Any]]) -> dict[str, Any]:
    """Two machines, each on its own line (so neither starves the other), on source 'broker'."""
    lines = []
    for mid, cycle, unit, bits, start in MACHINES:
        lines.append({"id": f"line-{mid}", "machines": [{
            "id": mid, "ideal_cycle_s": cycle, "source": "broker", "signals": signals(mid, unit, bits),
            "simulation": {**SIM, "counter_start": start}}]})
    return {
        "site": {"id": "mqtt-test", "timezone": "Asia/Tokyo"},
        "calendar": {"shifts": [{"id": "all", "start": "00:00", "end": "00:00",
                                 "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}],
                     "micro_stop_s": 2},
        "reasons": {10: {"name": "Tool change", "category": "changeover"},
                    20: {"name": "Spindle fault", "category": "breakdown"},
                    40: {"name": "Minor stop", "category": "micro_stop"}},
        "sources": {"broker": {"mqtt": mqtt_source}},
        "lines": lines,
    }


def json_plant(broker: Mosquitto, prefix: str, *, grouping: str | None = None, qos: int = 1) -> Plant:
    src: dict[str, Any] = {"host": broker.host, "port": broker.port, "qos": qos}
    if grouping is not None:
        src["grouping"] = grouping

    def signals(mid: str, unit: str, bits: int) -> dict[str, Any]:
        base, ts = f"{prefix}/line-{mid}/{mid}", {"time_field": "ts", "time_unit": unit}
        return {
            "good": {"topic": f"{base}/counts", "field": "good", **ts, "counter_bits": bits},
            "scrap": {"topic": f"{base}/counts", "field": "scrap", **ts, "counter_bits": bits},
            "total": {"topic": f"{base}/total", "field": "total", **ts, "counter_bits": bits},
            "state": {"topic": f"{base}/state", "field": "code", **ts, "map": STATE_MAP},
            "reason": {"topic": f"{base}/state", "field": "reason", **ts},
            "pressure": {"topic": f"{base}/process", "field": "pressure", **ts, "unit": "MPa"},
        }

    return parse_plant(plant_raw(src, signals), "<json plant>")


def sparkplug_plant(broker: Mosquitto, group: str) -> Plant:
    src = {"host": broker.host, "port": broker.port, "payload": "sparkplug", "group_id": group,
           "edge_node_id": "sim-edge"}

    def signals(mid: str, unit: str, bits: int) -> dict[str, Any]:
        return {
            "good": {"metric": "Counts/Good", "counter_bits": bits},
            "scrap": {"metric": "Counts/Scrap", "counter_bits": bits},
            "state": {"metric": "State/Code", "map": STATE_MAP},
            "reason": {"metric": "State/Reason"},
            "pressure": {"unit": "MPa"},  # metric name: the signal name
        }

    return parse_plant(plant_raw(src, signals), "<sparkplug plant>")


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool
    at: float  # monotonic time received


class Recorder:
    """A plain paho subscriber keeping every message in arrival order."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.msgs: list[Msg] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"mqtt-plc-test-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p=None: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.msgs.append(Msg(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))

    def all(self) -> list[Msg]:
        with self._lock:
            return list(self.msgs)

    def on(self, topic: str) -> list[Msg]:
        return [m for m in self.all() if m.topic == topic]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Rig:
    """The plant model on a virtual clock feeding one MqttPlc, with its ledger."""

    def __init__(self, plant: Plant, truth: Path, seed: int = 7, *, aliases: bool = False) -> None:
        self.plc = MqttPlc(plant, "broker", seed=seed, aliases=aliases)
        self.start_ms = wall_ms()
        self.now_ms = self.start_ms
        self.model = PlantModel(plant, seed, self.start_ms)
        self.truth = truth
        self.ledger = LedgerWriter(truth, flush_each=True).open()

    async def start(self) -> None:
        await self.plc.connect()
        for ev in self.model.initial_events():
            self.ledger.write(ev)
            self.plc.apply(ev)
        await self.plc.flush()

    async def run(self, virtual_s: float, *, step_ms: int = 100, pause_s: float = 0.005,
                  until: Callable[[], bool] | None = None) -> None:
        end = self.now_ms + round(virtual_s * 1000)
        while self.now_ms < end and not (until is not None and until()):
            self.now_ms = min(end, self.now_ms + step_ms)
            for ev in self.model.advance(self.now_ms, inclusive=True):
                self.ledger.write(ev)
                self.plc.apply(ev)
            await asyncio.sleep(pause_s)

    def records(self) -> list[LedgerRecord]:
        return read_ledger(self.truth)

    async def close(self) -> None:
        await self.plc.stop()
        self.ledger.close()


@pytest.fixture
def prefix() -> str:
    return f"plctest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for r in made:
        r.close()


async def subscribe(broker: Mosquitto, topic: str, made: list[Recorder]) -> Recorder:
    rec = Recorder(broker, topic)
    made.append(rec)
    await wait_for(rec.subscribed.is_set, "the subscription")
    return rec


def parts(ledger: list[LedgerRecord], machine: str, good: bool, after_ms: int, upto_ms: int) -> list[int]:
    return [r.t_ms for r in ledger if r.kind == "part" and r.machine == machine and r.good == good
            and after_ms < r.t_ms <= upto_ms]


def ts_ms(value: Any, unit: str) -> int:
    return round(value * 1000) if unit == "s" else int(value)


# ---- JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("grouping", ["per_topic", "per_signal"])
async def test_json_grouping(grouping: str, mosquitto_broker: Mosquitto, prefix: str, tmp_path: Path,
                             recorders: list[Recorder]) -> None:
    plant = json_plant(mosquitto_broker, prefix, grouping=grouping)
    rec = await subscribe(mosquitto_broker, f"{prefix}/#", recorders)
    rig = Rig(plant, tmp_path / "truth.jsonl")
    await rig.start()
    try:
        await rig.run(30)
        await rig.plc.flush()
        # what a subscriber that comes later gets at once: the retained topics
        shared = "counts", "state"  # each carries two signals
        own = ("total",) if grouping == "per_signal" else ("counts", "total", "state")
        late = await subscribe(mosquitto_broker, f"{prefix}/#", recorders)
        await wait_for(lambda: len(late.all()) >= len(own) * len(MACHINES), "the retained messages")
        await asyncio.sleep(0.2)
        assert {m.topic for m in late.all() if m.retain} == {
            f"{prefix}/line-{mid}/{mid}/{t}" for mid, *_ in MACHINES for t in own}, shared
    finally:
        await rig.close()
    ledger = rig.records()
    for mid, _, unit, bits, start in MACHINES:
        base = f"{prefix}/line-{mid}/{mid}"
        counts = [(json.loads(m.payload), m.retain) for m in rec.on(f"{base}/counts")]
        states = [json.loads(m.payload) for m in rec.on(f"{base}/state")]
        totals = [json.loads(m.payload) for m in rec.on(f"{base}/total")]
        if grouping == "per_topic":
            assert all(set(p) == {"good", "scrap", "ts"} for p, _ in counts)
            assert all(set(p) == {"code", "reason", "ts"} for p in states)
        else:
            # two signals on one topic: two messages on it, each with its own field and the time
            assert all(set(p) in ({"good", "ts"}, {"scrap", "ts"}) for p, _ in counts)
            assert all(set(p) in ({"code", "ts"}, {"reason", "ts"}) for p in states)
            assert {"code", "reason"} <= {k for p in states for k in p}
        assert all(set(p) == {"total", "ts"} for p in totals)
        for field, good in (("good", True), ("scrap", False)):
            seen = [(ts_ms(p["ts"], unit), p[field]) for p, _ in counts if field in p]
            (t0, v0), (t1, _) = seen[0], seen[-1]
            assert t0 == rig.start_ms and v0 == start % (1 << bits)
            counted = sum((b - a) % (1 << bits) for (_, a), (_, b) in itertools.pairwise(seen))
            expected = parts(ledger, mid, good, t0, t1)
            assert counted == len(expected) > 0, (mid, field)
            if grouping == "per_signal":  # one message per change, at the part's time
                assert [t for t, _ in seen[1:]] == expected, (mid, field)
        if grouping == "per_topic":  # one counts message per part, at the part's time
            assert [ts_ms(p["ts"], unit) for p, _ in counts[1:]] == \
                [r.t_ms for r in ledger if r.kind == "part" and r.machine == mid and r.t_ms <= rig.now_ms]


async def test_json_disconnect_loses_nothing_at_qos1(mosquitto_broker: Mosquitto, prefix: str, tmp_path: Path,
                                                     recorders: list[Recorder]) -> None:
    plant = json_plant(mosquitto_broker, prefix)
    rec = await subscribe(mosquitto_broker, f"{prefix}/#", recorders)
    rig = Rig(plant, tmp_path / "truth.jsonl")
    await rig.start()
    try:
        await rig.run(10)
        outage = asyncio.create_task(rig.plc.disconnect(1.2), name="outage")
        await asyncio.sleep(0.05)
        down_from = rig.now_ms
        await rig.run(120, until=outage.done)  # the model goes on while the broker is away
        down_to = rig.now_ms
        await outage
        await rig.run(10)
        await rig.plc.flush()
    finally:
        await rig.close()
    assert rig.plc.disconnects == 1 and rig.plc.dropped == 0
    ledger = rig.records()
    for mid, _, unit, bits, _ in MACHINES:
        # QoS 1 is at least once: a message in flight when the connection dropped may come again
        # after reconnecting (after newer ones); keep each message's first delivery
        first = dict.fromkeys(m.payload for m in rec.on(f"{prefix}/line-{mid}/{mid}/counts"))
        msgs = [json.loads(p) for p in first]
        mod = 1 << bits
        # every counter value, in order: each message is exactly one part after the one before
        for a, b in itertools.pairwise(msgs):
            steps = ((b["good"] - a["good"]) % mod, (b["scrap"] - a["scrap"]) % mod)
            assert steps in ((1, 0), (0, 1)), (mid, a, b)
            assert ts_ms(b["ts"], unit) > ts_ms(a["ts"], unit)
        expected = [r.t_ms for r in ledger if r.kind == "part" and r.machine == mid]
        assert [ts_ms(p["ts"], unit) for p in msgs[1:]] == expected
        assert any(down_from < t <= down_to for t in expected), "parts were made while the broker was away"


# ---- Sparkplug B --------------------------------------------------------------------------------


def decode(m: Msg) -> Any:
    return tahu.Payload.FromString(m.payload)


def mtype(m: Msg) -> str:
    return m.topic.split("/")[2]


def value(metric: Any) -> Any:
    field = metric.WhichOneof("value")
    return None if field is None else getattr(metric, field)


def metrics_by_name(payload: Any) -> dict[str, Any]:
    return {m.name: m for m in payload.metrics}


def check_seq(msgs: list[Msg]) -> int:
    """seq 0 on every NBIRTH, +1 mod 256 on every other message of the node; no seq on NDEATH.
    Returns how often seq wrapped."""
    prev: int | None = None
    wraps = 0
    for m in msgs:
        p = decode(m)
        if mtype(m) == "NDEATH":
            assert not p.HasField("seq")
            prev = None
            continue
        assert p.HasField("seq") and p.HasField("timestamp"), m.topic
        if mtype(m) == "NBIRTH":
            assert p.seq == 0
        else:
            assert prev is not None and p.seq == (prev + 1) % 256, (m.topic, prev, p.seq)
            wraps += p.seq == 0
        prev = p.seq
    return wraps


def counter_series(msgs: list[Msg], machine: str, metric: str) -> list[tuple[int, int]]:
    """(timestamp, value) of one counter metric in the births and data of one device."""
    out = []
    for m in msgs:
        if m.topic.endswith(f"/{machine}") and mtype(m) in ("DBIRTH", "DDATA"):
            mm = metrics_by_name(decode(m)).get(metric)
            if mm is not None:
                out.append((mm.timestamp, value(mm)))
    return out


async def test_sparkplug_session_seq_datatypes_and_counts(mosquitto_broker: Mosquitto, prefix: str,
                                                          tmp_path: Path, recorders: list[Recorder]) -> None:
    plant = sparkplug_plant(mosquitto_broker, prefix)
    rec = await subscribe(mosquitto_broker, f"spBv1.0/{prefix}/#", recorders)
    rig = Rig(plant, tmp_path / "truth.jsonl")
    await rig.start()
    try:
        await rig.run(200, step_ms=250, until=lambda: len(rec.all()) > 300)
        await rig.plc.flush()
    finally:
        await rig.close()  # an intentional disconnect: NDEATH, then DISCONNECT
    await wait_for(lambda: mtype(rec.all()[-1]) == "NDEATH", "the NDEATH")
    msgs = rec.all()
    assert [mtype(m) for m in msgs[:3]] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    assert msgs[0].topic == f"spBv1.0/{prefix}/NBIRTH/sim-edge"
    assert {m.topic for m in msgs[1:3]} == {f"spBv1.0/{prefix}/DBIRTH/sim-edge/{mid}" for mid, *_ in MACHINES}
    assert check_seq(msgs) >= 1, "seq wraps after 255"

    nbirth = metrics_by_name(decode(msgs[0]))
    assert nbirth["bdSeq"].datatype == tahu.Int64 and nbirth["Node Control/Rebirth"].datatype == tahu.Boolean
    assert value(nbirth["Node Control/Rebirth"]) is False
    ndeath = decode(msgs[-1])
    assert [m.name for m in ndeath.metrics] == ["bdSeq"]
    assert value(ndeath.metrics[0]) == value(nbirth["bdSeq"]) == rig.plc.bd_seq

    ledger = rig.records()
    for i, (mid, _, _, bits, start) in enumerate(MACHINES):
        birth = metrics_by_name(decode(msgs[1 + i]))
        counter_type = {16: tahu.UInt16, 32: tahu.UInt32}[bits]
        assert {n: m.datatype for n, m in birth.items()} == {
            "Counts/Good": counter_type, "Counts/Scrap": counter_type, "State/Code": tahu.Int32,
            "State/Reason": tahu.Int32, "pressure": tahu.Double}
        assert all(m.timestamp > 0 and not m.is_null for m in birth.values())
        assert value(birth["Counts/Good"]) == start % (1 << bits)
        data = [decode(m) for m in msgs if mtype(m) == "DDATA" and m.topic.endswith(f"/{mid}")]
        assert data and all(m.datatype == 0 and m.timestamp > 0 for p in data for m in p.metrics)
        for metric, good in (("Counts/Good", True), ("Counts/Scrap", False)):
            seen = counter_series(msgs, mid, metric)
            (t0, _), (t1, _) = seen[0], seen[-1]
            counted = sum((b - a) % (1 << bits) for (_, a), (_, b) in itertools.pairwise(seen))
            assert counted == len(parts(ledger, mid, good, t0, t1)) > 0, (mid, metric)
            assert [t for t, _ in seen[1:]] == parts(ledger, mid, good, t0, t1)


async def test_sparkplug_rebirth_on_ncmd(mosquitto_broker: Mosquitto, prefix: str, tmp_path: Path,
                                         recorders: list[Recorder]) -> None:
    plant = sparkplug_plant(mosquitto_broker, prefix)
    rec = await subscribe(mosquitto_broker, f"spBv1.0/{prefix}/#", recorders)
    rig = Rig(plant, tmp_path / "truth.jsonl")
    await rig.start()
    try:
        await rig.run(5)
        cmd = tahu.Payload(timestamp=wall_ms())
        cmd.metrics.add(name="Node Control/Rebirth", datatype=tahu.Boolean, boolean_value=True, timestamp=wall_ms())
        rec.publish(f"spBv1.0/{prefix}/NCMD/sim-edge", cmd.SerializeToString())
        await rig.run(60, until=lambda: rig.plc.rebirths == 1)
        await rig.run(5)
        await rig.plc.flush()
    finally:
        await rig.close()
    msgs = [m for m in rec.all() if mtype(m) != "NCMD"]
    births = [i for i, m in enumerate(msgs) if mtype(m) == "NBIRTH"]
    assert len(births) == 2
    again = births[1]
    assert [mtype(m) for m in msgs[again:again + 3]] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    assert [decode(m).seq for m in msgs[again:again + 3]] == [0, 1, 2]
    first_bd, second_bd = (value(metrics_by_name(decode(msgs[i]))["bdSeq"]) for i in births)
    assert first_bd == second_bd, "a rebirth keeps the session's bdSeq"
    check_seq(msgs)
    # the new births carry the current counts
    ledger = rig.records()
    for i, (mid, _, _, bits, start) in enumerate(MACHINES):
        good = metrics_by_name(decode(msgs[again + 1 + i]))["Counts/Good"]
        made = len(parts(ledger, mid, True, rig.start_ms, good.timestamp))
        assert value(good) == (start + made) % (1 << bits)


async def test_sparkplug_disconnect_is_a_new_session(mosquitto_broker: Mosquitto, prefix: str, tmp_path: Path,
                                                     recorders: list[Recorder]) -> None:
    plant = sparkplug_plant(mosquitto_broker, prefix)
    rec = await subscribe(mosquitto_broker, f"spBv1.0/{prefix}/#", recorders)
    rig = Rig(plant, tmp_path / "truth.jsonl")
    await rig.start()
    try:
        await rig.run(5)
        bd0 = rig.plc.bd_seq
        outage = asyncio.create_task(rig.plc.disconnect(0.5), name="outage")
        await rig.run(120, until=outage.done)
        await outage
        await rig.run(5)
        await rig.plc.flush()
    finally:
        await rig.close()
    msgs = rec.all()
    kinds = [mtype(m) for m in msgs]
    will = kinds.index("NDEATH")  # the broker published the Will: the connection dropped uncleanly
    assert value(decode(msgs[will]).metrics[0]) == bd0
    assert kinds[will + 1:will + 4] == ["NBIRTH", "DBIRTH", "DBIRTH"], "nothing between the death and the rebirth"
    bd1 = value(metrics_by_name(decode(msgs[will + 1]))["bdSeq"])
    assert bd0 is not None and bd1 == (bd0 + 1) % 256 == rig.plc.bd_seq
    check_seq(msgs)
    # counters are cumulative: the new births carry every part made while away
    ledger = rig.records()
    for i, (mid, _, _, bits, start) in enumerate(MACHINES):
        for metric, good in (("Counts/Good", True), ("Counts/Scrap", False)):
            m = metrics_by_name(decode(msgs[will + 2 + i]))[metric]
            made = len(parts(ledger, mid, good, rig.start_ms, m.timestamp))
            assert value(m) == (start + made) % (1 << bits), (mid, metric)
        seen = counter_series(msgs, mid, "Counts/Good")
        counted = sum((b - a) % (1 << bits) for (_, a), (_, b) in itertools.pairwise(seen))
        assert counted == len(parts(ledger, mid, True, seen[0][0], seen[-1][0]))


def aliased_series(msgs: list[Msg], machine: str, metric: str) -> list[tuple[int, int]]:
    """:func:`counter_series` where data name metrics by the alias their device's birth gave."""
    out, alias = [], None
    for m in msgs:
        if not m.topic.endswith(f"/{machine}"):
            continue
        p = decode(m)
        if mtype(m) == "DBIRTH":
            alias = metrics_by_name(p)[metric].alias
        for mm in p.metrics if mtype(m) in ("DBIRTH", "DDATA") else ():
            if mm.name == metric or (not mm.name and mm.alias == alias):
                out.append((mm.timestamp, value(mm)))
    return out


async def test_sparkplug_aliases_seq_gap_and_restart(mosquitto_broker: Mosquitto, prefix: str, tmp_path: Path,
                                                     recorders: list[Recorder]) -> None:
    """With aliases, births name each metric with an alias and data carry the alias alone; a
    seq_gap loses data messages (their seq numbers skipped); a restart is an unclean
    disconnect (the broker's NDEATH) with non-retentive counters from 0 and the next bdSeq."""
    plant = sparkplug_plant(mosquitto_broker, prefix)
    rec = await subscribe(mosquitto_broker, f"spBv1.0/{prefix}/#", recorders)
    rig = Rig(plant, tmp_path / "truth.jsonl", aliases=True)
    await rig.start()
    try:
        await rig.run(5)
        rig.plc.seq_gap(2)
        await rig.run(30, until=lambda: rig.plc.lost == 2)
        await rig.run(5)
        await rig.plc.flush()
        bd0 = rig.plc.bd_seq
        restart = asyncio.create_task(rig.plc.restart(0.5), name="restart")
        await asyncio.sleep(0)  # the restart sets the counters to 0 before its first await
        restart_ms = rig.now_ms
        await rig.run(120, until=restart.done)
        await restart
        await rig.run(5)
        await rig.plc.flush()
    finally:
        await rig.close()
    msgs = rec.all()
    births = {m.topic: decode(m) for m in msgs[:3]}
    for mid, *_ in MACHINES:
        birth = births[f"spBv1.0/{prefix}/DBIRTH/sim-edge/{mid}"]
        assert all(m.name and m.alias > 0 for m in birth.metrics)
        aliases = {m.alias for m in birth.metrics}
        data = [decode(m) for m in msgs if mtype(m) == "DDATA" and m.topic.endswith(f"/{mid}")]
        assert data and all(not m.name and m.alias in aliases for p in data for m in p.metrics)
    kinds = [mtype(m) for m in msgs]
    will = kinds.index("NDEATH")
    # the two lost messages: seq skips by three once in the first session, nowhere else
    seqs = [decode(m).seq for m in msgs[:will]]
    steps = [(b - a) % 256 for a, b in itertools.pairwise(seqs)]
    assert steps.count(3) == 1 and set(steps) == {1, 3}, repr(steps)
    assert value(decode(msgs[will]).metrics[0]) == bd0
    assert kinds[will + 1:will + 4] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    # after the restart the counters show the parts made since it began (from 0)
    ledger = rig.records()
    for i, (mid, _, _, bits, start) in enumerate(MACHINES):
        good = metrics_by_name(decode(msgs[will + 2 + i]))["Counts/Good"]
        made = len(parts(ledger, mid, True, restart_ms, good.timestamp))
        assert value(good) == made, (mid, value(good), made)
        # the data before the restart counted on from the start (aliases resolved through the birth)
        seen = aliased_series(msgs[:will], mid, "Counts/Good")
        assert seen[-1][1] == (start + len(parts(ledger, mid, True, rig.start_ms, seen[-1][0]))) % (1 << bits)
    assert rig.plc.restarts == 1


async def test_live_run_publishes_sparkplug_births_with_the_initial_values(
        mosquitto_broker: Mosquitto, prefix: str, tmp_path: Path, recorders: list[Recorder]) -> None:
    """Through simulators.live, as `mieruka simulate` runs it: births only once the snapshot is in."""
    plant = sparkplug_plant(mosquitto_broker, prefix)
    rec = await subscribe(mosquitto_broker, f"spBv1.0/{prefix}/#", recorders)
    await asyncio.wait_for(run_live(plant, 3, duration_s=1.5, truth_path=tmp_path / "truth.jsonl"), 30)
    await wait_for(lambda: bool(rec.all()) and mtype(rec.all()[-1]) == "NDEATH", "the NDEATH")
    msgs = rec.all()
    assert [mtype(m) for m in msgs[:3]] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    for m in msgs[1:3]:
        assert not any(mm.is_null for mm in decode(m).metrics)
    check_seq(msgs)


# ---- faults -------------------------------------------------------------------------------------


def json_kind(payload: bytes) -> str:
    try:
        obj = json.loads(payload)
    except ValueError:
        return "not_json"
    fields = {k: v for k, v in obj.items() if k != "ts"}
    if not fields:
        return "missing_field"
    if all(v == "n/a" or v is False for v in fields.values()):
        return "wrong_type"
    return "ok"


def sparkplug_kind(m: Msg) -> str:
    try:
        p = decode(m)
    except DecodeError:
        return "not_protobuf"
    if any(mm.datatype in (tahu.String, tahu.Boolean) for mm in p.metrics):
        return "wrong_type"
    if any(value(mm) is None and not mm.is_null for mm in p.metrics):
        return "missing_field"
    return "ok"


@pytest.mark.parametrize("payload", ["json", "sparkplug"])
async def test_malformed_kinds_at_the_rate_asked(payload: str, mosquitto_broker: Mosquitto, prefix: str,
                                                 tmp_path: Path, recorders: list[Recorder]) -> None:
    sparkplug = payload == "sparkplug"
    plant = sparkplug_plant(mosquitto_broker, prefix) if sparkplug else json_plant(mosquitto_broker, prefix)
    rec = await subscribe(mosquitto_broker, f"spBv1.0/{prefix}/#" if sparkplug else f"{prefix}/#", recorders)
    rig = Rig(plant, tmp_path / "truth.jsonl")
    await rig.start()
    rate, n = 0.3, 600
    try:
        await wait_for(lambda: len(rec.all()) >= rig.plc.published, "the first messages")
        start = len(rec.all())
        rig.plc.malformed(rate, None)
        published = rig.plc.published
        await rig.run(600, step_ms=250, until=lambda: rig.plc.published - published >= n)
        await rig.plc.flush()
        await wait_for(lambda: len(rec.all()) - start >= rig.plc.published - published, "every message")
        sample = rec.all()[start:]
        rig.plc.malformed(0)
        await rig.run(5)
        await rig.plc.flush()
        after = rec.all()[start + len(sample):]
    finally:
        await rig.close()
    if sparkplug:
        kinds = Counter(sparkplug_kind(m) for m in sample if mtype(m) == "DDATA")
        after_kinds = {sparkplug_kind(m) for m in after if mtype(m) == "DDATA"}
        expected_kinds = MALFORMED_SPARKPLUG_KINDS
    else:
        kinds = Counter(json_kind(m.payload) for m in sample)
        after_kinds = {json_kind(m.payload) for m in after}
        expected_kinds = MALFORMED_JSON_KINDS
    bad = sum(v for k, v in kinds.items() if k != "ok")
    total = sum(kinds.values())
    assert {k: v for k, v in kinds.items() if k != "ok"} == dict(rig.plc.malformed_sent)
    assert abs(bad / total - rate) < 0.07, (bad, total)
    for k in expected_kinds:
        assert kinds[k] > bad / 6, (k, kinds)
    assert after_kinds == {"ok"}, "malformed(0) ends it"


async def test_silence_then_late_data(mosquitto_broker: Mosquitto, prefix: str, tmp_path: Path,
                                      recorders: list[Recorder]) -> None:
    plant = json_plant(mosquitto_broker, prefix)
    rec = await subscribe(mosquitto_broker, f"{prefix}/#", recorders)
    rig = Rig(plant, tmp_path / "truth.jsonl")
    await rig.start()
    try:
        await rig.run(5)
        await rig.plc.flush()
        await wait_for(lambda: len(rec.all()) >= rig.plc.published, "the first messages")
        quiet_from, seen_before, published = rig.now_ms, len(rec.all()), rig.plc.published
        silent_from = time.monotonic()
        rig.plc.silence(0.6)
        await rig.run(1000, until=lambda: time.monotonic() > silent_from + 0.8)
        assert rig.plc.suppressed > 0 and rig.plc.published > published, "changes come when the silence ends"
        await rig.plc.flush()
        await wait_for(lambda: len(rec.all()) - seen_before >= rig.plc.published - published, "the late data")
        resync = rec.all()[seen_before:]
    finally:
        await rig.close()
    ledger = rig.records()
    assert all(m.at >= silent_from + 0.59 for m in resync), "nothing during the silence"
    for mid, _, unit, bits, start in MACHINES:
        counts = [json.loads(m.payload) for m in resync if m.topic == f"{prefix}/line-{mid}/{mid}/counts"]
        late, t_late = counts[0], ts_ms(counts[0]["ts"], unit)
        made = [r.t_ms for r in ledger if r.kind == "part" and r.machine == mid]
        # the first message after the silence is one late message for every part made during it:
        # the counter's value then, stamped with the last of those parts' time
        assert t_late in made and any(quiet_from < t < t_late for t in made), mid
        good = sum(1 for r in ledger if r.kind == "part" and r.machine == mid and r.good and r.t_ms <= t_late)
        assert late["good"] == (start + good) % (1 << bits)
        assert all(ts_ms(c["ts"], unit) > t_late for c in counts[1:])


async def test_skew_shifts_the_time_fields(mosquitto_broker: Mosquitto, prefix: str, tmp_path: Path,
                                           recorders: list[Recorder]) -> None:
    plant = json_plant(mosquitto_broker, prefix)
    rec = await subscribe(mosquitto_broker, f"{prefix}/#", recorders)
    rig = Rig(plant, tmp_path / "truth.jsonl")
    await rig.start()
    try:
        await rig.run(3)
        rig.plc.skew(-90, None)
        skewed_from = rig.now_ms
        await rig.run(10)
        rig.plc.end_faults()
        skewed_to = rig.now_ms
        await rig.run(5)
        await rig.plc.flush()
    finally:
        await rig.close()
    ledger = rig.records()
    mid, _, unit, _, _ = MACHINES[0]
    stamps = [ts_ms(json.loads(m.payload)["ts"], unit) for m in rec.on(f"{prefix}/line-{mid}/{mid}/counts")][1:]
    true = [r.t_ms for r in ledger if r.kind == "part" and r.machine == mid]
    shift = [s - t for s, t in zip(stamps, true, strict=True)]
    assert {d for d, t in zip(shift, true, strict=True) if skewed_from < t <= skewed_to} == {-90_000}
    assert {d for d, t in zip(shift, true, strict=True) if not skewed_from < t <= skewed_to} == {0}


# ---- the plant file -----------------------------------------------------------------------------


def test_plant_file_sparkplug_keys() -> None:
    def problems(src: dict[str, Any], signals: dict[str, Any]) -> str:
        with pytest.raises(PlantFileError) as e:
            parse_plant(plant_raw(src, lambda mid, unit, bits: signals))
        return str(e.value)

    good = {"counter_bits": 16}
    assert "needs 'group_id'" in problems({"payload": "sparkplug", "edge_node_id": "e"}, {"good": good})
    assert "Sparkplug id" in problems({"payload": "sparkplug", "group_id": "a/b", "edge_node_id": "e"},
                                      {"good": good})
    assert "'grouping' is for JSON" in problems({"payload": "sparkplug", "group_id": "g", "edge_node_id": "e",
                                                 "grouping": "per_signal"}, {"good": good})
    assert "Sparkplug B keys" in problems({"group_id": "g"}, {"good": {**good, "topic": "t", "field": "f"}})
    json_err = problems({}, {"good": {**good, "topic": "t", "field": "f", "metric": "Counts/Good"}})
    assert "signals.good.metric" in json_err and "not Sparkplug B" in json_err
    assert "needs 'field'" in problems({}, {"good": {**good, "topic": "t"}})
    # a Sparkplug B signal needs neither topic nor field
    plant = parse_plant(plant_raw({"payload": "sparkplug", "group_id": "g", "edge_node_id": "e"},
                                  lambda mid, unit, bits: {"good": good, "scrap": {**good, "metric": "Scrap"}}))
    assert plant.sources["broker"].mqtt is not None and plant.sources["broker"].mqtt.payload == "sparkplug"
    dup = parse_plant(plant_raw({"payload": "sparkplug", "group_id": "g", "edge_node_id": "e"},
                                lambda mid, unit, bits: {"good": good, "scrap": {**good, "metric": "good"}}))
    with pytest.raises(ValueError, match="both Sparkplug metric 'good'"):
        MqttPlc(dup, "broker")
