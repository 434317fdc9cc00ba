"""A PLC that publishes its machines' signals to an MQTT broker (paho-mqtt 2.x).

Signals that share a topic go out together as one JSON object per event, e.g. the counts
topic ``{"good": 1234, "scrap": 5, "ts": 1795766400000}``, with each signal under its
``field`` and the event time under the signal's ``time_field`` in its ``time_unit``. Counts,
state, reason and product topics are retained, so a collector that subscribes later gets the
current values at once (its baseline and the current state); gauge topics are not.

paho runs its network loop in its own thread (``loop_start``); ``publish`` is thread-safe and
never blocks, so ``apply`` can be called from the event loop. paho also owns reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from core.model import MEANINGFUL_SIGNALS
from core.plant import Plant, Signal
from simulators.model import Event, RawValue, iso_ms

log = logging.getLogger(__name__)


def time_value(t_ms: int, unit: str) -> int | float | str:
    if unit == "s":
        return t_ms / 1000
    if unit == "us":
        return t_ms * 1000
    if unit == "ns":
        return t_ms * 1_000_000
    if unit == "iso":
        return iso_ms(t_ms)
    return t_ms


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """Published, or nothing more to wait for. A QoS 1/2 message published while the broker
    was away carries "no connection" although paho keeps it and sends it after reconnecting;
    either way this side cannot wait for it any more."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return True


class _Topic:
    """One topic of one machine: the signals it carries and how it stamps time."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.fields: list[tuple[str, str]] = []  # (signal, field)
        self.times: dict[str, str] = {}  # time_field -> time_unit
        self.retain = False

    def add(self, name: str, sig: Signal) -> None:
        self.fields.append((name, sig.field or name))
        if sig.time_field:
            self.times.setdefault(sig.time_field, sig.time_unit)
        if name in MEANINGFUL_SIGNALS:
            self.retain = True

    def payload(self, registers: dict[str, RawValue], t_ms: int) -> bytes:
        obj: dict[str, Any] = {f: registers[s] for s, f in self.fields if s in registers}
        for tf, unit in self.times.items():
            obj[tf] = time_value(t_ms, unit)
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class MqttPlc:
    """The MQTT publisher for one MQTT source of the plant."""

    def __init__(self, plant: Plant, source_id: str) -> None:
        broker = plant.sources[source_id].mqtt
        if broker is None:
            raise ValueError(f"source '{source_id}' is not an MQTT source")
        self.source_id = source_id
        self.host, self.port, self.qos = broker.host, broker.port, broker.qos
        self._by_signal: dict[tuple[str, str], _Topic] = {}
        self._registers: dict[str, dict[str, RawValue]] = {}
        for _, m in plant.machines_of_source(source_id):
            topics: dict[str, _Topic] = {}
            for name, sig in m.signals.items():
                if not sig.topic:
                    continue
                tp = topics.setdefault(sig.topic, _Topic(sig.topic))
                tp.add(name, sig)
                self._by_signal[(m.id, name)] = tp
            self._registers[m.id] = {}
        client_id = broker.client_id or f"mieruka-sim-{source_id}-{os.getpid()}-{os.urandom(3).hex()}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=True)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        # while the broker is away paho keeps QoS 1/2 messages for later: bound that memory
        self.client.max_queued_messages_set(100_000)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._connected = threading.Event()
        self._pending: deque[mqtt.MQTTMessageInfo] = deque()
        self._running = False
        self.published = 0

    # paho calls these from its network thread
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.warning("MQTT simulator %s:%d refused the connection: %s", self.host, self.port, rc)
            return
        log.info("MQTT simulator connected to %s:%d (source %s)", self.host, self.port, self.source_id)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self._connected.clear()
        if self._running:
            log.warning("MQTT simulator lost %s:%d (%s); paho reconnects", self.host, self.port, rc)

    async def connect(self, timeout_s: float = 15.0) -> None:
        self._running = True
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        ok = await asyncio.to_thread(self._connected.wait, timeout_s)
        if not ok:
            await self.stop()
            raise ConnectionError(f"MQTT broker {self.host}:{self.port} (source '{self.source_id}') did not "
                                  f"accept a connection within {timeout_s:.0f} s")

    def apply(self, event: Event) -> None:
        if not event.raw:
            return
        regs = self._registers.get(event.machine)
        if regs is None:
            return
        touched: list[_Topic] = []
        for signal, value in event.raw:
            regs[signal] = value
            tp = self._by_signal.get((event.machine, signal))
            if tp is not None and tp not in touched:
                touched.append(tp)
        for tp in touched:
            info = self.client.publish(tp.topic, tp.payload(regs, event.t_ms), qos=self.qos, retain=tp.retain)
            self.published += 1
            self._pending.append(info)
        while self._pending and _settled(self._pending[0]):
            self._pending.popleft()

    def _wait_pending(self, timeout_s: float) -> int:
        end = time.monotonic() + timeout_s
        while self._pending:
            info = self._pending[0]
            left = end - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(min(left, 0.5))
            if _settled(info):
                self._pending.popleft()
        return len(self._pending)

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every message so far is delivered (QoS 1/2: acknowledged by the broker)."""
        left = await asyncio.to_thread(self._wait_pending, timeout_s)
        if left:
            log.warning("MQTT simulator: %d messages to %s:%d still unacknowledged after %.0f s", left,
                        self.host, self.port, timeout_s)

    async def stop(self) -> None:
        if not self._running:
            return
        with contextlib.suppress(Exception):
            await self.flush(5.0)
        self._running = False
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
