"""OPC UA source: one asyncua client, one subscription, samples in order.

    async with OpcUaSource("plc-1", plant.sources["plc-1"].opcua, signals) as src:
        async for item in src:      # a SampleBatch, or a SourceOnline / SourceOffline / SourceRestarted marker
            ...

Reconnection is owned here, not by asyncua: the client is built with ``auto_reconnect=False``
and every loss (the client's supervisor noticing a dead transport, or a bad subscription
status) ends that client; ``__anext__`` then builds a fresh client after a capped, jittered
backoff. A fresh connection re-reads ``ServerStatus.StartTime`` (ns=0;i=2257): if it differs
from the one seen before, the server restarted while we were away, and a
:class:`~collector.sources.SourceRestarted` marker is queued *before* the subscription is
created, so it reaches the normalizer before any value read after the restart.

Every connection starts with a :class:`~collector.sources.SourceOnline` marker (carrying the
StartTime, which the pipeline saves with the normalizer state and hands back as
``start_time=`` after a collector restart, so a PLC restart while the collector was down is
still seen). A lost connection, or a first connection that fails, queues one
:class:`~collector.sources.SourceOffline` per outage *after* whatever the old connection
delivered, and the next attempt waits until that marker has been taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import DataChangeNotif
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from collector.sources import (
    Backoff,
    BadValue,
    DeadLetterSink,
    OncePerKind,
    SampleBatch,
    SourceItem,
    SourceOffline,
    SourceOnline,
    SourceRestarted,
    SourceStats,
    aware_utc,
    coerce_value,
    signal_kind,
)
from core.model import Quality
from core.plant import OpcUaEndpoint, Signal

log = logging.getLogger(__name__)

START_TIME_NODE = ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus_StartTime))  # ns=0;i=2257
MAX_MONITORED_ITEMS_NODE = ua.NodeId(
    ua.Int32(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall))  # ns=0;i=11714
# items per CreateMonitoredItems call when the server states no limit: small enough for any
# message size limit, large enough that 20 000 signals take 20 calls
DEFAULT_MONITOR_BATCH = 1000


class UntrustedServer(Exception):
    """The server's certificate is neither in ``trust_dir`` nor pinned by ``server_cert_sha256``."""


@dataclass(frozen=True, slots=True)
class _Lost:
    generation: int
    reason: str


_CLOSED = object()


class _Handler:
    """asyncua calls these from its publish path; they only enqueue."""

    def __init__(self, source: OpcUaSource, generation: int) -> None:
        self._source = source
        self._generation = generation

    def datachange_notification(self, node: Any, val: Any, data: DataChangeNotif) -> None:
        # only where asyncua has no hook for whole notifications (_take_whole_notifications)
        self._source._on_data_changes((data.monitored_item,))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        code = status.Status
        if code is not None and not code.is_good():
            self._source._queue.put_nowait(_Lost(self._generation, f"subscription status {code.name}"))


def _take_whole_notifications(sub: Any, source: OpcUaSource) -> bool:
    """Hand each ``DataChangeNotification`` of a publish to :meth:`OpcUaSource._on_data_changes`
    whole. asyncua 2.x explodes it into two objects per value and runs the handler's every
    notification in an asyncio task of its own (``Subscription._deliver``), so that user code
    never holds up its publish loop; ours only enqueues, and per-value objects and tasks were a
    large part of the collector's CPU on a 10 000-signal plant. The notification is taken where
    asyncua explodes it (``Subscription._explode_datachange``, called in order by its publish
    callback, which goes on handling status changes and events as before) and leaves as one
    :class:`~collector.sources.SampleBatch`. An asyncua without that method is left alone: the
    handler gets each value (False)."""
    if not callable(getattr(sub, "_explode_datachange", None)):
        return False

    def explode(datachange: ua.DataChangeNotification) -> tuple[()]:
        source._on_data_changes(datachange.MonitoredItems or ())
        return ()

    sub._explode_datachange = explode
    return True


