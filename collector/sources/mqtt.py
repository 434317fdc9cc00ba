"""MQTT source: paho-mqtt 2.x in its own network thread, samples out through asyncio.

    async with MqttSource("broker", plant.sources["broker"].mqtt, signals) as src:
        async for sample in src:
            ...

paho calls back from its network thread; ``on_message`` only appends the raw message to an
*unbounded* inbox (a bounded one would have to block paho's thread or drop, and neither is
acceptable; backpressure belongs to the durable spool that comes later) and wakes the event
loop with ``loop.call_soon_threadsafe`` only when the consumer waits for mail: a burst of
messages costs one wake-up. Payloads are parsed on the event loop, in ``__anext__``.

One JSON object may carry several signals: every signal whose ``field`` is present in it
yields one sample. Malformed payloads are counted per kind in ``stats.errors`` (``not_json``,
``not_object``, ``missing_field``, ``wrong_type``, ``bad_value``, ``missing_time``,
``bad_time``), logged once per kind, and skipped; the source goes on.

Reconnection is paho's (``reconnect_delay_set`` caps it, at a scale each source draws once
between 0.5 and 1, since paho's own doubling has no jitter); every (re)connect subscribes again.
A source that cannot work fails loudly instead of sitting connected to nothing: a topic filter
that is not a valid MQTT filter is refused when the source is made (``ValueError``); a
subscription the broker refuses, an exception in one of our paho callbacks, or paho's network
thread ending while the source is open make ``__anext__`` raise
:class:`~collector.sources.SourceFailed` with the reason (``mieruka collect`` then exits 1). A
payload that makes parsing raise anything (JSON nested too deeply, ...) is a dead letter
(``not_json`` or ``parse_failed``), never an exception out of the source.
With a client id (argument or ``client_id`` in the plant) the session is persistent
(``clean_session=False``), so the broker queues QoS 1/2 messages while we are away; without
one, paho picks a random id and the session is clean.

Acknowledgement after durability: with QoS 1/2 the client runs paho's ``manual_ack``. After
each parsed burst the source yields an :class:`~collector.sources.AckPoint`; the pipeline hands
its token back to :meth:`MqttSource.ack` once the facts of those messages are committed to the
spool, and only then does paho send the PUBACKs. A message whose connection was lost before its
ack is not acked on the new connection: the broker re-delivers it (persistent session) and the
normalizer takes the duplicate as no change. The broker sends at most its in-flight window
(Mosquitto ``max_inflight_messages``) of unacknowledged messages, so the spool's commit latency
bounds the rate: raise that window for busy brokers.

Outages: every connection is announced with a :class:`~collector.sources.SourceOnline`. A
*clean* session (no client id) loses what is published while we are away, so a lost or failed
connection yields one :class:`~collector.sources.SourceOffline` per outage (its machines go
``offline``). A persistent session does not: the broker keeps the messages for us and they
arrive, late but complete, after the reconnect.

Sparkplug B (``payload: sparkplug``): the source subscribes to its edge node's births, data and
deaths instead of the signals' topics and hands each message to a
:class:`~collector.sources.sparkplug.SparkplugNode` (births, aliases, ``seq``, ``bdSeq``), which
says what it means; the source publishes the node's rebirth requests (``NCMD``). Everything else
(connection markers, acknowledgement after durability, dead letters) is as for JSON.

Malformed input goes to ``dead_letters`` (a :class:`collector.deadletter.DeadLetters`) with
its raw payload and reason when one is given (it is acked like any other message: its reason
and bytes are kept there, a re-delivery would fail the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from collector.sources import (
    AckPoint,
    BadValue,
    DeadLetterSink,
    OncePerKind,
    SampleBatch,
    SourceFailed,
    SourceItem,
    SourceOffline,
    SourceOnline,
    SourceStats,
    coerce_value,
)
from collector.sources.sparkplug import Outcome, SparkplugNode
from core.model import Quality, Sample, from_ns, to_ns
from core.plant import MqttBroker, Signal, mqtt_topic_filter_problem

log = logging.getLogger(__name__)

_Row = tuple[str, str, float | int | str, int, Quality]  # a SampleBatch row
_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_LOGIN_REFUSED = frozenset({"Not authorized", "Bad user name or password"})  # CONNACK reasons of a login
_ALIVE_CHECK_S = 1.0  # how often a waiting source checks that paho's network thread still runs


@dataclass(frozen=True, slots=True)
class _NewSession:
    """Inbox marker (paho's thread): a connection began; Sparkplug B node state starts over."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2) and the message id
_READ_AHEAD = 1 << 16  # bytes asked of the socket at once
_PACKETS_PER_READ = 512  # packets paho parses from the read-ahead buffer before it looks at writes again


class _ReadAhead:
    """paho's socket, read ahead. paho reads every packet with three ``recv`` calls (command
    byte, remaining length, body) after a ``select``; draining a backlog that is most of its
    time (a bare subscriber: ~30 µs a message, 40 % of it system time). This reads up to 64 KiB
    at once and serves paho's small reads from memory; :meth:`pending` tells paho's loop that
    bytes are buffered (paho asks TLS sockets the same), so it does not wait in ``select`` for
    data that has already arrived. Everything else is the socket's."""

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            data: bytes = self._sock.recv(max(n, _READ_AHEAD))  # BlockingIOError etc. reach paho as before
            if len(data) <= n:
                return data
            self._buf, self._pos = data, n
            return data[:n]
        end = pos + n
        self._pos = end
        return buf[pos:end]

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)  # TLS: bytes decrypted but not read yet
        return self.buffered() + (inner() if inner is not None else 0)

    def send(self, data: bytes | bytearray) -> int:
        return int(self._sock.send(data))

    def close(self) -> None:
        self._buf, self._pos = b"", 0
        self._sock.close()

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(mqtt.Client):
    """paho's client with a read-ahead socket (:class:`_ReadAhead`), buffered packets parsed in
    one go, and acknowledgements sent in bulk (:meth:`ack_many`). Both use paho internals
    (``_create_socket``, ``_packet_queue``, ``_sock``) that paho 2.x keeps stable; a paho without them
    falls back to its own behaviour (checked once, at construction)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bulk_acks = callable(getattr(self, "_packet_queue", None))
        self._filtered = False  # message_callback_add was called: paho dispatches by topic filter

    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._filtered = True
        super().message_callback_add(sub, callback)

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        """The source takes every message in ``on_message`` and adds no per-topic callbacks, yet
        paho matches each message's topic against its (empty) tree of them first: a fifth of its
        thread's time per message when draining a backlog. Without per-topic callbacks this
        calls ``on_message`` as paho would (under its callback lock, an exception logged and
        re-raised unless paho suppresses them)."""
        on_message = self.on_message
        if self._filtered or on_message is None or not hasattr(self, "_in_callback_mutex"):
            super()._handle_on_message(message)
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def _create_socket(self) -> Any:
        return _ReadAhead(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        sock = self._sock
        n = 1
        # paho parses one packet per select(); parse what is already buffered now (a partial
        # packet stops the loop: paho's next read of it finds the socket empty and waits)
        while (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and n < _PACKETS_PER_READ and isinstance(sock, _ReadAhead)
               and sock.buffered() and self._sock is sock):
            rc = super().loop_read(max_packets)
            n += 1
        return rc

    def ack_many(self, acks: Sequence[tuple[int, int]]) -> None:
        """Acknowledge messages ``(mid, qos)``: the QoS 1 ones as one write of back-to-back PUBACKs
        (what paho's :meth:`ack` would send one packet, one wake-up of its thread and one
        ``send`` each), QoS 2 ones through paho."""
        if not self._bulk_acks:
            for mid, qos in acks:
                self.ack(mid, qos)
            return
        pack = _PUBACK.pack
        data = b"".join([pack(mqtt.PUBACK, 2, mid) for mid, qos in acks if qos == 1])
        if data:
            self._packet_queue(mqtt.PUBACK, data, 0, 0)
        for mid, qos in acks:
            if qos == 2:
                self.ack(mid, qos)


@dataclass(frozen=True, slots=True)
class _Route:
    machine: str
    name: str
    signal: Signal
    field: str


class MqttSource:
    """Samples of ``signals`` (``(machine_id, signal_name, Signal)``) from one MQTT broker.

    Not re-entrant. ``stats`` counts messages, samples and malformed input by kind."""

    def __init__(
        self,
        source_id: str,
        broker: MqttBroker,
        signals: Sequence[tuple[str, str, Signal]],
        client_id: str | None = None,
        *,
        keepalive_s: int = 30,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
        gather_s: float = 0.01,
        dead_letters: DeadLetterSink | None = None,
    ) -> None:
        self.source_id = source_id
        self.broker = broker
        self.client_id = client_id or broker.client_id
        self.stats = SourceStats()
        self._routes: dict[str, list[_Route]] = {}
        # Sparkplug B: the node's protocol state parses instead of the JSON routes
        self._spb: SparkplugNode | None = None
        if broker.payload == "sparkplug":
            self._spb = SparkplugNode(source_id, broker, signals)
        for machine, name, sig in signals if self._spb is None else ():
            if not sig.topic or not sig.field:
                raise ValueError(f"{machine}.{name}: an MQTT signal needs 'topic' and 'field'")
            # the plant model refuses these already; a source built by hand must not kill paho's thread
            problem = mqtt_topic_filter_problem(sig.topic)
            if problem is not None:
                raise ValueError(f"{machine}.{name}: {problem}")
            self._routes.setdefault(sig.topic, []).append(_Route(machine, name, sig, sig.field))
        # plant files name concrete topics; wildcards are allowed but matched the slow way
        self._wild = [(t, r) for t, r in self._routes.items() if "+" in t or "#" in t]
        # TLS files are read now: a CA or key that cannot be used is a configuration error
        # (CredentialError, a ValueError), not something to retry
        self._ssl = broker.ssl_context()
        self._keepalive_s = keepalive_s
        self._gather_s = gather_s
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        # paho's thread appends here (deque appends are thread-safe) and wakes the event loop only
        # when the consumer waits for mail (see _on_message)
        # messages as (topic, payload, received, mid, qos, connection generation), and markers
        self._inbox: deque[tuple[str, bytes | bytearray, datetime, int, int, int] | SourceItem | _NewSession] = deque()
        self._generation = 0  # paho's thread: connections so far
        self._offline = False  # paho's thread: a SourceOffline is queued and no connection since
        self._dead_letters = dead_letters
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._mail = asyncio.Event()
        self._pending: deque[SourceItem] = deque()
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: _Client | None = None
        self._sub_mid: int | None = None
        self._connect_failing = False
        self._closed = False
        self._failure: str | None = None  # why the source cannot go on (see SourceFailed)
        self._thread: threading.Thread | None = None  # paho's network thread
        self._once = OncePerKind(log, self.stats.errors)

    @property
    def topics(self) -> list[str]:
        return self._spb.topics if self._spb is not None else list(self._routes)

    @property
    def sparkplug(self) -> SparkplugNode | None:
        """The Sparkplug B node state (its ``stats``), or None for JSON payloads."""
        return self._spb

    # ---- context manager / iterator --------------------------------------------------------
    async def __aenter__(self) -> MqttSource:
        if self._client is not None or self._closed:
            raise RuntimeError("MqttSource is not re-entrant")
        self._loop = asyncio.get_running_loop()
        persistent = self.client_id is not None
        client = _Client(CallbackAPIVersion.VERSION2, client_id=self.client_id or "",
                             clean_session=not persistent, protocol=mqtt.MQTTv311,
                             manual_ack=self.broker.qos > 0)
        if self._ssl is not None:
            client.tls_set_context(self._ssl)
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.resolve_password())
        # paho doubles its delay from min to max but draws no jitter; each source draws its own
        # scale once (x0.5-1), so collectors that lose one broker together do not retry in step
        scale = random.uniform(0.5, 1.0)
        # (paho annotates the delays as int, but only multiplies and compares them)
        client.reconnect_delay_set(self._reconnect[0] * scale, self._reconnect[1] * scale)  # type: ignore[arg-type]
        # an exception escaping a callback ends paho's network thread: each one is guarded
        client.on_connect = self._guarded(self._on_connect)
        client.on_connect_fail = self._guarded(self._on_connect_fail)
        client.on_disconnect = self._guarded(self._on_disconnect)
        client.on_subscribe = self._guarded(self._on_subscribe)
        client.on_message = self._guarded(self._on_message)
        self._client = client
        # connect_async + loop_start: a broker that is down at start is retried by paho's thread
        # (retry_first_connection) instead of failing the collector
        client.connect_async(self.broker.host, self.broker.port, keepalive=self._keepalive_s)
        client.loop_start()
        # paho forgets its thread when the thread ends, however it ends: keep our own handle
        self._thread = getattr(client, "_thread", None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        client = self._client
        if client is not None:
            client.disconnect()
            # loop_stop() joins paho's thread: never block the event loop on it
            await asyncio.to_thread(client.loop_stop)
        self._mail.set()
        if self.stats.connected:
            self.stats.connected = False
            log.info("%s: disconnected from %s:%d", self.source_id, self.broker.host, self.broker.port)

    def __aiter__(self) -> MqttSource:
        return self

    async def __anext__(self) -> SourceItem:
        while not self._pending:
            if self._inbox:
                self._take_inbox()
                continue
            if self._closed:
                raise StopAsyncIteration
            self._check_alive()
            self._mail.clear()
            with self._wake_lock:
                if self._inbox:  # appended since the check above: no wake-up will come for it
                    continue
                self._wake_pending = False  # from now on, the next message wakes us
            # woken by mail, by a failure, or after a second to see that paho's thread still runs
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ALIVE_CHECK_S):
                    await self._mail.wait()
            # then let a burst gather while this thread leaves the GIL to paho's
            await asyncio.sleep(self._gather_s)
        item = self._pending.popleft()
        if isinstance(item, SampleBatch):
            self.stats.samples += len(item.rows)
        elif isinstance(item, Sample):
            self.stats.samples += 1
        return item

    def _check_alive(self) -> None:
        thread = self._thread
        if self._failure is None and thread is not None and not thread.is_alive() and not self._closed:
            self._failure = "paho's network thread ended"
        if self._failure is not None:
            log.error("%s: %s; the source stops", self.source_id, self._failure)
            raise SourceFailed(f"{self.source_id}: {self._failure}")

    def _fail(self, reason: str) -> None:
        """Paho's thread: the source cannot go on; ``__anext__`` raises (first reason kept)."""
        if self._failure is None:
            self._failure = reason
        self._to_loop(self._mail.set)

    def _guarded(self, callback: Any) -> Any:
        def call(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as e:
                log.exception("%s: %s failed", self.source_id, getattr(callback, "__name__", "a paho callback"))
                self._fail(f"{getattr(callback, '__name__', 'a paho callback')} raised {type(e).__name__}: {e}")
        return call

    def _take_inbox(self) -> None:
        """Parse up to 1 000 inbox entries into ``_pending`` (bounded: samples out sooner), with an
        :class:`AckPoint` after the messages that need an acknowledgement. The samples of JSON
        messages go out together as a :class:`SampleBatch`, before any marker that follows them."""
        acks: list[tuple[int, int]] = []
        rows: list[_Row] = []
        pending = self._pending
        generation = -1
        for _ in range(min(len(self._inbox), 1000)):
            entry = self._inbox.popleft()
            if isinstance(entry, _NewSession):
                if self._spb is not None:
                    self._sparkplug_outcome(self._spb.reset())
                continue
            if not isinstance(entry, tuple):
                if rows:
                    pending.append(SampleBatch(self.source_id, rows))
                    rows = []
                if acks:
                    pending.append(AckPoint(self.source_id, (generation, acks)))
                    acks = []
                pending.append(entry)
                continue
            topic, payload, received, mid, qos, gen = entry
            self.stats.messages += 1
            try:
                if self._spb is None:
                    self._parse_json(topic, payload, received, rows)
                else:
                    items = self._parse_sparkplug(topic, payload, received)
                    if items:
                        if rows:
                            pending.append(SampleBatch(self.source_id, rows))
                            rows = []
                        pending.extend(items)
            except Exception as e:
                # one message nobody foresaw costs that message (kept as a dead letter and acked
                # like any other: a re-delivery would fail the same way), never the collector
                self._problem("parse_failed", topic, payload, "%s: cannot read the payload on %s: %s: %s",
                              self.source_id, topic, type(e).__name__, e)
            if qos > 0:
                if gen != generation and acks:
                    if rows:
                        pending.append(SampleBatch(self.source_id, rows))
                        rows = []
                    pending.append(AckPoint(self.source_id, (generation, acks)))
                    acks = []
                generation = gen
                acks.append((mid, qos))
        if rows:
            pending.append(SampleBatch(self.source_id, rows))
        if acks:
            pending.append(AckPoint(self.source_id, (generation, acks)))

    def ack(self, token: object) -> None:
        """Acknowledge the messages of an :class:`AckPoint` (their facts are durable now). Those of
        an earlier connection are left alone: the broker re-delivers them."""
        generation, acks = cast(tuple[int, list[tuple[int, int]]], token)
        client = self._client
        if client is None or generation != self._generation:
            return
        client.ack_many(acks)
        self.stats.acks += len(acks)

    async def wait_ready(self) -> None:
        """Return once connected and every topic's subscription is acknowledged."""
        await self._ready.wait()

    # ---- parsing (event loop) ---------------------------------------------------------------
    def parse(self, topic: str, payload: bytes | bytearray, received: datetime) -> list[SourceItem]:
        """Samples (and Sparkplug B markers) in one message; malformed input is counted, logged
        once per kind, skipped."""
        if self._spb is not None:
            return self._parse_sparkplug(topic, payload, received)
        rows: list[_Row] = []
        self._parse_json(topic, payload, received, rows)
        return list(SampleBatch(self.source_id, rows).samples())

    def _parse_sparkplug(self, topic: str, payload: bytes | bytearray, received: datetime) -> list[SourceItem]:
        assert self._spb is not None

        def problem(kind: str, message: str) -> None:
            self._problem(kind, topic, payload, "%s", message)

        outcome = self._spb.handle(topic, payload, received, problem)
        self._sparkplug_outcome(outcome)
        return outcome.items

    def _parse_json(self, topic: str, payload: bytes | bytearray, received: datetime, rows: list[_Row]) -> None:
        """The samples of one JSON message, appended to ``rows`` as :class:`SampleBatch` rows."""
        routes = self._routes.get(topic)
        if routes is None:
            routes = [r for pattern, rs in self._wild if mqtt.topic_matches_sub(pattern, topic) for r in rs]
            if not routes:
                self._problem("unknown_topic", topic, payload, "%s: message on unexpected topic %r",
                              self.source_id, topic)
                return
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self._problem("not_json", topic, payload, "%s: payload on %s is not JSON: %s", self.source_id, topic,
                          _excerpt(payload))
            return
        except RecursionError:
            self._problem("not_json", topic, payload, "%s: payload on %s is JSON nested too deeply to read: %s",
                          self.source_id, topic, _excerpt(payload))
            return
        if not isinstance(obj, dict):
            self._problem("not_object", topic, payload, "%s: payload on %s is not a JSON object: %s",
                          self.source_id, topic, _excerpt(payload))
            return
        present = 0
        for r in routes:
            if r.field not in obj:
                continue
            present += 1
            try:
                value = coerce_value(r.name, r.signal, obj[r.field])
            except BadValue as e:
                self._problem(e.kind, topic, payload, "%s: %s.%s on %s: %s", self.source_id, r.machine, r.name,
                              topic, e.message)
                continue
            t = self._time_ns(r, obj, received, topic, payload)
            if t is not None:
                rows.append((r.machine, r.name, value, t, "good"))
        if not present:
            self._problem("missing_field", topic, payload, "%s: payload on %s has none of the fields %s: %s",
                          self.source_id, topic,
                          sorted({r.field for r in routes}), _excerpt(payload))

    def _time_ns(self, r: _Route, obj: dict[str, Any], received: datetime, topic: str,
                 payload: bytes | bytearray) -> int | None:
        tf = r.signal.time_field
        if tf is None:
            return to_ns(received)
        if tf not in obj:
            self._problem("missing_time", topic, payload, "%s: payload on %s has no time field %r", self.source_id,
                          topic, tf)
            return None
        try:
            return parse_time_ns(obj[tf], r.signal.time_unit)
        except ValueError as e:
            self._problem("bad_time", topic, payload, "%s: time field %r on %s: %s", self.source_id, tf, topic, e)
            return None

    def _sparkplug_outcome(self, outcome: Outcome) -> None:
        """Ask the node for a rebirth when the message (or a new connection) calls for one."""
        client = self._client
        if not outcome.rebirth or self._spb is None or client is None:
            return
        # QoS 0, as the specification has commands sent; a lost request is asked again on the
        # next message that needs a birth
        client.publish(self._spb.command_topic, SparkplugNode.rebirth_payload(_now_ms()), qos=0)
        log.info("%s: asked Sparkplug B node %s/%s for a rebirth", self.source_id, self._spb.group_id,
                 self._spb.edge_node_id)

    def _problem(self, kind: str, topic: str, payload: bytes | bytearray, msg: str, *args: object) -> None:
        if self._dead_letters is None:
            self._once(kind, msg, *args)
            return
        self.stats.errors[kind] += 1
        self._dead_letters.record(kind, msg % args, source=self.source_id, raw=payload, topic=topic)

    # ---- paho callbacks (network thread: hand over, never block) ---------------------------
    def _to_loop(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed during shutdown
            loop.call_soon_threadsafe(fn, *args)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.append((msg.topic, msg.payload, datetime.now(UTC), msg.mid, msg.qos, self._generation))
        self._wake()

    def _mark(self, item: SourceItem) -> None:
        """Queue a marker in order with the messages (paho's thread)."""
        self._inbox.append(item)
        self._wake()

    def _went_offline(self, reason: str) -> None:
        if self._offline or self.client_id is not None:
            return  # a persistent session keeps what is published meanwhile: no gap
        self._offline = True
        self._mark(SourceOffline(self.source_id, datetime.now(UTC), reason))

    def _wake(self) -> None:
        # Wake the event loop only if the consumer waits, and the consumer then sleeps `gather_s`
        # before it drains. Waking per message is a GIL convoy: the loop thread takes the GIL for
        # every message, paho's thread waits for it before it can read and ack the next, and
        # the broker's in-flight window stalls (draining a backlog: ~7k msg/s per-message,
        # ~12k msg/s with a 10 ms gather; a bare paho subscriber that only counts does ~31k).
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._to_loop(self._mail.set)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._to_loop(self._connect_failed)
            self._went_offline(f"broker refused the connection: {reason_code}")
            if not self._connect_failing:
                self._connect_failing = True
                hint = " (check username and its password)" if str(reason_code) in _LOGIN_REFUSED else ""
                log.warning("%s: broker %s:%d refused the connection: %s%s; retrying",
                            self.source_id, self.broker.host, self.broker.port, reason_code, hint)
            return
        self._connect_failing = False
        # paho's thread reads packets in order: this marker precedes every message of this connection
        self._generation += 1
        self._offline = False
        self._mark(SourceOnline(self.source_id, datetime.now(UTC)))
        qos = int(self.broker.qos)
        topics: list[tuple[str, int]] = [(topic, qos) for topic in self.topics]
        _, mid = client.subscribe(topics)
        self._sub_mid = mid
        if self._spb is not None:
            # in order with this connection's messages: the node state starts over and a rebirth
            # is asked (published after the SUBSCRIBE, so the births reach the subscription)
            self._inbox.append(_NewSession())
            self._wake()
        self._to_loop(self._connected, flags.session_present)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` around the connection attempt and
        # does not pass the error on; it is the exception being handled (a refused TCP
        # connection, a TLS handshake that failed, ...)
        reason = _connect_error(sys.exception())
        self._to_loop(self._connect_failed)
        self._went_offline(f"cannot connect: {reason}")
        if not self._connect_failing:
            self._connect_failing = True
            log.warning("%s: cannot connect to %s:%d: %s; paho retries (up to every %ds)",
                        self.source_id, self.broker.host, self.broker.port, reason, self._reconnect[1])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[Any],
                      properties: Any) -> None:
        if mid != self._sub_mid:
            return
        refused = [f"{topic} ({rc})" for topic, rc in zip(self.topics, reason_codes, strict=False) if rc.is_failure]
        if refused:
            # the signals of these topics would never arrive: better no collector than a quiet one
            self._fail(f"the broker {self.broker.host}:{self.broker.port} refused the subscription to "
                       f"{', '.join(refused)}")
            return
        self._to_loop(self._ready.set)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if not self._closed:
            self._went_offline(f"connection lost: {reason_code}")
        self._to_loop(self._disconnected, str(reason_code))

    # ---- state changes (event loop) ---------------------------------------------------------
    def _connected(self, session_present: bool) -> None:
        self.stats.connected = True
        self.stats.connects += 1
        log.info("%s: connected to %s:%d as %r (session present: %s), %d topics",
                 self.source_id, self.broker.host, self.broker.port, self.client_id or "(random id)",
                 session_present, len(self._routes))

    def _connect_failed(self) -> None:
        self.stats.connect_failures += 1

    def _disconnected(self, reason: str) -> None:
        self._ready.clear()
        if not self.stats.connected:
            return
        self.stats.connected = False
        if self._closed:
            return
        self.stats.losses += 1
        log.warning("%s: connection to %s:%d lost (%s); paho reconnects", self.source_id, self.broker.host,
                    self.broker.port, reason)


def parse_time(raw: object, unit: str) -> datetime:
    """A payload's time field as an aware UTC datetime: epoch number in ``s``/``ms``/``us``/``ns``,
    or ``iso`` (ISO-8601 with an offset; a time without one is rejected)."""
    return from_ns(parse_time_ns(raw, unit))


def parse_time_ns(raw: object, unit: str) -> int:
    """:func:`parse_time` as epoch ns (to the microsecond, as the datetime holds it)."""
    if unit == "iso":
        if not isinstance(raw, str):
            raise ValueError(f"expected an ISO-8601 string, got {raw!r}")
        try:
            t = datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(f"not an ISO-8601 time: {raw!r}") from None
        if t.tzinfo is None:
            raise ValueError(f"time without offset: {raw!r}")
        return to_ns(t)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"expected an epoch number in {unit}, got {raw!r}")
    scale = _UNIT_NS[unit]
    if isinstance(raw, int):
        ns = raw * scale
    else:
        if not math.isfinite(raw):
            raise ValueError(f"epoch {raw!r} is not finite")
        # via the float's shortest decimal form: 1700000000.25 s must be .250000, not .249999
        ns = int(Decimal(repr(raw)) * scale)
    if not 0 <= ns < 253_402_300_800 * 1_000_000_000:  # year 10000
        raise ValueError(f"epoch {raw!r} {unit} is out of range")
    return ns - ns % 1_000


def _connect_error(e: BaseException | None) -> str:
    """Why a connection attempt failed, for a person: what TLS said about the broker's
    certificate, or the socket error."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return (f"the broker's TLS certificate is not trusted ({e.verify_message}; check tls.ca and that the "
                "certificate names the host)")
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed ({e.reason or e}; check tls.cert/tls.key and that the port speaks TLS)"
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    return "unknown error" if e is None else f"{type(e).__name__}: {e}"


def _excerpt(payload: bytes | bytearray, n: int = 120) -> str:
    text = payload[:n].decode("utf-8", "replace")
    return repr(text + ("…" if len(payload) > n else ""))
