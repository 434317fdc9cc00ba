"""A PLC that publishes its machines' signals to an MQTT broker (paho-mqtt 2.x), as JSON or as
Sparkplug B, with faults on demand.

**JSON** (``payload: json``, the default). Topics are the plant's, used as given (the convention
is ISA-95 / Unified Namespace: ``<site>/<line>/<machine>/<group>``). Every message carries the
event time under the signals' ``time_field`` in their ``time_unit``.

- ``grouping: per_topic`` (default): one JSON object per topic and event, with every signal the
  topic carries under its ``field``: ``{"good": 1234, "scrap": 5, "ts": 1795766400000}``.
- ``grouping: per_signal``: one message per changed signal, on the topic the plant names, with
  that signal's field and time field only: ``{"good": 1234, "ts": ...}``. Two signals on one
  topic make two messages on it.

Counts, state, reason and product topics are retained, so a subscriber that comes later gets
the current values at once (its baseline and the current state); gauge topics are not. With
``per_signal`` a topic that carries several signals is not retained: the broker keeps one
message per topic, so it would keep only whichever signal changed last. QoS is the source's.

**Sparkplug B** (``payload: sparkplug``): the source is one Edge Node ``edge_node_id`` in group
``group_id``, and every machine a Device with the machine id as device id, its signals the
device's metrics (named by the signal's ``metric``, default the signal name). On every MQTT
connect the Will is an NDEATH carrying a new ``bdSeq`` (0..255, +1 per CONNECT); after the
connect: NBIRTH (``seq`` 0, that ``bdSeq``, ``Node Control/Rebirth`` = false), a DBIRTH per
device with every metric's current value (null where the PLC has none yet), then a DDATA per
event with the metrics it changed. ``seq`` goes up by one per message and wraps after 255; an
NCMD ``Node Control/Rebirth`` = true restarts it at 0 with new births and the same ``bdSeq``
(it changes only with a new MQTT session). Births and data go out at QoS 0 without retain and the
Will at QoS 1, as the specification requires, whatever the source's ``qos`` says. Births wait
until the initial values are applied (the first :meth:`flush`, or the first event after the
start instant), so they never show placeholders. Stopping publishes an NDEATH, then disconnects.

**Threads**: paho runs its network loop in its own thread (``loop_start``); its callbacks only
hand over to the event loop (``call_soon_threadsafe``) or flip a flag. Every publish, and every
piece of Sparkplug state (``seq``, births), happens on the event loop, so message order on the
wire is the order of ``apply`` calls. paho owns reconnection.

**Order across a reconnect** (JSON, QoS 1/2): while the connection is down, messages wait in a
backlog here, not in paho. After reconnecting, paho first re-sends what was in flight when the
connection dropped; the backlog goes out only once all of that is acknowledged, so a subscriber
sees each topic's values in order (a counter that went 104 → 105 never arrives as 105 → 104,
which a collector would take for a reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from core import sparkplug as spb
from core.model import MEANINGFUL_SIGNALS
from core.plant import Plant, Signal
from simulators.model import Event, RawValue, derive_seed, iso_ms

log = logging.getLogger(__name__)

MALFORMED_JSON_KINDS = ("not_json", "wrong_type", "missing_field")
MALFORMED_SPARKPLUG_KINDS = ("not_protobuf", "wrong_type", "missing_field")
BACKLOG_MAX = 100_000  # messages held while the broker is away (QoS 1/2); beyond it they are dropped
RECONNECT_DEADLINE_S = 30.0
_RETRY_S = 0.02


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


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """Delivered (QoS 0: written; QoS 1/2: acknowledged), or nothing more to wait for (paho
    refused it, e.g. its queue was full)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return True


class _Window:
    """A fault switched on for a while, on the monotonic clock."""

    def __init__(self) -> None:
        self.until = 0.0

    def start(self, duration_s: float | None) -> None:
        if duration_s is not None and duration_s < 0:
            raise ValueError(f"a duration cannot be negative, got {duration_s}")
        self.until = math.inf if duration_s is None else time.monotonic() + duration_s

    def stop(self) -> None:
        self.until = 0.0

    @property
    def active(self) -> bool:
        return time.monotonic() < self.until