class OpcUaSource:
    """Samples of ``signals`` (``(machine_id, signal_name, node_id)``, or ``(machine_id,
    signal_name, node_id, Signal)`` to have values coerced for the signal's meaning) from one
    OPC UA server.

    The subscription requests ``queue_size`` per monitored item so consecutive changes between
    two publishes are all delivered, not coalesced into the last one. Not re-entrant."""

    def __init__(
        self,
        source_id: str,
        endpoint: OpcUaEndpoint,
        signals: Sequence[tuple[str, str, str] | tuple[str, str, str, Signal]],
        *,
        publishing_interval_ms: float = 200.0,
        sampling_interval_ms: float = 50.0,
        queue_size: int = 1000,
        request_timeout_s: float = 4.0,
        watchdog_interval_s: float = 1.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 10.0,
        start_time: datetime | None = None,
        dead_letters: DeadLetterSink | None = None,
    ) -> None:
        self.source_id = source_id
        self._dead_letters = dead_letters
        self.endpoint = endpoint
        self.stats = SourceStats()
        self._signals: list[tuple[str, str, str, Signal | None]] = []
        for sig in signals:
            machine, name, node = sig[0], sig[1], sig[2]
            spec = sig[3] if len(sig) == 4 else None
            _check_node_id(node)
            self._signals.append((machine, name, node, spec))
        self._publishing_interval_ms = publishing_interval_ms
        self._sampling_interval_ms = sampling_interval_ms
        self._queue_size = queue_size
        self._request_timeout_s = request_timeout_s
        self._watchdog_interval_s = watchdog_interval_s
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._stable_after_s = stable_after_s
        # unbounded on purpose: a callback must never block or drop; backpressure belongs to the
        # spool (later), not to the protocol layer
        self._queue: asyncio.Queue[SourceItem | _Lost | object] = asyncio.Queue()
        self._client: Client | None = None
        self._generation = 0
        # client handle -> machine, signal, its spec, and whether it is a gauge (read as a float)
        self._handles: dict[int, tuple[str, str, Signal | None, bool]] = {}
        self._start_time: datetime | None = start_time  # the server's StartTime last seen (saved state)
        self._offline = False  # a SourceOffline was queued and no connection since
        self._retry_at = 0.0  # monotonic time of the next connection attempt
        self._connected_at = 0.0
        self._ready = asyncio.Event()
        self._entered = False
        self._closed = False
        self._problem = OncePerKind(log, self.stats.errors)
        self._connect_failing = False
        self.namespace_reads = 0  # reads of the server's namespace array (one per connection with nsu= nodes)
        self.monitor_calls = 0  # CreateMonitoredItems calls of the last connection
        self.whole_notifications = False  # data changes arrive a publish at a time (see _take_whole_notifications)

    # ---- context manager / iterator --------------------------------------------------------
    async def __aenter__(self) -> OpcUaSource:
        if self._entered:
            raise RuntimeError("OpcUaSource is not re-entrant")
        self._entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        self._queue.put_nowait(_CLOSED)
        await self._discard_client()
        if self.stats.connected:
            self.stats.connected = False
            log.info("%s: disconnected from %s", self.source_id, self.endpoint.endpoint)

    def __aiter__(self) -> OpcUaSource:
        return self

    async def __anext__(self) -> SourceItem:
        while True:
            if self._closed:
                raise StopAsyncIteration
            # what the old connection queued (samples, then the loss) goes out before we reconnect
            if self._client is None and self._queue.empty():
                await self._connect_until_up()
                continue
            item = await self._queue.get()
            if item is _CLOSED:
                raise StopAsyncIteration
            if isinstance(item, _Lost):
                if item.generation == self._generation and self._client is not None:
                    await self._on_lost(item.reason)
                continue
            if isinstance(item, SampleBatch):
                self.stats.samples += len(item.rows)
            return item  # type: ignore[return-value]

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def ack(self, token: object) -> None:
        """OPC UA has nothing to acknowledge: subscriptions re-send current values on reconnect."""

    @property
    def start_time(self) -> datetime | None:
        """The server's ``ServerStatus.StartTime`` as last read (to persist with normalizer state)."""
        return self._start_time

    # ---- connection ------------------------------------------------------------------------
    async def _connect_until_up(self) -> None:
        """Try to connect once the backoff allows; a failure queues a :class:`SourceOffline`
        (once per outage) and returns, so the marker is delivered before the next attempt."""
        delay = self._retry_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await self._connect_once()
        except asyncio.CancelledError:
            await self._discard_client()
            raise
        except Exception as e:  # asyncua raises OSError, TimeoutError, UaError and friends
            await self._discard_client()
            self.stats.connect_failures += 1
            delay = self._backoff.next()
            self._retry_at = time.monotonic() + delay
            self._went_offline(_describe(e))
            if not self._connect_failing:
                self._connect_failing = True
                log.warning("%s: cannot connect to %s (%s); retrying with backoff up to %.0fs",
                            self.source_id, self.endpoint.endpoint, _describe(e), self._backoff.max_s)
            else:
                log.debug("%s: connect failed again (%s); next try in %.1fs", self.source_id, _describe(e), delay)
        else:
            self._connect_failing = False

    def _went_offline(self, reason: str) -> None:
        if not self._offline:
            self._offline = True
            self._queue.put_nowait(SourceOffline(self.source_id, datetime.now(UTC), reason))

    async def _connect_once(self) -> None:
        self._generation += 1
        generation = self._generation
        client = Client(self.endpoint.endpoint, timeout=self._request_timeout_s,
                        watchdog_intervall=self._watchdog_interval_s, auto_reconnect=False)
        # PLCs have few session slots: a session we abandon on a lost link should expire in a
        # minute, not asyncua's default hour
        client.session_timeout = 60_000
        if self.endpoint.username:
            client.set_user(self.endpoint.username)
        password = self.endpoint.resolve_password()  # from the plant file, its env var or file; warns if in clear
        if password:
            client.set_password(password)
        if self.endpoint.security != "none":
            if not (self.endpoint.certificate and self.endpoint.private_key):
                raise ValueError(f"security '{self.endpoint.security}' needs 'certificate' and 'private_key'")
            mode = (ua.MessageSecurityMode.Sign if self.endpoint.security == "sign"
                    else ua.MessageSecurityMode.SignAndEncrypt)
            # the server's certificate from its endpoint list (over an unsecured channel, which
            # carries nothing secret), checked before a secure channel is opened or a password sent
            async with asyncio.timeout(self._request_timeout_s * 2):
                endpoints = await client.connect_and_get_server_endpoints()
            found = Client.find_endpoint(endpoints, mode, SecurityPolicyBasic256Sha256.URI)
            server_der = _first_der(found.ServerCertificate or b"")
            self._trust(server_der)
            await client.set_security(SecurityPolicyBasic256Sha256, self.endpoint.certificate,
                                      self.endpoint.private_key, server_certificate=server_der, mode=mode)

        async def lost(exc: Exception) -> None:
            self._queue.put_nowait(_Lost(generation, _describe(exc)))

        client.connection_lost_callback = lost
        # a server that accepts TCP but never answers must not stall us forever
        async with asyncio.timeout(self._request_timeout_s * 2):
            await client.connect()
        self._client = client

        start = aware_utc(await client.get_node(START_TIME_NODE).read_value())
        if self._start_time is not None and start != self._start_time:
            self.stats.restarts += 1
            log.warning("%s: server restarted (StartTime %s, was %s); non-retentive counters count as reset",
                        self.source_id, start.isoformat(), self._start_time.isoformat())
            self._queue.put_nowait(SourceRestarted(self.source_id, start, self._start_time))
        self._start_time = start
        # before the subscription exists, so before any sample of this connection
        self._offline = False
        self._queue.put_nowait(SourceOnline(self.source_id, datetime.now(UTC), start))

        requests = []
        wanted = []
        self._handles = {}
        # nsu= node ids name their namespace by URI: one read of the namespace array per
        # connection (a restarted server may number its namespaces differently), not one per node
        namespaces: dict[str, int] | None = None
        if any(node.startswith("nsu=") for _, _, node, _ in self._signals):
            array = await client.get_namespace_array()
            self.namespace_reads += 1
            namespaces = {uri: i for i, uri in enumerate(array)}
        for handle, (machine, name, node, spec) in enumerate(self._signals, start=1):
            node_id = _resolve(node, namespaces)
            if node_id is None:
                self._problem("bad_node", "%s: cannot monitor %s (%s.%s): the server has no namespace %r",
                              self.source_id, node, machine, name, node[4:].partition(";")[0])
                continue
            self._handles[handle] = (machine, name, spec, spec is not None and signal_kind(name) == "gauge")
            requests.append(self._request(node_id, handle))
            wanted.append((machine, name, node))
        sub = await client.create_subscription(self._publishing_interval_ms, _Handler(self, generation))
        self.whole_notifications = _take_whole_notifications(sub, self)
        batch = await self._batch_size(client)
        results: list[Any] = []
        # within the server's MaxMonitoredItemsPerCall: a PLC refuses a larger call as a whole
        for i in range(0, len(requests), batch):
            results += await sub.create_monitored_items(requests[i:i + batch])
        self.monitor_calls = -(-len(requests) // batch)
        for (machine, name, node), res in zip(wanted, results, strict=True):
            if isinstance(res, ua.StatusCode):
                self._problem("bad_node", "%s: cannot monitor %s (%s.%s): %s",
                              self.source_id, node, machine, name, res.name)

        self.stats.connected = True
        self.stats.connects += 1
        self._connected_at = time.monotonic()
        self._ready.set()
        log.info("%s: connected to %s, %d signals subscribed", self.source_id, self.endpoint.endpoint,
                 len(requests))

    async def _batch_size(self, client: Client) -> int:
        """Monitored items per CreateMonitoredItems call: the server's
        ``OperationLimits.MaxMonitoredItemsPerCall`` (0: no limit), else ``DEFAULT_MONITOR_BATCH``."""
        try:
            limit = await client.get_node(MAX_MONITORED_ITEMS_NODE).read_value()
        except Exception as e:  # a server without operation limits answers BadNodeIdUnknown
            log.debug("%s: no MaxMonitoredItemsPerCall (%s); batches of %d", self.source_id, _describe(e),
                      DEFAULT_MONITOR_BATCH)
            return DEFAULT_MONITOR_BATCH
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            return min(limit, DEFAULT_MONITOR_BATCH)
        return DEFAULT_MONITOR_BATCH

    def _trust(self, der: bytes) -> None:
        """Refuse a server certificate that is neither pinned nor in ``trust_dir``
        (:class:`UntrustedServer`, naming its fingerprint so a person can pin it)."""
        fingerprint = hashlib.sha256(der).hexdigest()
        pinned = self.endpoint.server_cert_sha256
        if pinned is not None and pinned == fingerprint:
            return
        folder = self.endpoint.trust_dir_path()
        if folder is not None and der and der in _trusted_ders(folder):
            return
        given = [f"pinned (server_cert_sha256 {pinned})"] if pinned else []
        given += [f"in trust_dir {folder}"] if folder is not None else []
        where = " nor ".join(given) if given else "trusted: set trust_dir or server_cert_sha256"
        raise UntrustedServer(f"the server's certificate (SHA-256 {fingerprint}) is not {where}; if this is the "
                              "right server, copy its certificate into trust_dir or pin that fingerprint")

    def _request(self, node_id: ua.NodeId, handle: int) -> ua.MonitoredItemCreateRequest:
        rv = ua.ReadValueId()
        rv.NodeId = node_id
        rv.AttributeId = AttributeIds.Value
        params = ua.MonitoringParameters()
        params.ClientHandle = handle
        params.SamplingInterval = self._sampling_interval_ms
        params.QueueSize = self._queue_size
        # keep the oldest queued changes and let the newest overwrite the queue's tail on
        # overflow (OPC UA Part 4 §5.12.1.5): either way the latest value survives; asyncua's
        # own server ignores the flag and drops the oldest
        params.DiscardOldest = False
        mir = ua.MonitoredItemCreateRequest()
        mir.ItemToMonitor = rv
        mir.MonitoringMode = ua.MonitoringMode.Reporting
        mir.RequestedParameters = params
        return mir

    async def _on_lost(self, reason: str) -> None:
        up_for = time.monotonic() - self._connected_at
        self.stats.connected = False
        self.stats.losses += 1
        self._ready.clear()
        log.warning("%s: connection to %s lost after %.0fs (%s); reconnecting",
                    self.source_id, self.endpoint.endpoint, up_for, reason)
        await self._discard_client()
        self._went_offline(reason)
        if up_for >= self._stable_after_s:
            self._backoff.reset()  # a flapping server keeps growing the delay
        self._retry_at = time.monotonic() + self._backoff.next()

    async def _discard_client(self) -> None:
        client, self._client = self._client, None
        self._generation += 1  # losses reported by the old client are stale from now on
        if client is None:
            return  # never connected: asyncua already dropped the socket of a failed connect()
        client.connection_lost_callback = None
        # disconnect() on a dead transport waits for its request timeouts; bound it
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._request_timeout_s):
                await client.disconnect()

    # ---- notifications (called by asyncua; enqueue only) -----------------------------------
    def _on_data_changes(self, items: Sequence[ua.MonitoredItemNotification]) -> None:
        """The data changes of one notification, in order, queued as one batch."""
        self.stats.messages += len(items)
        rows: list[tuple[str, str, float | int | str, int, Quality]] = []
        for item in items:
            try:
                self._take_item(item, rows)
            except Exception as e:
                # one notification nobody foresaw costs that reading, never the subscription
                target = self._handles.get(getattr(item, "ClientHandle", -1))
                what = f"{target[0]}.{target[1]}" if target is not None else "?"
                reason = f"{self.source_id}: cannot read a notification of {what}: {type(e).__name__}: {e}"
                if self._dead_letters is not None:
                    self.stats.errors["bad_notification"] += 1
                    self._dead_letters.record("bad_notification", reason, source=self.source_id,
                                              raw=repr(getattr(item, "Value", None)))
                else:
                    self._problem("bad_notification", "%s", reason)
        if rows:
            self._queue.put_nowait(SampleBatch(self.source_id, rows))

    def _take_item(self, item: ua.MonitoredItemNotification,
                   rows: list[tuple[str, str, float | int | str, int, Quality]]) -> None:
        target = self._handles.get(item.ClientHandle)
        if target is None:
            return
        machine, name, spec, gauge = target
        dv = item.Value
        raw = dv.Value.Value if dv is not None and dv.Value is not None else None
        if raw is None:
            self._problem("no_value", "%s: %s.%s reported no value (status %s)", self.source_id, machine, name,
                          dv.StatusCode.name if dv is not None and dv.StatusCode is not None else "?")
            return
        try:
            if gauge and type(raw) is float and math.isfinite(raw):
                value: float | int | str = raw  # what coerce_value makes of it
            else:
                value = coerce_value(name, spec, raw) if spec is not None else _plain(raw)
        except BadValue as e:
            self._problem(e.kind, "%s: %s.%s: %s", self.source_id, machine, name, e.message)
            return
        t = dv.SourceTimestamp or dv.ServerTimestamp
        code = dv.StatusCode
        rows.append((machine, name, value, _epoch_ns(t) if t is not None else time.time_ns(),
                     "good" if code is None or code.value == 0 else _quality(code)))


