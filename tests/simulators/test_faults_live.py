"""Faults in live runs, read by independent clients (a plain asyncua client, a plain paho
subscriber — not the collector): their counts equal the ledger's across a counter rollover, a
PLC restart and a broker disconnect, and every fault is a ledger record."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from asyncua import Client, ua

from core.plant import Plant
from simulators.faults import parse_fault
from simulators.live import run_live
from tests.e2e.plants import fast_plant
from tests.support.ledger import part_counts, read_ledger
from tests.support.services import Mosquitto, free_port

RUN_S = 30.0


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def counted(readings: list[tuple[int, int | None]], bits: int) -> tuple[int, int, int]:
    """Sum of increments over a counter's readings ``(t_ms, value)``; a ``None`` value marks a PLC
    restart seen on the connection (the next value counts from 0). Returns (total, first_t, last_t):
    the first reading is the baseline."""
    total, last, restarted = 0, None, False
    for _, v in readings:
        if v is None:
            restarted = True
            continue
        if last is not None:
            total += v if restarted else (v - last) % (2**bits)
        restarted = False
        last = v
    times = [t for t, v in readings if v is not None]
    return total, times[0], times[-1]


def ledger_parts(ledger: Path, machine: str, good: bool, after_ms: int, upto_ms: int) -> int:
    """Parts in (after, upto] — the baseline reading is not production, the last reading is."""
    recs = [r for r in read_ledger(ledger) if r.get("kind") == "part" and r["machine"] == machine
            and r["good"] == good and after_ms < _ms(r["_t"]) <= upto_ms]
    return len(recs)


async def test_mqtt_counts_survive_rollover_and_disconnect(tmp_path: Path, mosquitto_broker: Mosquitto) -> None:
    prefix = f"fl-{uuid.uuid4().hex[:6]}"
    plant = fast_plant(free_port(), mosquitto_broker.port, prefix=prefix)
    plant = _only_line(plant, "mq")
    readings: dict[tuple[str, str], list[tuple[int, int | None]]] = defaultdict(list)
    lock = threading.Lock()
    sub_ready = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        machine = msg.topic.split("/")[2]
        body = json.loads(msg.payload)
        with lock:
            for sig in ("good", "scrap"):
                if sig in body:
                    readings[(machine, sig)].append((int(body["ts"]), int(body[sig])))

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"indep-{prefix}", clean_session=False)
    sub.on_message = on_message
    sub.on_connect = lambda c, *_: (c.subscribe(f"{prefix}/+/+/counts", qos=1), sub_ready.set())
    sub.connect("127.0.0.1", mosquitto_broker.port)
    sub.loop_start()
    ledger = tmp_path / "ledger.jsonl"
    try:
        assert sub_ready.wait(10)
        faults = [parse_fault("rollover"), parse_fault("disconnect@8s+3s")]
        await asyncio.wait_for(run_live(plant, 5, duration_s=RUN_S, truth_path=ledger, faults=faults), RUN_S + 60)
        # the publisher flushed before returning; wait for the subscriber to have everything
        await _wait(lambda: _quiet(readings, lock), 15, "the subscriber to go quiet")
    finally:
        sub.loop_stop()
        sub.disconnect()
    recs = read_ledger(ledger)
    kinds = [r["fault"] for r in recs if r.get("kind") == "fault"]
    assert kinds == ["rollover", "disconnect"]
    wrapped = False
    for _, m in plant.machines():
        for sig in ("good", "scrap"):
            with lock:
                rs = list(readings[(m.id, sig)])
            bits = m.signals[sig].counter_bits or 32
            total, first, last = counted(rs, bits)
            wrapped |= any(b[1] is not None and a[1] is not None and b[1] < a[1] for a, b in itertools.pairwise(rs))
            assert total == ledger_parts(ledger, m.id, sig == "good", first, last), (m.id, sig)
            assert total > 0
    assert wrapped, "no counter wrapped during the run"


async def test_opcua_counts_survive_rollover_and_restart(tmp_path: Path, mosquitto_broker: Mosquitto) -> None:
    port = free_port()
    plant = _only_line(fast_plant(port, mosquitto_broker.port), "ua")
    ledger = tmp_path / "ledger.jsonl"
    readings: dict[tuple[str, str], list[tuple[int, int | None]]] = defaultdict(list)
    nodes = {m.signals[s].node: (m.id, s) for _, m in plant.machines() for s in ("good", "scrap")}
    restarts = 0

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            dv = data.monitored_item.Value
            t = dv.SourceTimestamp or dv.ServerTimestamp
            readings[nodes[node.nodeid.to_string()]].append((_ms(t.replace(tzinfo=UTC)), int(val)))

    async def client_loop(stop_at: float) -> None:
        nonlocal restarts
        start_time = None
        while time.monotonic() < stop_at:
            client = Client(f"opc.tcp://127.0.0.1:{port}", timeout=2)
            try:
                await client.connect()
            except (TimeoutError, OSError, ua.UaError):
                await asyncio.sleep(0.2)
                continue
            try:
                st = await client.get_node(ua.NodeId(2257, 0)).read_value()
                if start_time is not None and st != start_time:
                    restarts += 1
                    for key in readings:
                        readings[key].append((0, None))
                start_time = st
                subscription = await client.create_subscription(100, Handler())
                await subscription.subscribe_data_change([client.get_node(n) for n in nodes], queuesize=1000)
                while time.monotonic() < stop_at:
                    await client.check_connection()
                    await asyncio.sleep(0.2)
            except (TimeoutError, OSError, ua.UaError, ConnectionError):
                pass
            finally:
                try:
                    await client.disconnect()
                except Exception:
                    pass

    faults = [parse_fault("rollover"), parse_fault("restart@10s+3s")]
    sim = asyncio.create_task(run_live(plant, 9, duration_s=RUN_S, truth_path=ledger, faults=faults))
    await client_loop(time.monotonic() + RUN_S + 2)
    await asyncio.wait_for(sim, 60)
    kinds = [r["fault"] for r in read_ledger(ledger) if r.get("kind") == "fault"]
    assert kinds == ["rollover", "restart"]
    assert restarts == 1, "the client saw no new ServerStatus.StartTime"
    for _, m in plant.machines():
        for sig in ("good", "scrap"):
            rs = readings[(m.id, sig)]
            total, first, last = counted(rs, m.signals[sig].counter_bits or 16)
            assert total == ledger_parts(ledger, m.id, sig == "good", first, last), (m.id, sig, rs)
    assert part_counts(read_ledger(ledger), datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)).good


def _only_line(plant: Plant, line_id: str) -> Plant:
    lines = [ln for ln in plant.lines if ln.id == line_id]
    used = {m.source for ln in lines for m in ln.machines}
    return plant.model_copy(update={"lines": lines, "sources": {k: v for k, v in plant.sources.items() if k in used}})


def _quiet(readings: dict[Any, list[Any]], lock: threading.Lock, _state: dict[str, Any] = {}) -> bool:  # noqa: B006
    with lock:
        n = sum(len(v) for v in readings.values())
    now = time.monotonic()
    if _state.get("n") != n:
        _state.update(n=n, since=now)
        return False
    return now - _state["since"] > 1.0


async def _wait(cond: Any, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)