# ---- JSON ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _JsonMsg:
    topic: str
    fields: dict[str, RawValue]
    times: dict[str, int | float | str]
    retain: bool


class _Topic:
    """``per_topic``: one topic of one machine, the signals it carries and how it stamps time."""

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

    def message(self, registers: dict[str, RawValue], t_ms: int) -> _JsonMsg:
        return _JsonMsg(self.topic, {f: registers[s] for s, f in self.fields if s in registers},
                        {tf: time_value(t_ms, unit) for tf, unit in self.times.items()}, self.retain)


@dataclass(frozen=True, slots=True)
class _Route:
    """``per_signal``: where one signal of one machine goes."""

    topic: str
    field: str
    time_field: str | None
    time_unit: str
    retain: bool

    def message(self, value: RawValue, t_ms: int) -> _JsonMsg:
        times = {self.time_field: time_value(t_ms, self.time_unit)} if self.time_field else {}
        return _JsonMsg(self.topic, {self.field: value}, times, self.retain)


def _times(changed_at: dict[str, int]) -> Callable[[str], int]:
    return lambda s: changed_at.get(s, 0)


def _wrong_type(value: RawValue) -> RawValue | bool:
    return False if isinstance(value, str) else "n/a"


def render_json(msg: _JsonMsg, malformed: str | None = None) -> bytes:
    """The payload of ``msg``, or a malformed one of kind ``malformed`` (see :meth:`MqttPlc.malformed`)."""
    if malformed == "wrong_type":
        fields: dict[str, Any] = {f: _wrong_type(v) for f, v in msg.fields.items()}
    elif malformed == "missing_field":
        fields = {}
    else:
        fields = dict(msg.fields)
    text = json.dumps({**fields, **msg.times}, ensure_ascii=False, separators=(",", ":"))
    if malformed == "not_json":
        text = text[: max(1, len(text) // 2)]  # a JSON object cut short is never valid JSON
    return text.encode("utf-8")


# ---- the publisher ------------------------------------------------------------------------------


class MqttPlc:
    """The MQTT publisher for one MQTT source of the plant (JSON or Sparkplug B, as the source says).

    Life cycle: ``await connect()``, ``apply(event)`` for every model event (from the event loop),
    ``await flush()`` when a caller needs everything so far delivered, ``await stop()``.

    Faults (for the live simulator's fault injection; none of them writes the ledger):
    :meth:`malformed`, :meth:`disconnect`, :meth:`silence`, :meth:`skew`, :meth:`end_faults`.
    Their windows run on the wall clock (``time.monotonic()``), from the call on.

    Counters: ``published`` (messages handed to paho), ``malformed_sent`` (per kind),
    ``suppressed`` (events not published during a silence), ``dropped`` (QoS 0 messages while
    the broker was away, or past ``BACKLOG_MAX``), ``births`` and ``rebirths`` (Sparkplug B),
    ``disconnects`` (simulated ones).
    """

    def __init__(self, plant: Plant, source_id: str, *, seed: int = 0, aliases: bool = False) -> None:
        broker = plant.sources[source_id].mqtt
        if broker is None:
            raise ValueError(f"source '{source_id}' is not an MQTT source")
        self.source_id = source_id
        self.host, self.port, self.qos = broker.host, broker.port, broker.qos
        self.sparkplug = broker.payload == "sparkplug"
        self.per_signal = broker.grouping == "per_signal"
        machines = [m for _, m in plant.machines_of_source(source_id)]
        self._registers: dict[str, dict[str, RawValue]] = {m.id: {} for m in machines}
        self._changed_at: dict[str, dict[str, int]] = {m.id: {} for m in machines}
        self._dirty: dict[str, set[str]] = {m.id: set() for m in machines}
        self._signals: dict[str, frozenset[str]] = {m.id: frozenset(m.signals) for m in machines}
        self._topic_of: dict[tuple[str, str], _Topic] = {}
        self._route_of: dict[tuple[str, str], _Route] = {}
        self._devices: dict[str, dict[str, tuple[str, spb.DataType]]] = {}
        # Sparkplug B aliases (``aliases=True``): births name each metric and give it an alias
        # (1, 2, ... per device), data messages carry the alias alone, as the specification allows
        self.aliases = aliases
        self._alias: dict[tuple[str, str], int] = {}
        # counters as the PLC shows them: (event value - offset) mod 2^bits; a restart of a
        # Sparkplug B node sets the offset of its non-retentive counters (they count from 0)
        self._counter_bits: dict[tuple[str, str], int] = {}
        self._retentive: set[tuple[str, str]] = set()
        self._raw: dict[tuple[str, str], int] = {}
        self._offset: dict[tuple[str, str], int] = {}
        self.group_id = broker.group_id or ""
        self.edge_node_id = broker.edge_node_id or ""
        if self.sparkplug:
            for m in machines:
                metrics: dict[str, tuple[str, spb.DataType]] = {}
                by_metric: dict[str, str] = {}
                for name, sig in m.signals.items():
                    metric = sig.metric or name
                    if metric in by_metric:
                        raise ValueError(f"machine '{m.id}': signals '{by_metric[metric]}' and '{name}' are both "
                                         f"Sparkplug metric '{metric}'; give one of them another 'metric'")
                    by_metric[metric] = name
                    metrics[name] = (metric, spb.datatype_of(name, sig))
                    self._alias[(m.id, name)] = len(by_metric)
                    if sig.counter_bits is not None:
                        self._counter_bits[(m.id, name)] = sig.counter_bits
                        if sig.retentive:
                            self._retentive.add((m.id, name))
                self._devices[m.id] = metrics
        elif self.per_signal:
            users = Counter(sig.topic for m in machines for sig in m.signals.values() if sig.topic)
            for m in machines:
                for name, sig in m.signals.items():
                    if sig.topic:
                        retain = name in MEANINGFUL_SIGNALS and users[sig.topic] == 1
                        self._route_of[(m.id, name)] = _Route(sig.topic, sig.field or name, sig.time_field,
                                                              sig.time_unit, retain)
        else:
            for m in machines:
                topics: dict[str, _Topic] = {}
                for name, sig in m.signals.items():
                    if sig.topic:
                        tp = topics.setdefault(sig.topic, _Topic(sig.topic))
                        tp.add(name, sig)
                        self._topic_of[(m.id, name)] = tp

        client_id = broker.client_id or f"mieruka-sim-{source_id}-{os.getpid()}-{os.urandom(3).hex()}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=True)
        tls = broker.ssl_context()  # the plant's tls: the same CA, and the client pair if given
        if tls is not None:
            self.client.tls_set_context(tls)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.resolve_password())
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        # bounds what paho holds (in flight, and queued behind its in-flight window)
        self.client.max_queued_messages_set(BACKLOG_MAX)
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        if self.sparkplug:
            self.client.on_message = self._on_message

        # shared with paho's thread
        self._connected = threading.Event()
        self._gate = threading.Event()  # cleared while disconnect() keeps the connection down
        self._gate.set()
        self._session = 0  # bumped by paho's thread on every connect and disconnect
        self._online = False
        self._bd_seq = -1
        # event loop only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._outage = False
        self._pending: deque[mqtt.MQTTMessageInfo] = deque()
        self._backlog: deque[tuple[str, bytes, int, bool]] = deque()
        self._drain_handle: asyncio.TimerHandle | None = None
        self._silence_handle: asyncio.TimerHandle | None = None
        self._silence_open = False
        self._seq = 0
        self._born = False
        self._seed_t: int | None = None
        self._seeded = False
        self._rng = random.Random(derive_seed(seed, "mqtt-malformed", source_id))
        self._malformed_rate = 0.0
        self._malformed = _Window()
        self._silence = _Window()
        self._skew = _Window()
        self._skew_ms = 0
        self._dropped_logged = False

        self.published = 0
        self.malformed_sent: Counter[str] = Counter()
        self.suppressed = 0
        self.dropped = 0
        self.births = 0
        self.rebirths = 0
        self.disconnects = 0
        self.restarts = 0
        self.lost = 0  # Sparkplug B data messages lost on purpose (seq_gap)
        self._lose = 0

    # ---- state -----------------------------------------------------------------------------
    @property
    def online(self) -> bool:
        """Connected, and (Sparkplug B) the births of this session are out or not yet due."""
        return self._online

    @property
    def bd_seq(self) -> int | None:
        """Sparkplug B: the ``bdSeq`` of the current (or last) MQTT session; None before the first."""
        return self._bd_seq if self._bd_seq >= 0 else None

    def _topic(self, message_type: str, device: str | None = None) -> str:
        return spb.topic(self.group_id, message_type, self.edge_node_id, device)

    def _ndeath(self, bd_seq: int) -> bytes:
        # only the bdSeq metric, no seq (the specification's NDEATH)
        return spb.encode(spb.Payload((spb.Metric(spb.BD_SEQ, bd_seq, spb.DataType.Int64, wall_ms()),)))

    # ---- paho's thread: hand over, never block (except the outage gate) ---------------------
    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed during shutdown
            loop.call_soon_threadsafe(fn, *args)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        # disconnect() holds the reconnection here until its outage is over
        self._gate.wait()
        if self.sparkplug:
            # a new MQTT session: a new bdSeq in the Will of this CONNECT, which its NBIRTH repeats
            self._bd_seq = (self._bd_seq + 1) % 256
            client.will_set(self._topic("NDEATH"), self._ndeath(self._bd_seq), qos=1, retain=False)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.warning("MQTT simulator %s:%d refused the connection: %s", self.host, self.port, rc)
            return
        self._session += 1
        if self.sparkplug:
            client.subscribe(self._topic("NCMD"), qos=1)  # before the births, as the specification asks
        self._to_loop(self._went_online, self._session)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self._online = False
        self._session += 1
        self._connected.clear()
        if self._running and not self._outage:
            log.warning("MQTT simulator lost %s:%d (%s); paho reconnects", self.host, self.port, rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._to_loop(self._on_command, msg.topic, bytes(msg.payload))

    # ---- event loop: connection ---------------------------------------------------------------
    def _went_online(self, session: int) -> None:
        if not self._running or session != self._session or not self.client.is_connected():
            return  # a connection that is already gone again
        self._online = True
        log.info("MQTT simulator connected to %s:%d (source %s%s)", self.host, self.port, self.source_id,
                 f", Sparkplug B bdSeq {self._bd_seq}" if self.sparkplug else "")
        if self.sparkplug:
            self._born = False
            self._birth_if_due()
        else:
            self._drain()

    async def connect(self, timeout_s: float = 15.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        ok = await asyncio.to_thread(self._connected.wait, timeout_s)
        if not ok:
            await self.stop()
            raise ConnectionError(f"MQTT broker {self.host}:{self.port} (source '{self.source_id}') did not "
                                  f"accept a connection within {timeout_s:.0f} s")

    # ---- event loop: publishing ---------------------------------------------------------------
    def apply(self, event: Event) -> None:
        """Write ``event``'s registers and publish what changed (from the event loop's thread)."""
        if not event.raw:
            return
        regs = self._registers.get(event.machine)
        if regs is None:
            return
        self._end_silence_if_over()
        if self.sparkplug and not self._seeded:
            # the run's snapshot is every event at the first instant; births wait until it is complete
            if self._seed_t is None:
                self._seed_t = event.t_ms
            elif event.t_ms > self._seed_t:
                self._seeded = True
                self._birth_if_due()
        known, changed_at = self._signals[event.machine], self._changed_at[event.machine]
        changed: list[str] = []
        for signal, value in event.raw:
            if signal in known:
                bits = self._counter_bits.get((event.machine, signal))
                if bits is not None and isinstance(value, int):
                    self._raw[(event.machine, signal)] = value
                    value = (value - self._offset.get((event.machine, signal), 0)) % (1 << bits)
                regs[signal] = value
                changed_at[signal] = event.t_ms
                if signal not in changed:
                    changed.append(signal)
        if not changed:
            return
        if self._silence.active:
            self._dirty[event.machine].update(changed)
            self.suppressed += 1
            return
        t = event.t_ms
        self._emit(event.machine, changed, lambda _: t)

    def _emit(self, machine: str, signals: list[str], t_of: Callable[[str], int]) -> None:
        regs = self._registers[machine]
        if self.sparkplug:
            if self._online and self._born:
                self._ddata(machine, signals, t_of)
            return
        if self.per_signal:
            for s in signals:
                route = self._route_of.get((machine, s))
                if route is not None and s in regs:
                    self._send_json(route.message(regs[s], self._stamp(t_of(s))))
            return
        topics: dict[_Topic, int] = {}
        for s in signals:
            tp = self._topic_of.get((machine, s))
            if tp is not None:
                topics[tp] = max(topics.get(tp, 0), t_of(s))
        for tp, t in topics.items():
            self._send_json(tp.message(regs, self._stamp(t)))

    def _stamp(self, t_ms: int) -> int:
        return max(0, t_ms + self._skew_ms) if self._skew.active else t_ms

    def _draw_malformed(self) -> str | None:
        if self._malformed_rate <= 0 or not self._malformed.active or self._rng.random() >= self._malformed_rate:
            return None
        kinds = MALFORMED_SPARKPLUG_KINDS if self.sparkplug else MALFORMED_JSON_KINDS
        kind = kinds[self._rng.randrange(len(kinds))]
        self.malformed_sent[kind] += 1
        return kind

    def _send_json(self, msg: _JsonMsg) -> None:
        payload = render_json(msg, self._draw_malformed())
        if self._online and not self._backlog:
            self._publish(msg.topic, payload, self.qos, msg.retain)
        elif self.qos > 0 and len(self._backlog) < BACKLOG_MAX:
            self._backlog.append((msg.topic, payload, self.qos, msg.retain))
        else:
            self.dropped += 1
            if not self._dropped_logged:
                self._dropped_logged = True
                log.warning("MQTT simulator %s: dropping messages while %s:%d is away (%s)", self.source_id,
                            self.host, self.port, "QoS 0" if self.qos == 0 else f"more than {BACKLOG_MAX} held")

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # the connection dropped under us (paho has not told us yet). paho keeps a QoS 1/2
            # message and sends it after reconnecting: track it until acknowledged, since
            # is_published() refuses a non-zero rc, and hold what follows in the backlog
            self._online = False
            if qos > 0:
                info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        elif info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
        self.published += 1
        self._pending.append(info)
        while self._pending and _settled(self._pending[0]):
            self._pending.popleft()

    def _drain(self) -> None:
        """Publish the backlog once the broker has acknowledged everything paho re-sent."""
        self._drain_handle = None
        if not self._backlog or not self._online:
            return  # _went_online drains once the connection is back
        if any(not _settled(i) for i in self._pending):
            if self._loop is not None:
                self._drain_handle = self._loop.call_later(_RETRY_S, self._drain)
            return
        n = len(self._backlog)
        while self._backlog and self._online:
            self._publish(*self._backlog.popleft())
        log.info("MQTT simulator %s: published %d messages held while %s:%d was away", self.source_id, n,
                 self.host, self.port)

    # ---- Sparkplug B ------------------------------------------------------------------------
    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        return seq

    def _metric(self, machine: str, signal: str, t_ms: int, *, birth: bool = False) -> spb.Metric:
        metric, dt = self._devices[machine][signal]
        value = self._registers[machine].get(signal)
        ts = self._stamp(t_ms)
        alias = self._alias[(machine, signal)] if self.aliases else None
        name = metric if birth or alias is None else None  # with aliases, data names the alias alone
        if value is None:
            return spb.Metric(name, None, dt, ts, alias, is_null=True)
        if dt == spb.DataType.Double:
            return spb.Metric(name, float(value), dt, ts, alias)
        if dt == spb.DataType.String:
            return spb.Metric(name, str(value), dt, ts, alias)
        return spb.Metric(name, int(value), dt, ts, alias)

    def _birth_if_due(self) -> None:
        if self._online and self._seeded and not self._born:
            self._birth()

    def _birth(self) -> None:
        """NBIRTH (seq 0, this session's bdSeq) and a DBIRTH per device with every metric's value."""
        now = wall_ms()
        self._seq = 0
        node = (spb.Metric(spb.BD_SEQ, self._bd_seq, spb.DataType.Int64, self._stamp(now)),
                spb.Metric(spb.REBIRTH, False, spb.DataType.Boolean, self._stamp(now)))
        self._publish(self._topic("NBIRTH"), spb.encode(spb.Payload(node, self._stamp(now), self._next_seq())),
                      0, False)
        for machine, metrics in self._devices.items():
            changed_at = self._changed_at[machine]
            ms = sorted((self._metric(machine, s, changed_at.get(s, now), birth=True) for s in metrics),
                        key=lambda m: m.timestamp or 0)  # chronological order, as births must be
            payload = spb.Payload(tuple(ms), self._stamp(now), self._next_seq())
            self._publish(self._topic("DBIRTH", machine), spb.encode(payload), 0, False)
            self._dirty[machine].clear()  # the birth carries every current value
        self._born = True
        self.births += 1

    def _ddata(self, machine: str, signals: list[str], t_of: Callable[[str], int]) -> None:
        metrics = sorted((self._metric(machine, s, t_of(s)) for s in signals
                          if s in self._devices[machine]), key=lambda m: m.timestamp or 0)
        if not metrics:
            return
        payload = spb.Payload(tuple(metrics), max(m.timestamp or 0 for m in metrics), self._next_seq())
        if self._lose > 0:
            # lost on the way (seq_gap): its seq number is used, the message never arrives
            self._lose -= 1
            self.lost += 1
            return
        kind = self._draw_malformed()
        if kind is None:
            data = spb.encode(payload, datatypes=False)  # data messages should not repeat datatypes
        elif kind == "not_protobuf":
            data = spb.truncated(payload)
        elif kind == "wrong_type":
            wrong = tuple(spb.Metric(m.name, True, spb.DataType.Boolean, m.timestamp)
                          if m.datatype == spb.DataType.String else
                          spb.Metric(m.name, "n/a", spb.DataType.String, m.timestamp) for m in metrics)
            data = spb.encode(spb.Payload(wrong, payload.timestamp, payload.seq))
        else:  # missing_field: metrics without a value
            bare = tuple(spb.Metric(m.name, None, None, m.timestamp) for m in metrics)
            data = spb.encode(spb.Payload(bare, payload.timestamp, payload.seq))
        self._publish(self._topic("DDATA", machine), data, 0, False)

    def _on_command(self, topic: str, data: bytes) -> None:
        try:
            payload = spb.decode(data)
        except ValueError as e:
            log.warning("MQTT simulator %s: NCMD on %s is not a Sparkplug B payload: %s", self.source_id, topic, e)
            return
        if any(m.name == spb.REBIRTH and m.value is True for m in payload.metrics):
            self.rebirths += 1
            log.info("MQTT simulator %s: rebirth requested (%s)", self.source_id, topic)
            if self._online and self._running:
                self._seeded = True
                self._birth()

    # ---- faults -----------------------------------------------------------------------------
    def seq_gap(self, messages: int = 1) -> None:
        """Sparkplug B: lose the next ``messages`` data messages on the way (their ``seq`` numbers
        are used, nothing is published), so a host sees a gap in ``seq``. Counters are cumulative:
        the next message, or the births a host asks for, carry every part made meanwhile."""
        if not self.sparkplug:
            raise ValueError(f"MQTT simulator {self.source_id}: seq_gap is a Sparkplug B fault")
        if messages < 1:
            raise ValueError(f"messages must be at least 1, got {messages}")
        self._lose += messages
        log.info("MQTT simulator %s: losing the next %d data messages", self.source_id, messages)

    async def restart(self, down_s: float) -> None:
        """Sparkplug B: the edge node restarts. Its connection drops without a DISCONNECT (the
        broker publishes its NDEATH), its non-retentive counters are set to 0 and count from
        there, and after ``down_s`` seconds it connects again with the next ``bdSeq`` and new
        births. The model runs on meanwhile: after the restart a non-retentive counter shows
        exactly the parts made since the restart began (modulo its width)."""
        if not self.sparkplug:
            raise ValueError(f"MQTT simulator {self.source_id}: restart is a Sparkplug B edge node fault")
        for key in self._counter_bits:
            if key not in self._retentive:
                machine, signal = key
                self._offset[key] = self._raw.get(key, 0)
                self._registers[machine][signal] = 0
                self._changed_at[machine][signal] = wall_ms()
        self.restarts += 1
        log.info("MQTT simulator %s: edge node restart, away for %.1f s", self.source_id, down_s)
        await self.disconnect(down_s)

    def malformed(self, rate: float, duration_s: float | None = None) -> None:
        """From now on, for ``duration_s`` seconds (None: until called again), replace about
        ``rate`` (0–1) of the data messages by malformed ones, a kind drawn evenly for each
        (seeded: the same seed gives the same draws):

        - JSON: ``not_json`` (the text cut short), ``wrong_type`` (every signal field the string
          "n/a", the product code ``false``; time fields intact), ``missing_field`` (only the
          time fields).
        - Sparkplug B (DDATA only; births stay valid): ``not_protobuf`` (cut short),
          ``wrong_type`` (metrics as String "n/a", the product as Boolean), ``missing_field``
          (metrics without a value). Each still takes a ``seq`` number, as a message garbled on
          its way would: a host sees the gap.

        The real message is not sent; later messages carry the registers again (counters are
        cumulative, so a lost counter message loses no count). Counted in ``malformed_sent``.
        ``malformed(0)`` ends it."""
        if not 0 <= rate <= 1:
            raise ValueError(f"rate is a fraction from 0 to 1, got {rate}")
        self._malformed_rate = rate
        if rate == 0:
            self._malformed.stop()
        else:
            self._malformed.start(duration_s)
        log.info("MQTT simulator %s: %s", self.source_id,
                 f"{rate:.0%} of messages malformed" + (f" for {duration_s:g} s" if duration_s is not None else "")
                 if rate else "malformed messages off")

    def silence(self, duration_s: float | None = None) -> None:
        """Publish nothing for ``duration_s`` seconds (None: until ``silence(0)``) while the
        broker connection stays up (a stalled gateway). When it ends, every signal that changed
        meanwhile is published once with its current value, stamped with the time it last
        changed: late data, nothing invented (JSON: per topic or per signal as configured;
        Sparkplug B: one DDATA per device). Sparkplug births (a connect, a rebirth request)
        still go out during a silence."""
        if duration_s == 0:
            self._silence.stop()
            self._end_silence_if_over()
            return
        self._silence.start(duration_s)
        self._silence_open = True
        if self._silence_handle is not None:
            self._silence_handle.cancel()
            self._silence_handle = None
        if duration_s is not None and self._loop is not None:
            self._silence_handle = self._loop.call_later(duration_s + 0.001, self._end_silence_if_over)
        log.info("MQTT simulator %s: silent%s", self.source_id,
                 f" for {duration_s:g} s" if duration_s is not None else "")

    def _end_silence_if_over(self) -> None:
        if not self._silence_open or self._silence.active:
            return
        self._silence_open = False
        self._silence_handle = None
        n = 0
        for machine, dirty in self._dirty.items():
            if dirty:
                changed_at = self._changed_at[machine]
                signals = sorted(dirty, key=lambda s: changed_at.get(s, 0))
                dirty.clear()
                self._emit(machine, signals, _times(changed_at))
                n += len(signals)
        log.info("MQTT simulator %s: silence over, %d changed signals published", self.source_id, n)

    def skew(self, seconds: float, duration_s: float | None = None) -> None:
        """Shift every time this publisher writes (JSON time fields; Sparkplug B payload and
        metric timestamps) by ``seconds`` (positive: ahead, negative: behind) for ``duration_s``
        seconds (None: until ``skew(0)``): a PLC whose clock is off."""
        self._skew_ms = round(seconds * 1000)
        if self._skew_ms == 0:
            self._skew.stop()
        else:
            self._skew.start(duration_s)
        log.info("MQTT simulator %s: clock %+g s%s", self.source_id, seconds,
                 f" for {duration_s:g} s" if duration_s is not None and seconds else "")

    def end_faults(self) -> None:
        """End malformed messages, a silence (with its late data) and a skew now."""
        self.malformed(0)
        self.skew(0)
        self.silence(0)

    async def disconnect(self, down_s: float) -> None:
        """Drop the broker connection as a network fault would, stay away ``down_s`` seconds,
        reconnect, and return once connected again (``ConnectionError`` if that takes more than
        ``RECONNECT_DEADLINE_S`` past ``down_s``). The socket is closed without an MQTT
        DISCONNECT, so the broker publishes the Will (Sparkplug B: the NDEATH). paho reconnects
        no sooner than its reconnect delay (1 s), so outages shorter than that last about 1 s.

        What a subscriber loses: JSON at QoS 1/2 — nothing: what was in flight at the drop
        paho re-sends, what is published meanwhile waits here, and all of it goes out after
        reconnecting in the original order (QoS 1 may deliver a message in flight at the drop
        twice). JSON at QoS 0 — everything published while away (counted in ``dropped``).
        Sparkplug B — no message while away (a session's seq cannot go on in the next one); the
        new session has the next bdSeq and its births carry the current values, so counters
        (cumulative) lose no count, only the steps in between."""
        if down_s < 0:
            raise ValueError(f"down_s cannot be negative, got {down_s}")
        if not self._running:
            raise RuntimeError("the MQTT simulator is not connected; call connect() first")
        self.disconnects += 1
        self._outage = True
        self._gate.clear()
        self._online = False  # from here on, messages wait in the backlog (or are dropped)
        log.warning("MQTT simulator %s: dropping the connection to %s:%d for %g s", self.source_id, self.host,
                    self.port, down_s)
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            # paho's thread sees the connection end and starts reconnecting, which
            # _on_pre_connect holds until the gate opens
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        try:
            try:
                await asyncio.sleep(down_s)
            finally:
                self._gate.set()  # cancelled too: paho reconnects on its own
            end = time.monotonic() + RECONNECT_DEADLINE_S
            while not self._online:
                if time.monotonic() > end or not self._running:
                    raise ConnectionError(f"MQTT simulator {self.source_id}: not reconnected to {self.host}:"
                                          f"{self.port} within {RECONNECT_DEADLINE_S:.0f} s after the outage")
                await asyncio.sleep(_RETRY_S)
        finally:
            self._outage = False
        log.info("MQTT simulator %s: reconnected after the outage", self.source_id)

    # ---- flush / stop -----------------------------------------------------------------------
    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every message so far is delivered (QoS 1/2: acknowledged by the broker),
        including those held while the broker was away. Sparkplug B: first publishes the births
        if they are still due (the initial values are in by now)."""
        if self.sparkplug and not self._seeded:
            self._seeded = True
            self._birth_if_due()
        self._end_silence_if_over()
        end = time.monotonic() + timeout_s
        while True:
            while self._pending and _settled(self._pending[0]):
                self._pending.popleft()
            left = sum(1 for i in self._pending if not _settled(i)) + len(self._backlog)
            if not left:
                return
            if time.monotonic() >= end:
                log.warning("MQTT simulator: %d messages to %s:%d still undelivered after %.0f s", left,
                            self.host, self.port, timeout_s)
                return
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if not self._running:
            return
        self._gate.set()
        with contextlib.suppress(Exception):
            await self.flush(5.0)
        self._running = False
        for handle in (self._drain_handle, self._silence_handle):
            if handle is not None:
                handle.cancel()
        if self.sparkplug and self.client.is_connected():
            # an intentional disconnect: NDEATH first, since the broker drops the Will on DISCONNECT
            info = self.client.publish(self._topic("NDEATH"), self._ndeath(self._bd_seq), qos=1)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, 5.0)
        self._online = False
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