def _epoch_ns(t: datetime) -> int:
    """Epoch ns of an OPC UA time (asyncua hands out naive UTC datetimes; an aware one counts by
    its offset), as ``to_ns(aware_utc(t))`` without the intermediate datetime."""
    d = t - (_NAIVE_EPOCH if t.tzinfo is None else _EPOCH)
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)


def _quality(code: ua.StatusCode | None) -> Quality:
    if code is None or code.is_good():
        return "good"
    if code.is_uncertain():
        return "uncertain"
    return "bad"


def _plain(raw: object) -> int | float | str:
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int | float | str):
        return raw
    raise BadValue("wrong_type", f"unsupported OPC UA value {raw!r}")


def _check_node_id(node: str) -> None:
    if node.startswith("nsu="):
        if ";" not in node:
            raise ValueError(f"'{node}' is not an OPC UA node id")
        return
    ua.NodeId.from_string(node)


def _resolve(node: str, namespaces: dict[str, int] | None) -> ua.NodeId | None:
    """The NodeId of ``node``; ``nsu=<uri>;s=...`` through this connection's namespace indexes
    (None when the server has no such namespace)."""
    if node.startswith("nsu="):
        uri, _, rest = node[4:].partition(";")
        idx = (namespaces or {}).get(uri)
        return None if idx is None else ua.NodeId.from_string(f"ns={idx};{rest}")
    return ua.NodeId.from_string(node)


def _first_der(data: bytes) -> bytes:
    """The first certificate of a DER chain (a server may send its chain concatenated)."""
    if len(data) < 2 or data[0] != 0x30:
        return data
    n = data[1]
    if n < 0x80:
        return data[:2 + n]
    k = n & 0x7F
    return data[:2 + k + int.from_bytes(data[2:2 + k], "big")]


def _trusted_ders(folder: Path) -> set[bytes]:
    """DER bytes of the certificates in ``folder`` (DER or PEM files), read at every connection
    so a certificate added later is trusted from the next attempt; unreadable files are skipped."""
    out: set[bytes] = set()
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError:
        return out
    for p in files:
        try:
            data = p.read_bytes()
            cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----BEGIN")
                    else x509.load_der_x509_certificate(data))
        except (OSError, ValueError):
            continue
        out.add(cert.public_bytes(serialization.Encoding.DER))
    return out


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
