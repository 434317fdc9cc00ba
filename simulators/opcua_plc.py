"""One OPC UA server per OPC UA source of the plant: a simulated PLC for its machines.

Address space. Each machine has a folder ``Objects/<line>/<machine>`` holding its signals'
variables with exactly the plant file's NodeIds (``ns=2;s=...`` or ``nsu=<uri>;s=...``; the
namespaces are registered so the indices the plant uses exist):

- counters (``good``, ``scrap``, ``total``) as Byte/UInt16/UInt32/UInt64 by ``counter_bits``,
  wrapping at that width; ``state`` (the raw vendor code of the plant's map) and ``reason`` as
  Int32; ``product`` as String; gauges as Double;
- beside them, where the plant names no such signal: ``Product`` (String, the product being
  made) and always ``CycleTime`` (Double, the last cycle's running seconds) with NodeIds
  ``ns=2;s=<line>.<machine>.Product`` / ``.CycleTime``;
- a method ``ResetCounters`` (``ns=2;s=<line>.<machine>.ResetCounters``) that sets the
  machine's counters to 0: from then on they count parts since the reset, like a PLC reset.

Machines with more than ``FOLDER_CHILDREN`` nodes spill into subfolders: asyncua checks every
new child against all of its parent's references, so thousands under one parent build in
quadratic time.

Writes. Values are written with the event's time as SourceTimestamp (``apply``) through a fast
local path: the variable's value attribute is set and its subscriptions notified directly,
with a DataValue whose deep copy is itself (asyncua deep-copies every value it notifies, which
dominated the write cost; ours are never mutated after writing). ``write_path="stock"`` uses
asyncua's ``Server.write_attribute_value`` instead (the benchmark's baseline).

Faults, for the fault injector (``simulators/faults.py``): ``restart``, ``silence``,
``bad_quality``, ``skew`` and ``reset_counters``; see each method. Fault ends are handled by a
task the server owns while it is started.

Security: ``security: sign`` / ``sign_and_encrypt`` serve only Basic256Sha256 in that mode,
with a certificate generated into the source's ``certificate_dir`` (see ``simulators.certs``),
accepting only the generated client certificate and those in ``certificate_dir/trusted``. With
``users`` (or ``username``/``password``) only those users may log in; otherwise anonymous.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import inspect
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.binary_server_asyncio import BinaryServer
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509

from core.model import COUNTER_SIGNALS, MEANINGFUL_SIGNALS, PRODUCT_SIGNAL, REASON_SIGNAL, STATE_SIGNAL
from core.plant import OpcUaEndpoint, Plant, Signal
from simulators import certs
from simulators.model import Event, gauge_profile

log = logging.getLogger(__name__)

FOLDER_NAMESPACE = "urn:mieruka:simulator:folders"
EXTRA_NS = 2  # namespace index of the variables and methods the plant file does not name
PRODUCT = "Product"
CYCLE_TIME = "CycleTime"
RESET_COUNTERS = "ResetCounters"
FOLDER_CHILDREN = 100
YIELD_EVERY = 256  # writes between yields to the loop, so client sockets are served
DEFAULT_BAD_STATUS = StatusCodes.BadDeviceFailure

WritePath = Literal["fast", "stock"]
ResetHook = Callable[[str, int], Any]

_COUNTER_TYPES = {8: ua.VariantType.Byte, 16: ua.VariantType.UInt16, 32: ua.VariantType.UInt32,
                  64: ua.VariantType.UInt64}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_GOOD = ua.StatusCode(ua.UInt32(StatusCodes.Good))
_NULL = ua.Variant(None, ua.VariantType.Null)


def variant_type(name: str, sig: Signal) -> ua.VariantType:
    if name in COUNTER_SIGNALS:
        return _COUNTER_TYPES[sig.counter_bits or 32]
    if name in (STATE_SIGNAL, REASON_SIGNAL):
        return ua.VariantType.Int32
    if name == PRODUCT_SIGNAL:
        return ua.VariantType.String
    return ua.VariantType.Double


def _initial(vt: ua.VariantType) -> Any:
    if vt == ua.VariantType.String:
        return ""
    if vt == ua.VariantType.Double:
        return 0.0
    return 0


def split_node(node: str) -> tuple[str, str]:
    """``ns=2;s=a.b`` → (``ns=2``, ``s=a.b``); ``nsu=urn:x;s=a`` → (``nsu=urn:x``, ``s=a``)."""
    head, _, rest = node.partition(";")
    return head, rest


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _dt(ms: int) -> ua.DateTime:
    # asyncua's DateTime is a datetime subclass; a plain aware datetime encodes the same
    return cast(ua.DateTime, _EPOCH + timedelta(milliseconds=ms))


def _now() -> ua.DateTime:
    return cast(ua.DateTime, datetime.now(UTC))


def _sid(ident: str, ns: int) -> ua.NodeId:
    """A string NodeId ``ns=<ns>;s=<ident>``."""
    return ua.NodeId(ua.String(ident), ua.Int16(ns))


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


class _FastDataValue(ua.DataValue):
    """A DataValue that is its own deep copy: asyncua deep-copies each notified value to guard
    against later mutation, and we never mutate one after writing it."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> _FastDataValue:
        return self


