"""One OPC UA server per OPC UA source of the plant, serving its machines' signals.

Variables get exactly the NodeIds of the plant file (``ns=2;s=...`` or ``nsu=<uri>;s=...``);
namespaces are registered so that the indices the plant file uses exist. Each machine has its
own folder (Objects/<line>/<machine>): asyncua gets superlinearly slow when thousands of
variables share one parent. Values are written with the event's time as SourceTimestamp.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

from asyncua import ua
from asyncua.server.server import Server

from core.model import COUNTER_SIGNALS, PRODUCT_SIGNAL, REASON_SIGNAL, STATE_SIGNAL
from core.plant import Plant, Signal
from simulators.model import Event, from_ms

log = logging.getLogger(__name__)

FOLDER_NAMESPACE = "urn:mieruka:simulator:folders"
_COUNTER_TYPES = {8: ua.VariantType.Byte, 16: ua.VariantType.UInt16, 32: ua.VariantType.UInt32,
                  64: ua.VariantType.UInt64}


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


class OpcUaPlc:
    """An asyncua server for one source. ``init()`` builds the address space (not yet
    listening), ``start()`` listens, ``apply(event)`` writes an event's registers."""

    def __init__(self, plant: Plant, source_id: str) -> None:
        src = plant.sources[source_id].opcua
        if src is None:
            raise ValueError(f"source '{source_id}' is not an OPC UA source")
        self.source_id = source_id
        self.endpoint = src.endpoint
        if src.security != "none" or src.username:
            log.warning("simulator for source '%s' serves without security or users (the plant asks for %s)",
                        source_id, src.security)
        self.plant = plant
        self.server = Server()
        self.nodes: dict[tuple[str, str], tuple[ua.NodeId, ua.VariantType]] = {}
        self._started = False

    async def _namespaces(self) -> dict[str, int]:
        """Register the namespaces the plant's node ids name; return prefix → index."""
        prefixes = [split_node(sig.node)[0] for _, m in self.plant.machines_of_source(self.source_id)
                    for sig in m.signals.values() if sig.node]
        ns_index = sorted({int(p[3:]) for p in prefixes if p.startswith("ns=")})
        out: dict[str, int] = {}
        array: list[str] = await self.server.get_namespace_array()
        for i in range(len(array), (max(ns_index) + 1) if ns_index else 0):
            got = await self.server.register_namespace(f"urn:mieruka:simulator:{self.source_id}:ns{i}")
            assert got == i, (got, i)
        for i in ns_index:
            out[f"ns={i}"] = i
        for p in dict.fromkeys(p for p in prefixes if p.startswith("nsu=")):
            out[p] = await self.server.register_namespace(p[4:])
        out[""] = await self.server.register_namespace(FOLDER_NAMESPACE)
        return out

    async def init(self) -> None:
        """Build the server and its address space; takes ~2 s (asyncua's own init)."""
        await self.server.init()
        await self.server.set_application_uri(f"urn:mieruka:simulator:{self.source_id}")
        self.server.set_endpoint(self.endpoint)
        self.server.set_server_name(f"mieruka simulator ({self.source_id})")
        self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await self._namespaces()
        folder_ns = ns[""]
        objects = self.server.nodes.objects
        line_folders: dict[str, Any] = {}
        for line, m in self.plant.machines_of_source(self.source_id):
            if line.id not in line_folders:
                line_folders[line.id] = await objects.add_folder(
                    ua.NodeId.from_string(f"ns={folder_ns};s={line.id}"), ua.QualifiedName(line.id, folder_ns))
            folder = await line_folders[line.id].add_folder(
                ua.NodeId.from_string(f"ns={folder_ns};s={line.id}/{m.id}"), ua.QualifiedName(m.id, folder_ns))
            for name, sig in m.signals.items():
                if not sig.node:
                    continue
                prefix, ident = split_node(sig.node)
                idx = ns[prefix]
                nodeid = ua.NodeId.from_string(f"ns={idx};{ident}")
                vt = variant_type(name, sig)
                await folder.add_variable(nodeid, ua.QualifiedName(name, idx), ua.Variant(_initial(vt), vt))
                self.nodes[(m.id, name)] = (nodeid, vt)
        log.info("OPC UA simulator %s: %d variables for %d machines", self.endpoint, len(self.nodes),
                 len(self.plant.machines_of_source(self.source_id)))

    async def start(self) -> None:
        """Listen on exactly the endpoint's host and port."""
        await self.server.start()
        self._started = True
        u = urlsplit(self.endpoint)
        log.info("OPC UA simulator listening on %s:%s (source %s)", u.hostname, u.port, self.source_id)

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.server.stop()
            log.info("OPC UA simulator %s stopped", self.endpoint)

    async def apply(self, event: Event) -> None:
        if not event.raw:
            return
        # asyncua's DateTime is a datetime subclass; a plain aware datetime encodes the same
        src_t = cast(ua.DateTime, from_ms(event.t_ms))
        now = cast(ua.DateTime, datetime.now(UTC))
        for signal, value in event.raw:
            found = self.nodes.get((event.machine, signal))
            if found is None:
                continue
            nodeid, vt = found
            dv = ua.DataValue(ua.Variant(value, vt), SourceTimestamp=src_t, ServerTimestamp=now)
            # the server's local write: no session round trip, and it fires subscriptions
            await self.server.write_attribute_value(nodeid, dv)
