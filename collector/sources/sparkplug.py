"""Sparkplug B host side for one Edge Node: births, aliases, ``seq``, deaths (Eclipse Sparkplug 3.0).

:class:`SparkplugNode` is the protocol state of one Edge Node as a host application sees it, with
no I/O: :class:`~collector.sources.mqtt.MqttSource` hands it each message of the node's topics (on
the event loop, in arrival order) and gets back what the message means — samples, markers, and
whether to ask the node for a rebirth (``NCMD`` ``Node Control/Rebirth`` = true), which the
source publishes.

What the specification asks of a host, and how it is met here:

- **Births first.** Nothing of a node is understood before its ``NBIRTH`` (``seq`` 0, the
  ``bdSeq`` of its MQTT session), nor of a device before its ``DBIRTH``: a birth names the
  metrics, their datatypes and aliases. Births and data are QoS 0 and never retained, so a host
  that connects (or reconnects) while a node is up has missed them: on every connection the
  source asks for a rebirth, and data of a node or device not born (in this connection) is
  dropped and asks for one again (at most every ``rebirth_interval_s``). Counters are
  cumulative, so data dropped before a birth loses no count: the birth carries the current
  values, which the normalizer takes like any reading.
- **Aliases.** A birth may give a metric an ``alias``; data may then carry the alias without the
  name. Aliases are per node and device and live until the next birth. Data naming an alias or
  metric its birth did not declare asks for a rebirth.
- **seq.** Every message of a node but ``NDEATH`` carries ``seq``, +1 per message from 0 at
  ``NBIRTH``, wrapping after 255. A gap (a message lost or garbled on the way) is counted
  (``stats.seq_gaps``), logged once and answered with a rebirth request; the message itself is
  still read (its values are genuine readings), and the new births bring every current value,
  so what the lost message said is restored (counters: exactly; states: from the birth's time).
- **Deaths.** ``NDEATH`` (the node's MQTT Will, or sent before a clean disconnect) carries the
  ``bdSeq`` of the session it ends: one that matches the node's current birth makes every
  machine of the source ``offline`` (a :class:`~collector.sources.SourceOffline`) from the
  moment it arrived (its payload time is when the Will was registered, at the CONNECT); one
  of an older session (a death overtaken by the next birth) is ignored. The next ``NBIRTH`` is
  a :class:`~collector.sources.SourceOnline`. ``DDEATH`` of a device that had a ``DBIRTH``
  forgets that birth and makes the device's machine ``offline`` from the moment it arrived (a
  :class:`~collector.sources.MachinesOffline`; the node and its other devices stay up); its data
  is dropped (and a rebirth asked) until its next ``DBIRTH``, which is a
  :class:`~collector.sources.MachinesOnline` before the birth's samples (its state is stamped
  no earlier than the birth's arrival, so an unchanged old value does not erase the outage).
- **Time.** Each sample's time is its metric's ``timestamp`` (ms since the epoch), else the
  payload's, else when it arrived.

Input that cannot be used (bytes that are no protobuf: ``not_protobuf``; a value of the wrong
type: ``wrong_type``/``bad_value``; a metric without value: ``missing_field``; a bad timestamp:
``bad_time``; a birth without ``bdSeq``: ``bad_birth``; data without ``seq``: ``bad_seq``; an
alias or metric no birth declared: ``unknown_metric``) is reported through ``problem`` (a dead
letter) and skipped; the node goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from collector.sources import (
    BadValue,
    MachinesOffline,
    MachinesOnline,
    SourceItem,
    SourceOffline,
    SourceOnline,
    coerce_value,
)
from core import sparkplug as spb
from core.model import Sample, from_ns
from core.plant import MqttBroker, Signal

log = logging.getLogger(__name__)

NODE_TYPES = ("NBIRTH", "NDATA", "NDEATH")
DEVICE_TYPES = ("DBIRTH", "DDATA", "DDEATH")
_MAX_TIME_MS = 253_402_300_800_000  # year 10000

# problem(kind, message): a dead letter of the message being read
Problem = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class _Route:
    machine: str
    name: str
    signal: Signal


@dataclass
class _Device:
    """A device's birth: metric name by alias (the birth's aliases)."""

    by_alias: dict[int, str] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)


@dataclass
class Outcome:
    """What one message means: items to yield in order, and whether to ask for a rebirth."""

    items: list[SourceItem] = field(default_factory=list)
    rebirth: bool = False


@dataclass
class NodeStats:
    births: int = 0  # NBIRTHs taken
    device_births: int = 0
    deaths: int = 0  # NDEATHs of the current session taken (stale ones are not)
    stale_deaths: int = 0  # NDEATHs of an earlier session, ignored
    device_deaths: int = 0
    seq_gaps: int = 0
    rebirth_requests: int = 0
    dropped_unborn: int = 0  # data messages dropped because their node or device was not born


class SparkplugNode:
    """The host-side state of Edge Node ``edge_node_id`` in ``group_id`` for ``signals``
    (``(machine_id, signal_name, Signal)``; the machine id is the Sparkplug device id)."""

    def __init__(self, source_id: str, broker: MqttBroker, signals: Sequence[tuple[str, str, Signal]], *,
                 rebirth_interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if broker.group_id is None or broker.edge_node_id is None:
            raise ValueError(f"source '{source_id}': a Sparkplug B source needs group_id and edge_node_id")
        self.source_id = source_id
        self.group_id = broker.group_id
        self.edge_node_id = broker.edge_node_id
        self.stats = NodeStats()
        self._routes: dict[str, dict[str, _Route]] = {}  # device -> metric name -> route
        for machine, name, sig in signals:
            metric = sig.metric or name
            by_metric = self._routes.setdefault(machine, {})
            if metric in by_metric:
                raise ValueError(f"{machine}: signals '{by_metric[metric].name}' and '{name}' are both Sparkplug "
                                 f"metric '{metric}'; give one of them another 'metric'")
            by_metric[metric] = _Route(machine, name, sig)
        self._rebirth_interval_s = rebirth_interval_s
        self._clock = clock
        self._prefix = f"{spb.NAMESPACE}/{self.group_id}/"
        self._bd_seq: int | None = None  # of the node's current birth; None: not born (in this connection)
        self._next_seq: int | None = None
        self._node_aliases: dict[int, str] = {}
        self._devices: dict[str, _Device] = {}
        self._dead = False  # an NDEATH of the current session was taken and no NBIRTH since
        # plant devices made offline by a DDEATH and not born again since (kept across connections:
        # the machine stays offline in the store until its DBIRTH)
        self._dead_devices: set[str] = set()
        self._last_rebirth: float | None = None

    # ---- topics --------------------------------------------------------------------------
    @property
    def topics(self) -> list[str]:
        """The filters to subscribe to: the node's and its devices' births, data and deaths."""
        base = f"{self._prefix}{{}}/{self.edge_node_id}"
        return [base.format(t) for t in NODE_TYPES] + [base.format(t) + "/+" for t in DEVICE_TYPES]

    @property
    def command_topic(self) -> str:
        return spb.topic(self.group_id, "NCMD", self.edge_node_id)

    @staticmethod
    def rebirth_payload(now_ms: int) -> bytes:
        metric = spb.Metric(spb.REBIRTH, True, spb.DataType.Boolean, now_ms)
        return spb.encode(spb.Payload((metric,), now_ms))

    @property
    def born(self) -> bool:
        return self._bd_seq is not None

    @property
    def bd_seq(self) -> int | None:
        return self._bd_seq

    # ---- connection ------------------------------------------------------------------------
    def reset(self) -> Outcome:
        """A new connection to the broker: what the node said before is unknown now (births
        are never retained); ask it to be born again."""
        self._bd_seq = None
        self._next_seq = None
        self._node_aliases = {}
        self._devices = {}
        self._last_rebirth = None
        return self._ask(Outcome())

    def _ask(self, out: Outcome) -> Outcome:
        now = self._clock()
        if self._last_rebirth is None or now - self._last_rebirth >= self._rebirth_interval_s:
            self._last_rebirth = now
            self.stats.rebirth_requests += 1
            out.rebirth = True
        return out

    # ---- messages --------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes | bytearray, received: datetime, problem: Problem) -> Outcome:
        """What one message on one of :attr:`topics` means."""
        out = Outcome()
        parts = topic.split("/")
        if len(parts) not in (4, 5) or not topic.startswith(self._prefix) or parts[3] != self.edge_node_id:
            problem("unknown_topic", f"{self.source_id}: message on unexpected topic {topic!r}")
            return out
        kind = parts[2]
        device = parts[4] if len(parts) == 5 else None
        if (device is None) != (kind in NODE_TYPES) or kind not in NODE_TYPES + DEVICE_TYPES:
            problem("unknown_topic", f"{self.source_id}: message on unexpected topic {topic!r}")
            return out
        try:
            msg = spb.decode(bytes(payload))
        except ValueError as e:
            problem("not_protobuf", f"{self.source_id}: {kind} on {topic} is not a Sparkplug B payload: {e}")
            # a garbled message took a seq number: the next one shows the gap
            return out
        if kind == "NDEATH":
            return self._ndeath(msg, received, problem, out)
        if kind == "NBIRTH":
            return self._nbirth(msg, received, problem, out)
        if not self.born:
            self.stats.dropped_unborn += 1
            return self._ask(out)
        if not self._seq_ok(msg, kind, topic, problem):
            self._ask(out)
        if kind == "NDATA":
            for m in msg.metrics:
                if m.name is None and m.alias not in self._node_aliases:
                    problem("unknown_metric", f"{self.source_id}: NDATA names alias {m.alias}, which the NBIRTH "
                                             "did not declare; asking for a rebirth")
                    return self._ask(out)
            return out  # no plant signal lives on the node itself
        assert device is not None
        if kind == "DBIRTH":
            return self._dbirth(device, msg, received, problem, out)
        if kind == "DDEATH":
            if self._devices.pop(device, None) is not None:
                self.stats.device_deaths += 1
                if device in self._routes and device not in self._dead_devices:
                    self._dead_devices.add(device)
                    out.items.append(MachinesOffline(self.source_id, (device,), received, "Sparkplug DDEATH"))
            return out
        return self._ddata(device, msg, received, problem, out)

    def _seq_ok(self, msg: spb.Payload, kind: str, topic: str, problem: Problem) -> bool:
        expected = self._next_seq
        if msg.seq is None or not 0 <= msg.seq <= 255:
            problem("bad_seq", f"{self.source_id}: {kind} on {topic} has no seq (0-255); asking for a rebirth")
            return False
        self._next_seq = (msg.seq + 1) % 256
        if expected is not None and msg.seq != expected:
            # not a dead letter: the message itself is read; the ones before it are missing
            self.stats.seq_gaps += 1
            log.log(logging.WARNING if self.stats.seq_gaps == 1 else logging.DEBUG,
                    "%s: %s on %s has seq %d, expected %d: messages were lost; asking for a rebirth%s",
                    self.source_id, kind, topic, msg.seq, expected,
                    " (logged once; further gaps are counted)" if self.stats.seq_gaps == 1 else "")
            return False
        return True

    def _nbirth(self, msg: spb.Payload, received: datetime, problem: Problem, out: Outcome) -> Outcome:
        bd = _bd_seq(msg)
        if bd is None:
            problem("bad_birth", f"{self.source_id}: NBIRTH without a bdSeq metric; asking for a rebirth")
            return self._ask(out)
        self._bd_seq = bd
        self._next_seq = 1
        self._node_aliases = {m.alias: m.name for m in msg.metrics if m.alias is not None and m.name is not None}
        self._devices = {}  # the node's births that follow bring its devices
        self._last_rebirth = None  # the next loss may ask at once
        self.stats.births += 1
        if self._dead:
            self._dead = False
            out.items.append(SourceOnline(self.source_id, received))
        return out

    def _ndeath(self, msg: spb.Payload, received: datetime, problem: Problem, out: Outcome) -> Outcome:
        bd = _bd_seq(msg)
        if bd is None:
            problem("bad_death", f"{self.source_id}: NDEATH without a bdSeq metric is ignored")
            return out
        if self._bd_seq is not None and bd != self._bd_seq:
            self.stats.stale_deaths += 1  # the Will of a session that a newer birth replaced
            return out
        self.stats.deaths += 1
        self._bd_seq = None
        self._next_seq = None
        self._devices = {}
        if not self._dead:
            self._dead = True
            out.items.append(SourceOffline(self.source_id, received, f"Sparkplug NDEATH (bdSeq {bd})"))
        return out

    def _dbirth(self, device: str, msg: spb.Payload, received: datetime, problem: Problem,
                out: Outcome) -> Outcome:
        dev = _Device()
        for m in msg.metrics:
            if m.name is None:
                problem("bad_birth", f"{self.source_id}: DBIRTH of {device} has a metric without a name")
                continue
            dev.names.add(m.name)
            if m.alias is not None:
                dev.by_alias[m.alias] = m.name
        self._devices[device] = dev
        self.stats.device_births += 1
        if device in self._dead_devices:
            self._dead_devices.discard(device)
            out.items.append(MachinesOnline(self.source_id, (device,), received))
        self._samples(device, msg, msg.metrics, received, problem, out)
        return out

    def _ddata(self, device: str, msg: spb.Payload, received: datetime, problem: Problem, out: Outcome) -> Outcome:
        dev = self._devices.get(device)
        if dev is None:
            self.stats.dropped_unborn += 1
            return self._ask(out)
        named: list[spb.Metric] = []
        for m in msg.metrics:
            name = m.name if m.name is not None else dev.by_alias.get(m.alias) if m.alias is not None else None
            if name is None or name not in dev.names:
                what = f"metric {m.name!r}" if m.name is not None else f"alias {m.alias}"
                problem("unknown_metric", f"{self.source_id}: DDATA of {device} names {what}, which its DBIRTH "
                                          "did not declare; asking for a rebirth")
                self._ask(out)
                continue
            named.append(m if m.name is not None else spb.Metric(name, m.value, m.datatype, m.timestamp, m.alias,
                                                                  m.is_null))
        self._samples(device, msg, named, received, problem, out)
        return out

    def _samples(self, device: str, msg: spb.Payload, metrics: Sequence[spb.Metric], received: datetime,
                 problem: Problem, out: Outcome) -> None:
        routes = self._routes.get(device)
        if routes is None:
            return  # a device of the node that the plant does not collect
        for m in metrics:
            route = routes.get(m.name or "")
            if route is None:
                continue  # a metric the plant does not use
            if m.is_null:
                continue  # no value (yet): births may say so
            if m.value is None:
                problem("missing_field", f"{self.source_id}: {device} metric {m.name!r} carries no value")
                continue
            try:
                value = coerce_value(route.name, route.signal, m.value)
            except BadValue as e:
                problem(e.kind, f"{self.source_id}: {device}.{route.name} (metric {m.name!r}): {e.message}")
                continue
            ts = m.timestamp if m.timestamp is not None else msg.timestamp
            if ts is None:
                t = received
            elif 0 <= ts < _MAX_TIME_MS:
                t = from_ns(ts * 1_000_000)
            else:
                problem("bad_time", f"{self.source_id}: {device} metric {m.name!r} has timestamp {ts}, not a time")
                continue
            out.items.append(Sample(route.machine, route.name, value, t, "good", self.source_id))


def _bd_seq(msg: spb.Payload) -> int | None:
    for m in msg.metrics:
        if m.name == spb.BD_SEQ and isinstance(m.value, int) and not isinstance(m.value, bool):
            return m.value
    return None