class _Machine:
    __slots__ = (
        "bad",
        "bad_pending",
        "bad_status",
        "bad_until",
        "by_signal",
        "counters",
        "cycle_var",
        "id",
        "line",
        "product",
        "product_var",
        "run_ms",
        "run_since",
        "silent",
        "silent_until",
        "skew_ms",
        "skew_until",
        "state",
        "vars",
    )

    def __init__(self, line: str, machine: str) -> None:
        self.line = line
        self.id = machine
        self.vars: list[_Var] = []
        self.by_signal: dict[str, _Var] = {}
        self.counters: list[_Var] = []
        self.product_var: _Var | None = None
        self.cycle_var: _Var | None = None
        self.state: str | None = None  # canonical, from the events
        self.product: Any = None
        self.run_ms = 0  # running time since the last part (CycleTime)
        self.run_since: int | None = None
        # faults (monotonic deadlines; math.inf: until ended)
        self.silent = False
        self.silent_until = 0.0
        self.bad = False
        self.bad_until = 0.0
        self.bad_pending = False  # the Bad rewrite of every variable is still to do
        self.bad_status = _status(DEFAULT_BAD_STATUS)
        self.skew_ms = 0
        self.skew_until = 0.0

    def enter_state(self, state: str, t_ms: int) -> None:
        if self.run_since is not None:
            self.run_ms += max(0, t_ms - self.run_since)
        self.run_since = t_ms if state == "running" else None
        self.state = state

    def cycle_s(self, t_ms: int) -> float:
        run = self.run_ms + (max(0, t_ms - self.run_since) if self.run_since is not None else 0)
        self.run_ms = 0
        if self.run_since is not None:
            self.run_since = t_ms
        return round(run / 1000, 3)


class _Var:
    __slots__ = (
        "attval",
        "bits",
        "dirty",
        "machine",
        "name",
        "nodeid",
        "offset",
        "raw",
        "retentive",
        "t_ms",
        "value",
        "vt",
    )

    def __init__(self, nodeid: ua.NodeId, vt: ua.VariantType, machine: _Machine, name: str) -> None:
        self.nodeid = nodeid
        self.vt = vt
        self.machine = machine
        self.name = name
        self.attval: Any = None  # asyncua's AttributeValue of the Value attribute
        self.bits = 0  # counters: register width
        self.retentive = False
        self.raw = 0  # counters: the model's register value; shown as (raw - offset) mod 2^bits
        self.offset = 0
        self.value: Any = _initial(vt)
        self.t_ms = 0
        self.dirty = False  # changed while silenced


class _Gauge:
    __slots__ = ("digits", "high", "last_ms", "low", "noise", "tau_s", "var", "x")

    def __init__(self, var: _Var, unit: str | None) -> None:
        self.var = var
        self.low, self.high, self.noise, self.tau_s = gauge_profile(var.name, unit)
        self.digits = 1 if self.high >= 1000 else 2
        self.x: float | None = None
        self.last_ms = 0


class _Access:
    """asyncua user manager: who may activate a session.

    asyncua lets a client create and activate a session over an unsecured channel even when the
    server offers no such endpoint (only well-behaved clients refuse by themselves). So on a
    secured server a session is accepted only over a channel secured with a trusted client
    certificate: asyncua hands us that channel's certificate (None on an unsecured one). Then,
    with users, the name and password must match."""

    def __init__(self, users: dict[str, str] | None, trusted: set[bytes] | None) -> None:
        self.users = users
        self.trusted = trusted  # None: an unsecured server

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if self.trusted is not None:
            der = certificate if isinstance(certificate, bytes) else None
            if der is None or der not in self.trusted:
                return None
        if self.users is None:
            return User(role=UserRole.User)
        if username is None or username not in self.users:
            return None
        if not hmac.compare_digest(self.users[username].encode(), (password or "").encode()):
            return None
        return User(role=UserRole.User, name=username)


