"""Live mode against plain protocol clients (not the mieruka collector).

Each test subscribes after the simulator is ready, takes the first value of every counter as
its baseline, and compares what it counted afterwards with the ledger's parts in the window
from the baseline's time (exclusive) to the last reading's time (inclusive). The waits are on
conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from asyncua import ua
from asyncua.client.client import Client
from paho.mqtt.enums import CallbackAPIVersion

from core.plant import Plant
from simulators.ledger import LedgerRecord, read_ledger
from simulators.live import run_live
from simulators.model import to_ms
from tests.support.services import Mosquitto, free_port

WANT_CHANGES = 8  # counter changes per machine before the comparison (cycles are 0.5–0.9 s)
DEADLINE_S = 30.0


async def wait_for(cond: Callable[[], bool], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def parts_between(ledger: list[LedgerRecord], machine: str, good: bool, after_ms: int, upto_ms: int) -> list[int]:
    return [r.t_ms for r in ledger if r.kind == "part" and r.machine == machine and r.good == good
            and after_ms < r.t_ms <= upto_ms]


def states_between(ledger: list[LedgerRecord], machine: str, after_ms: int, upto_ms: int) -> list[tuple[int, str]]:
    return [(r.t_ms, r.state or "") for r in ledger if r.kind == "state" and r.machine == machine
            and after_ms < r.t_ms <= upto_ms]


def check_ledger_start(ledger: list[LedgerRecord], plant: Plant) -> None:
    first: dict[str, LedgerRecord] = {}
    for r in ledger:
        assert r.machine is not None
        first.setdefault(r.machine, r)
    assert set(first) == {m.id for _, m in plant.machines()}
    assert all(r.kind == "state" and r.state == "running" for r in first.values())
    assert len({r.t_ms for r in first.values()}) == 1


class _Handler:
    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[int, Any]]] = defaultdict(list)

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        dv = data.monitored_item.Value
        ts = dv.SourceTimestamp
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        self.seen[node.nodeid.to_string()].append((to_ms(ts), val))


async def test_opcua_client_counts_what_the_ledger_says(opcua_fast_plant: Callable[[int], Plant],
                                                          tmp_path: Path) -> None:
    port = free_port()
    plant = opcua_fast_plant(port)
    truth = tmp_path / "truth.jsonl"
    stop, ready = asyncio.Event(), asyncio.Event()
    sim = asyncio.create_task(run_live(plant, 42, duration_s=None, truth_path=truth, stop=stop, ready=ready),
                              name="sim")
    machines = [m for _, m in plant.machines()]
    try:
        await asyncio.wait_for(ready.wait(), 20)
        handler = _Handler()
        async with Client(f"opc.tcp://127.0.0.1:{port}", timeout=10) as client:
            ids = {(m.id, s): m.signals[s].node or "" for m in machines for s in ("good", "scrap", "state")}
            nodes = [client.get_node(n) for n in ids.values()]
            sub = await client.create_subscription(50, handler)
            await sub.subscribe_data_change(nodes, queuesize=100)

            def enough() -> bool:
                return all(len(handler.seen[ids[(m.id, "good")]]) > WANT_CHANGES for m in machines)

            await wait_for(enough, DEADLINE_S, "counter changes over OPC UA")
            await sub.delete()
            ns = await client.get_namespace_array()
            temp = client.get_node(f"ns={ns.index('urn:example:plc')};s=fast-1.m1.Temp")
            assert isinstance(await temp.read_value(), float)
            # the counter variables have the types the plant's counter_bits call for
            vt = await client.get_node(ids[("m1", "good")]).read_data_type_as_variant_type()
            assert vt == ua.VariantType.Byte
            vt = await client.get_node(ids[("m3", "good")]).read_data_type_as_variant_type()
            assert vt == ua.VariantType.UInt32
    finally:
        stop.set()
        await asyncio.wait_for(sim, 20)

    ledger = read_ledger(truth)
    check_ledger_start(ledger, plant)
    wraps = 0
    for m in machines:
        for sig, good in (("good", True), ("scrap", False)):
            seen = handler.seen[ids[(m.id, sig)]]
            (t0, _), (t1, _) = seen[0], seen[-1]
            mod = 1 << (m.signals[sig].counter_bits or 32)
            counted = sum((b - a) % mod for (_, a), (_, b) in itertools.pairwise(seen))
            wraps += sum(1 for (_, a), (_, b) in itertools.pairwise(seen) if b < a)
            expected = parts_between(ledger, m.id, good, t0, t1)
            assert counted == len(expected), (m.id, sig)
            assert [t for t, _ in seen[1:]] == expected, (m.id, sig)
        state = handler.seen[ids[(m.id, "state")]]
        smap = m.signals["state"].map
        assert smap is not None
        got = [(t, smap[v]) for t, v in state[1:]]
        assert got == states_between(ledger, m.id, state[0][0], state[-1][0])
    assert wraps >= 1, "m1's 8-bit counter starting at 250 wraps"


async def test_opcua_port_in_use_is_reported(opcua_fast_plant: Callable[[int], Plant], tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        plant = opcua_fast_plant(s.getsockname()[1])
        ready = asyncio.Event()
        try:
            await asyncio.wait_for(run_live(plant, 1, duration_s=1, truth_path=tmp_path / "t.jsonl", ready=ready), 20)
        except OSError:
            pass
        else:
            raise AssertionError("a busy port must fail the start")
        assert not ready.is_set()


async def test_duration_covers_exactly_the_window(opcua_fast_plant: Callable[[int], Plant], tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    t0 = time.monotonic()
    await asyncio.wait_for(run_live(opcua_fast_plant(free_port()), 3, duration_s=1.5, truth_path=truth), 30)
    assert time.monotonic() - t0 < 15
    ledger = read_ledger(truth)
    start = ledger[0].t_ms
    assert all(start <= r.t_ms < start + 1500 for r in ledger)
    assert any(r.kind == "part" for r in ledger)


class _MqttRecorder:
    def __init__(self, host: str, port: int, topic: str) -> None:
        self.messages: dict[str, list[tuple[dict[str, Any], bool]]] = defaultdict(list)
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"simtest-sub-{time.time_ns()}")
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p=None: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages[msg.topic].append((json.loads(msg.payload), bool(msg.retain)))

    def get(self, topic: str) -> list[tuple[dict[str, Any], bool]]:
        with self._lock:
            return list(self.messages[topic])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_mqtt_subscriber_counts_what_the_ledger_says(
        mqtt_fast_plant: Callable[[str, int], tuple[Plant, str]], mosquitto_broker: Mosquitto, tmp_path: Path) -> None:
    plant, prefix = mqtt_fast_plant(mosquitto_broker.host, mosquitto_broker.port)
    truth = tmp_path / "truth.jsonl"
    stop, ready = asyncio.Event(), asyncio.Event()
    sim = asyncio.create_task(run_live(plant, 42, duration_s=None, truth_path=truth, stop=stop, ready=ready),
                              name="sim")
    machines = [m for _, m in plant.machines()]
    counts = {m.id: m.signals["good"].topic or "" for m in machines}
    states = {m.id: m.signals["state"].topic or "" for m in machines}
    rec: _MqttRecorder | None = None
    try:
        await asyncio.wait_for(ready.wait(), 20)
        # a subscriber that comes after the start gets the retained counts and state as its baseline
        rec = _MqttRecorder(mosquitto_broker.host, mosquitto_broker.port, f"{prefix}/#")
        await wait_for(lambda: all(len(rec.get(t)) > WANT_CHANGES for t in counts.values()), DEADLINE_S,
                       "counter changes over MQTT")
    finally:
        if rec is not None:
            rec.close()
        stop.set()
        await asyncio.wait_for(sim, 20)

    ledger = read_ledger(truth)
    check_ledger_start(ledger, plant)
    for m in machines:
        msgs = rec.get(counts[m.id])
        assert msgs[0][1], "the first message is the retained baseline"
        assert not any(retained for _, retained in msgs[1:])
        ts = [p["ts"] for p, _ in msgs]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)
        t0, t1 = ts[0], ts[-1]
        for field, good in (("good", True), ("scrap", False)):
            values = [p[field] for p, _ in msgs]
            counted = sum((b - a) % (1 << 16) for a, b in itertools.pairwise(values))
            assert counted == len(parts_between(ledger, m.id, good, t0, t1)), (m.id, field)
        assert [p["ts"] for p, _ in msgs[1:]] == [t for r in ledger if r.kind == "part" and r.machine == m.id
                                                   and t0 < (t := r.t_ms) <= t1]
        st = rec.get(states[m.id])
        assert st[0][1] and {"code", "reason", "ts"} <= set(st[0][0])
        smap = m.signals["state"].map
        assert smap is not None
        got = [(p["ts"], smap[p["code"]]) for p, _ in st[1:]]
        assert got == states_between(ledger, m.id, st[0][0]["ts"], st[-1][0]["ts"])
        assert all((p["reason"] == 0) == (smap[p["code"]] == "running") for p, _ in st)