def certificate_dir(src: OpcUaEndpoint) -> Path:
    """Where the simulator of ``src`` keeps its certificates (see ``OpcUaEndpoint``)."""
    if src.certificate_dir:
        return Path(src.certificate_dir)
    if src.certificate:
        return Path(src.certificate).parent
    return Path(certs.DEFAULT_CERTIFICATE_DIR)


def client_certificate(src: OpcUaEndpoint) -> certs.CertificatePair:
    """The client pair the simulator trusts: the plant's ``certificate``/``private_key``, else
    ``client.der``/``client.pem`` in its certificate folder; generated if missing."""
    folder = certificate_dir(src)
    cert = Path(src.certificate) if src.certificate else folder / "client.der"
    key = Path(src.private_key) if src.private_key else folder / "client.pem"
    return certs.ensure_client_certificate(cert, key)


def accepted_users(src: OpcUaEndpoint) -> dict[str, str] | None:
    if src.users:
        return dict(src.users)
    if src.username:
        return {src.username: src.resolve_password() or ""}  # password, password_env or password_file
    return None


class OpcUaPlc:
    """An asyncua server for one OPC UA source of the plant.

    ``init()`` builds the address space (not yet listening; ~2 s of asyncua's own init plus
    ~0.2 ms a variable), ``start()`` listens, ``apply(event)`` writes an event's registers,
    ``stop()`` stops. ``on_reset(machine_id, t_ms)`` (sync or async) is called after every
    counter reset, from the ``ResetCounters`` method or ``reset_counters()``.
    """

    def __init__(self, plant: Plant, source_id: str, *, on_reset: ResetHook | None = None,
                 write_path: WritePath = "fast", seed: int = 0,
                 max_monitored_items_per_call: int | None = None) -> None:
        src = plant.sources[source_id].opcua
        if src is None:
            raise ValueError(f"source '{source_id}' is not an OPC UA source")
        self.source_id = source_id
        self.config = src
        self.endpoint = src.endpoint
        u = urlsplit(src.endpoint)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 4840
        self.plant = plant
        self.on_reset = on_reset
        self.write_path: WritePath = write_path
        self.server = Server()
        # (machine, signal) -> (NodeId, VariantType) of the plant's signals
        self.nodes: dict[tuple[str, str], tuple[ua.NodeId, ua.VariantType]] = {}
        self.start_time: datetime | None = None
        self.restarts = 0
        self._machines: dict[str, _Machine] = {}
        self._extra_ids: dict[tuple[str, str], ua.NodeId] = {}
        self._gauges: list[_Gauge] = []
        self._rng = random.Random(f"{seed}/{source_id}")
        self._trusted: set[bytes] = set()
        self._folder_ns = 0
        self._started = False
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._housekeeper: asyncio.Task[None] | None = None
        self._restart_lock = asyncio.Lock()
        if max_monitored_items_per_call is not None and max_monitored_items_per_call < 1:
            raise ValueError("max_monitored_items_per_call must be at least 1")
        self.max_monitored_items_per_call = max_monitored_items_per_call
        self.monitor_calls_refused = 0

    # ---- building ------------------------------------------------------------------------
    async def _namespaces(self) -> dict[str, int]:
        """Register the namespaces the plant's node ids name; return prefix → index."""
        prefixes = [split_node(sig.node)[0] for _, m in self.plant.machines_of_source(self.source_id)
                    for sig in m.signals.values() if sig.node]
        ns_index = sorted({int(p[3:]) for p in prefixes if p.startswith("ns=")} | {EXTRA_NS})
        out: dict[str, int] = {}
        array: list[str] = await self.server.get_namespace_array()
        for i in range(len(array), max(ns_index) + 1):
            got = await self.server.register_namespace(f"urn:mieruka:simulator:{self.source_id}:ns{i}")
            assert got == i, (got, i)
        for i in ns_index:
            out[f"ns={i}"] = i
        for p in dict.fromkeys(p for p in prefixes if p.startswith("nsu=")):
            out[p] = await self.server.register_namespace(p[4:])
        out[""] = await self.server.register_namespace(FOLDER_NAMESPACE)
        return out

    async def _security(self) -> None:
        src = self.config
        if src.security == "none":
            self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            folder = certificate_dir(src)
            server_pair = certs.ensure_server_certificate(folder, self.source_id)
            client_pair = client_certificate(src)
            await self.server.load_certificate(str(server_pair.cert))
            await self.server.load_private_key(str(server_pair.key))
            policy = (ua.SecurityPolicyType.Basic256Sha256_Sign if src.security == "sign"
                      else ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
            self.server.set_security_policy([policy])
            trusted = [certs.load_certificate(client_pair.cert), *certs.trusted_certificates(folder)]
            self._trusted = {certs.der(c) for c in trusted}
            self.server.set_certificate_validator(self._validate_certificate)
            log.info("OPC UA simulator %s: %s with Basic256Sha256, certificates in %s", self.endpoint,
                     src.security, folder)
        users = accepted_users(src)
        self.server.set_identity_tokens([ua.UserNameIdentityToken] if users else [ua.AnonymousIdentityToken])
        self.server.iserver.set_user_manager(
            cast(Any, _Access(users, None if src.security == "none" else self._trusted)))

    async def _limit_monitored_items(self, limit: int) -> None:
        """Behave like a PLC with a small ``MaxMonitoredItemsPerCall``: state it in the server's
        operation limits (ns=0;i=11714) and refuse a CreateMonitoredItems call with more items
        as a whole (BadTooManyOperations), as such PLCs do; asyncua states 10 000 and enforces none."""
        limits = ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall
        node = self.server.get_node(ua.NodeId(ua.Int32(limits)))
        await node.write_value(ua.Variant(limit, ua.VariantType.UInt32))
        service = self.server.iserver.subscription_service
        create = service.create_monitored_items

        async def limited(params: ua.CreateMonitoredItemsParameters) -> list[ua.MonitoredItemCreateResult]:
            if len(params.ItemsToCreate) > limit:
                self.monitor_calls_refused += 1
                raise ServiceError(StatusCodes.BadTooManyOperations)
            return await create(params)

        service.create_monitored_items = limited  # type: ignore[method-assign]

    async def _validate_certificate(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        if certs.der(cert) not in self._trusted:
            log.warning("OPC UA simulator %s: rejected an untrusted client certificate (%s)", self.endpoint,
                        cert.subject.rfc4514_string())
            raise ServiceError(StatusCodes.BadCertificateUntrusted)

    async def init(self) -> None:
        """Build the server and its address space; takes ~2 s (asyncua's own init) plus
        ~0.2 ms a variable."""
        await self.server.init()
        if self.max_monitored_items_per_call is not None:
            await self._limit_monitored_items(self.max_monitored_items_per_call)
        await self.server.set_application_uri(certs.server_app_uri(self.source_id))
        self.server.set_endpoint(self.endpoint)
        self.server.set_server_name(f"mieruka simulator ({self.source_id})")
        await self._security()
        ns = await self._namespaces()
        folder_ns = self._folder_ns = ns[""]
        objects = self.server.nodes.objects
        line_folders: dict[str, Node] = {}
        taken = set()
        for _, m in self.plant.machines_of_source(self.source_id):
            for sig in m.signals.values():
                if sig.node:
                    prefix, ident = split_node(sig.node)
                    taken.add(ua.NodeId.from_string(f"ns={ns[prefix]};{ident}"))
        for line, m in self.plant.machines_of_source(self.source_id):
            if line.id not in line_folders:
                line_folders[line.id] = await objects.add_folder(
                    _sid(line.id, folder_ns), ua.QualifiedName(line.id, folder_ns))
            mach = _Machine(line.id, m.id)
            self._machines[m.id] = mach
            folder = await line_folders[line.id].add_folder(
                _sid(f"{line.id}/{m.id}", folder_ns), ua.QualifiedName(m.id, folder_ns))
            parents = _Spill(folder, f"{line.id}/{m.id}", folder_ns)
            # the method belongs to the machine's folder itself, whatever spills into subfolders
            method_id = _sid(f"{line.id}.{m.id}.{RESET_COUNTERS}", EXTRA_NS)
            await (await parents.next()).add_method(method_id, ua.QualifiedName(RESET_COUNTERS, EXTRA_NS),
                                                    self._reset_method(m.id), [], [])
            self._extra_ids[(m.id, RESET_COUNTERS)] = method_id
            for name, sig in m.signals.items():
                if not sig.node:
                    continue
                prefix, ident = split_node(sig.node)
                idx = ns[prefix]
                nodeid = ua.NodeId.from_string(f"ns={idx};{ident}")
                vt = variant_type(name, sig)
                var = await self._add_var(await parents.next(), mach, nodeid, ua.QualifiedName(name, idx), name, vt)
                self.nodes[(m.id, name)] = (nodeid, vt)
                if name in COUNTER_SIGNALS:
                    var.bits = sig.counter_bits or 32
                    var.retentive = sig.retentive
                    mach.counters.append(var)
                elif name not in MEANINGFUL_SIGNALS:
                    self._gauges.append(_Gauge(var, sig.unit))
            extras: list[tuple[str, ua.VariantType]] = [(CYCLE_TIME, ua.VariantType.Double)]
            if PRODUCT_SIGNAL not in mach.by_signal:
                extras.insert(0, (PRODUCT, ua.VariantType.String))
            for extra, vt in extras:
                nodeid = _sid(f"{line.id}.{m.id}.{extra}", EXTRA_NS)
                if nodeid in taken:
                    log.warning("OPC UA simulator: %s is a signal of the plant; no %s variable for %s",
                                nodeid.to_string(), extra, m.id)
                    continue
                var = await self._add_var(await parents.next(), mach, nodeid, ua.QualifiedName(extra, EXTRA_NS),
                                          extra, vt)
                self._extra_ids[(m.id, extra)] = nodeid
                if extra == PRODUCT:
                    mach.by_signal[PRODUCT_SIGNAL] = var
                else:
                    mach.cycle_var = var
            mach.product_var = mach.by_signal.get(PRODUCT_SIGNAL)
        aspace = self.server.iserver.aspace
        for mach in self._machines.values():
            for var in mach.vars:
                var.attval = aspace[var.nodeid].attributes[AttributeIds.Value]
        log.info("OPC UA simulator %s: %d variables for %d machines", self.endpoint, self.variables,
                 len(self._machines))

    async def _add_var(self, parent: Node, mach: _Machine, nodeid: ua.NodeId, qname: ua.QualifiedName, name: str,
                       vt: ua.VariantType) -> _Var:
        await parent.add_variable(nodeid, qname, ua.Variant(_initial(vt), vt))
        var = _Var(nodeid, vt, mach, name)
        mach.vars.append(var)
        mach.by_signal[name] = var
        return var

    def _reset_method(self, machine_id: str) -> Callable[..., Any]:
        async def reset(parent: ua.NodeId, *args: Any) -> list[ua.Variant]:
            await self.reset_counters(machine_id)
            return []

        return reset

    # ---- introspection -------------------------------------------------------------------
    @property
    def variables(self) -> int:
        return sum(len(m.vars) for m in self._machines.values())

    @property
    def listening(self) -> bool:
        """Started and accepting connections (False while a restart keeps it away)."""
        return self._started and self.server.bserver is not None

    @property
    def gauges(self) -> int:
        return len(self._gauges)

    def node_id(self, machine: str, name: str) -> str:
        """NodeId string of a machine's variable: a plant signal name (``good``, ``state``...),
        ``Product``, ``CycleTime`` or ``ResetCounters``."""
        if (machine, name) in self.nodes:
            return self.nodes[(machine, name)][0].to_string()
        return self._extra_ids[(machine, name)].to_string()

    def folder_id(self, machine: str) -> str:
        """NodeId string of a machine's folder (where its ``ResetCounters`` method lives)."""
        m = self._machines[machine]
        return _sid(f"{m.line}/{m.id}", self._folder_ns).to_string()

    # ---- running -------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on exactly the endpoint's host and port."""
        await self.server.start()
        self._started = True
        self._stopping.clear()
        self.start_time = await self._read_start_time()
        self._housekeeper = asyncio.create_task(self._housekeep(), name=f"opcua-faults-{self.source_id}")
        log.info("OPC UA simulator listening on %s:%s (source %s)", self.host, self.port, self.source_id)

    async def stop(self) -> None:
        if self._started:
            self._stopping.set()
            async with self._restart_lock:  # a restart in progress returns at once on _stopping
                pass
            self._started = False
            if self._housekeeper is not None:
                self._housekeeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._housekeeper
                self._housekeeper = None
            await self.server.stop()
            log.info("OPC UA simulator %s stopped", self.endpoint)

    async def apply(self, event: Event) -> None:
        """Write the registers an event changes, with the event's time as SourceTimestamp."""
        m = self._machines.get(event.machine)
        if m is None:
            return
        t = event.t_ms
        if event.kind == "part" and m.cycle_var is not None:
            await self._put(m.cycle_var, m.cycle_s(t), t)
        if event.state is not None:
            m.enter_state(event.state, t)
        wrote_product = False
        for signal, value in event.raw:
            var = m.by_signal.get(signal)
            if var is None:
                continue
            if var.bits:
                var.raw = int(value)
                value = (var.raw - var.offset) % (1 << var.bits)
            else:
                # the fast write path skips asyncua's type check: give the variable its own type
                value = _coerce(var.vt, value)
                if signal == PRODUCT_SIGNAL:
                    wrote_product = True
                    m.product = value
            await self._put(var, value, t)
        if not wrote_product and event.product is not None and event.product != m.product \
                and m.product_var is not None:
            m.product = event.product
            await self._put(m.product_var, str(event.product), t)

    async def refresh_gauges(self, t_ms: int, part: int = 0, parts: int = 1) -> int:
        """Write a new value to every ``parts``-th gauge from the ``part``-th on, at ``t_ms``
        (scale mode: ``parts`` slices spread one refresh of all gauges over a period). A gauge
        approaches its running or stopped level with its time constant, plus noise, and always
        changes, so a subscriber is notified. Returns the number of writes."""
        gauges = self._gauges[part::parts] if parts > 1 else self._gauges
        src = _dt(t_ms)
        now = _now()
        gauss = self._rng.gauss
        n = 0
        for g in gauges:
            var = g.var
            m = var.machine
            target = g.high if m.state == "running" else g.low
            if g.x is None:
                g.x = target
            else:
                dt = max(0, t_ms - g.last_ms) / 1000
                g.x += (target - g.x) * (1.0 - math.exp(-dt / g.tau_s))
            g.last_ms = t_ms
            v = round(g.x + gauss(0.0, g.noise), g.digits)
            if v == var.value:
                v = round(v + 10.0 ** -g.digits, g.digits)
            var.value = v
            var.t_ms = t_ms
            if m.silent:
                var.dirty = True
                continue
            await self._emit(var, src=None if m.skew_ms else src, now=now)
            n += 1
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return n

    # ---- writing -------------------------------------------------------------------------
    async def _put(self, var: _Var, value: Any, t_ms: int) -> None:
        var.value = value
        var.t_ms = t_ms
        if var.machine.silent:
            var.dirty = True
            return
        await self._emit(var)

    async def _emit(self, var: _Var, *, t_ms: int | None = None, src: ua.DateTime | None = None,
                    now: ua.DateTime | None = None) -> None:
        """Write ``var``'s value as the PLC shows it now: Bad while bad_quality, source time
        shifted while skewed. ``t_ms`` overrides the value's own time; ``src`` is a ready
        SourceTimestamp (no skew) for batches."""
        m = var.machine
        if src is None:
            src = _dt((var.t_ms if t_ms is None else t_ms) + m.skew_ms)
        if now is None:
            now = _now()
        if self.write_path == "stock":
            if m.bad:
                dv = ua.DataValue(_NULL, StatusCode=m.bad_status, SourceTimestamp=src, ServerTimestamp=now)
            else:
                dv = ua.DataValue(ua.Variant(var.value, var.vt), SourceTimestamp=src, ServerTimestamp=now)
            await self.server.write_attribute_value(var.nodeid, dv)
            return
        if m.bad:
            # a Bad value carries no value (OPC UA Part 4, 7.7.1), as asyncua's own write does
            dv = _FastDataValue(_NULL, StatusCode=m.bad_status, SourceTimestamp=src, ServerTimestamp=now)
        else:
            dv = _FastDataValue(ua.Variant(var.value, var.vt), StatusCode=_GOOD, SourceTimestamp=src,
                                ServerTimestamp=now)
        av = var.attval
        av.value = dv
        if av.datachange_callbacks:
            for handle, callback in list(av.datachange_callbacks.items()):
                try:
                    await callback(handle, dv)
                except Exception:
                    log.exception("OPC UA simulator: a subscription failed on %s", var.nodeid.to_string())

    async def _rewrite(self, m: _Machine, t_ms: int) -> None:
        """Write every variable of ``m`` again at ``t_ms`` (its status changed)."""
        now = _now()
        for i, var in enumerate(m.vars, 1):
            if m.silent:
                var.dirty = True
                continue
            await self._emit(var, t_ms=t_ms, now=now)
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def _flush(self, m: _Machine) -> None:
        """After a silence: write what changed meanwhile, with the times it changed."""
        for i, var in enumerate(m.vars, 1):
            if var.dirty:
                var.dirty = False
                await self._emit(var)
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    # ---- faults --------------------------------------------------------------------------
    async def reset_counters(self, machine_id: str) -> None:
        """Set the machine's counters to 0 now (retentive or not): they count parts since the
        reset from then on. Then calls ``on_reset(machine_id, t_ms)``."""
        m = self._machines.get(machine_id)
        if m is None:
            raise ValueError(f"machine '{machine_id}' is not served by source '{self.source_id}'")
        t = wall_ms()
        for var in m.counters:
            var.offset = var.raw
            await self._put(var, 0, t)
        log.info("OPC UA simulator %s: counters of %s reset", self.endpoint, machine_id)
        if self.on_reset is not None:
            try:
                result = self.on_reset(machine_id, t)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("OPC UA simulator: the reset hook failed for %s", machine_id)

    async def restart(self, down_s: float) -> None:
        """Restart the PLC: stop listening and drop every session and subscription, set the
        non-retentive counters to 0, stay away ``down_s`` seconds, then listen again with a
        new ``ServerStatus.StartTime`` (ns=0;i=2257). Returns once the server is back (or at
        ``stop()``).

        The model keeps running meanwhile: parts made while the PLC is away are counted by
        every counter (non-retentive ones from 0), so after the restart a non-retentive
        counter shows exactly the parts made since the restart began (modulo its width) and a
        retentive one goes on from where it was."""
        if not self._started:
            raise RuntimeError("restart() needs a started server")
        async with self._restart_lock:
            log.info("OPC UA simulator %s: restart, away for %.1f s", self.endpoint, down_s)
            await self._close_listener()
            t = wall_ms()
            for m in self._machines.values():
                for var in m.counters:
                    if not var.retentive:
                        var.offset = var.raw
                        await self._put(var, 0, t)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=max(0.0, down_s))
            if self._stopping.is_set():
                return
            await self._set_start_time(_now())
            await self._open_listener()
            self.restarts += 1
            log.info("OPC UA simulator %s: back after restart", self.endpoint)

    def silence(self, duration_s: float | None = None, *, until: float | None = None,
                machines: Iterable[str] | None = None) -> None:
        """The PLC stays reachable and answers reads, but its values stop changing until
        ``duration_s`` seconds from now (or ``until``, a ``time.monotonic()`` time; neither:
        until ``end_faults()``). What changed meanwhile is written when it ends, with the
        times it changed. ``machines``: only these (default all)."""
        end = _deadline(duration_s, until)
        for m in self._select(machines):
            m.silent = True
            m.silent_until = end
        self._wake.set()

    def bad_quality(self, duration_s: float | None = None, *, until: float | None = None,
                    machines: Iterable[str] | None = None, status: int = DEFAULT_BAD_STATUS) -> None:
        """Every variable is written at once, and every write meanwhile is made, with the Bad
        ``status`` (default Bad_DeviceFailure) and no value, until ``duration_s`` from now (or
        ``until``; neither: ``end_faults()``); then every variable is written again with its
        value and Good status, at that time."""
        end = _deadline(duration_s, until)
        code = _status(status)
        if not code.is_bad():
            raise ValueError(f"status 0x{status:08X} is not a Bad status code")
        for m in self._select(machines):
            m.bad = True
            m.bad_until = end
            m.bad_pending = True
            m.bad_status = code
        self._wake.set()

    def skew(self, seconds: float, duration_s: float | None = None, *, until: float | None = None,
             machines: Iterable[str] | None = None) -> None:
        """Source timestamps of the writes in the window are ``seconds`` late (positive: in the
        future), as a PLC with a wrong clock; for ``duration_s`` (or until ``until``; neither:
        until ``end_faults()``)."""
        end = _deadline(duration_s, until)
        for m in self._select(machines):
            m.skew_ms = round(seconds * 1000)
            m.skew_until = end
        self._wake.set()

    def end_faults(self) -> None:
        """End every silence, bad quality and skew now: the next write has true times; what a
        silence held back and the Good values after bad quality follow at once (the server's
        fault task writes them)."""
        now = time.monotonic()
        for m in self._machines.values():
            m.silent_until = min(m.silent_until, now)
            m.bad_until = min(m.bad_until, now)
            m.skew_ms = 0
        self._wake.set()

    def _select(self, machines: Iterable[str] | None) -> list[_Machine]:
        if machines is None:
            return list(self._machines.values())
        out = []
        for mid in machines:
            if mid not in self._machines:
                raise ValueError(f"machine '{mid}' is not served by source '{self.source_id}'")
            out.append(self._machines[mid])
        return out

    async def _housekeep(self) -> None:
        """Begin and end fault windows on time, whether or not events arrive."""
        while True:
            self._wake.clear()
            now = time.monotonic()
            t = wall_ms()
            deadline = math.inf
            for m in self._machines.values():
                if m.bad and m.bad_until <= now:
                    m.bad = m.bad_pending = False
                    await self._rewrite(m, t)
                elif m.bad and m.bad_pending:
                    m.bad_pending = False
                    await self._rewrite(m, t)
                if m.silent and m.silent_until <= now:
                    m.silent = False
                    await self._flush(m)
                if m.skew_ms and m.skew_until <= now:
                    m.skew_ms = 0
                if m.bad:
                    deadline = min(deadline, m.bad_until)
                if m.silent:
                    deadline = min(deadline, m.silent_until)
                if m.skew_ms:
                    deadline = min(deadline, m.skew_until)
            timeout = None if math.isinf(deadline) else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    # ---- restart internals ---------------------------------------------------------------
    async def _close_listener(self) -> None:
        binary = self.server.bserver
        self.server.bserver = None
        if binary is not None:
            await binary.stop()
        # asyncua keeps sessions with subscriptions alive for a reconnect (Part 4, 6.7); a
        # restarted PLC has none, so close them and their subscriptions
        sessions = getattr(self.server.iserver, "_external_sessions", {})
        for session in list(sessions.values()):
            with contextlib.suppress(Exception):
                await session.close_session(True)

    async def _open_listener(self) -> None:
        binary = BinaryServer(self.server.iserver, self.host, self.port, self.server.limits)
        # the security policies Server.start() built once; start() itself cannot run twice
        binary.set_policies(self.server._policies)
        await binary.start()
        if self._stopping.is_set():
            await binary.stop()
            return
        self.server.bserver = binary

    async def _read_start_time(self) -> datetime:
        node = self.server.get_node(ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus_StartTime)))
        value = await node.read_value()
        return cast(datetime, value)

    async def _set_start_time(self, t: datetime) -> None:
        status_node = self.server.get_node(ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus)))
        status = copy.copy(await status_node.read_value())
        status.StartTime = t
        status.State = ua.ServerState.Running
        await status_node.write_value(status)
        await self.server.get_node(ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus_StartTime))).write_value(
            ua.Variant(t, ua.VariantType.DateTime))
        self.start_time = t


class _Spill:
    """Hands out the parent for a machine's next node: its folder for the first
    ``FOLDER_CHILDREN``, then subfolders ``2``, ``3``... of as many each."""

    def __init__(self, folder: Node, path: str, ns: int) -> None:
        self.folder = folder
        self.path = path
        self.ns = ns
        self.count = 0
        self.current = folder

    async def next(self) -> Node:
        self.count += 1
        if self.count > FOLDER_CHILDREN and (self.count - 1) % FOLDER_CHILDREN == 0:
            k = (self.count - 1) // FOLDER_CHILDREN + 1
            self.current = await self.folder.add_folder(_sid(f"{self.path}/{k}", self.ns),
                                                        ua.QualifiedName(str(k), self.ns))
        return self.current


def _coerce(vt: ua.VariantType, value: Any) -> Any:
    if vt == ua.VariantType.Double:
        return float(value)
    if vt == ua.VariantType.String:
        return str(value)
    return int(value)


def _deadline(duration_s: float | None, until: float | None) -> float:
    if until is not None:
        return until
    if duration_s is not None:
        return time.monotonic() + max(0.0, duration_s)
    return math.inf
