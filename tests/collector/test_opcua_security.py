"""The OPC UA source against the bundled simulator as a real asyncua server:

- secured (Basic256Sha256, SignAndEncrypt): a server certificate that is neither in ``trust_dir``
  nor pinned by ``server_cert_sha256`` is refused (the reason, with its fingerprint, logged once;
  retried with backoff); trusted from a folder (relative to the plant file) or by fingerprint,
  the source collects;
- a server limiting ``MaxMonitoredItemsPerCall`` (it refuses larger calls as a whole) is
  subscribed in full, in batches within its limit;
- ``nsu=`` node ids are resolved with one read of the namespace array per connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import Client, ua
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from collector.sources import SourceOffline
from collector.sources.opcua import OpcUaSource
from core.plant import Plant, load_plant, parse_plant
from simulators.model import Event
from simulators.opcua_plc import OpcUaPlc, wall_ms
from tests.collector.conftest import eventually, running, take_samples
from tests.support.services import free_port

STATE_MAP = {1: "running", 2: "idle", 3: "down"}
NSU = "urn:mieruka:test:plc"


def plant_raw(port: int, gauges: int = 2, **opcua: Any) -> dict[str, Any]:
    signals: dict[str, Any] = {"good": {"node": "ns=2;s=ln.m1.GoodCount", "counter_bits": 32},
                               "state": {"node": "ns=2;s=ln.m1.State", "map": STATE_MAP}}
    for i in range(gauges):
        # half of them by namespace URI, as some PLCs publish their node ids
        signals[f"g{i:02d}"] = {"node": f"nsu={NSU};s=ln.m1.G{i:02d}" if i % 2 else f"ns=2;s=ln.m1.G{i:02d}"}
    return {"site": {"id": "opcua-sec"},
            "sources": {"plc": {"opcua": {"endpoint": f"opc.tcp://127.0.0.1:{port}", **opcua}}},
            "lines": [{"id": "ln", "machines": [{"id": "m1", "source": "plc", "signals": signals}]}]}


def source(plant: Plant) -> OpcUaSource:
    spec = plant.sources["plc"].opcua
    assert spec is not None
    signals = [(m.id, name, sig.node, sig) for _, m in plant.machines() for name, sig in m.signals.items()
               if sig.node]
    return OpcUaSource("plc", spec, signals, backoff_initial_s=0.2, backoff_max_s=0.5)


async def start(plc: OpcUaPlc) -> None:
    await plc.init()
    await plc.apply(Event(wall_ms(), "ln", "m1", "state", (("good", 42), ("state", 1)), state="running",
                          initial=True))
    await plc.start()


async def test_an_untrusted_server_is_refused_and_a_trusted_one_collects(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    certdir = tmp_path / "certs"
    secured = {"security": "sign_and_encrypt", "certificate_dir": str(certdir),
               "certificate": str(certdir / "client.der"), "private_key": str(certdir / "client.pem")}
    port = free_port()
    plc = OpcUaPlc(parse_plant(plant_raw(port, **secured)), "plc")
    await start(plc)
    try:
        der = (certdir / "server-plc.der").read_bytes()
        fingerprint = hashlib.sha256(der).hexdigest()
        caplog.set_level(logging.WARNING, logger="collector.sources.opcua")

        async def refused(plant: Plant, why: str) -> None:
            caplog.clear()
            src = source(plant)
            items: list[Any] = []

            async def pump() -> None:
                async for item in src:  # the source retries while it is iterated
                    items.append(item)

            async with src:
                task = asyncio.create_task(pump())
                try:
                    await eventually(lambda: src.stats.connect_failures >= 3, within_s=15, what="three attempts")
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            assert src.stats.connects == 0
            [offline] = items  # one per outage
            assert isinstance(offline, SourceOffline), offline
            assert f"SHA-256 {fingerprint}) is not {why}" in offline.reason, offline.reason
            logged = [r.getMessage() for r in caplog.records if r.name == "collector.sources.opcua"]
            assert len(logged) == 1 and fingerprint in logged[0], logged

        await refused(parse_plant(plant_raw(port, **secured)), "trusted: set trust_dir or server_cert_sha256")
        wrong_pin = "ab" * 32
        await refused(parse_plant(plant_raw(port, **secured, server_cert_sha256=wrong_pin)),
                      f"pinned (server_cert_sha256 {wrong_pin})")
        (tmp_path / "other").mkdir()
        await refused(parse_plant(plant_raw(port, **secured, trust_dir=str(tmp_path / "other"))),
                      f"in trust_dir {tmp_path / 'other'}")

        # trusted from a folder named relative to the plant file (here as PEM)
        (tmp_path / "trusted-servers").mkdir()
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        (tmp_path / "trusted-servers" / "plc.pem").write_bytes(pem)
        plant_file = tmp_path / "plant.yaml"
        plant_file.write_text(yaml.safe_dump(plant_raw(port, **secured, trust_dir="trusted-servers")), "utf-8")
        monkeypatch.chdir("/")
        for plant in (load_plant(plant_file),
                      # or pinned, written as openssl prints it
                      parse_plant(plant_raw(port, **secured, server_cert_sha256=":".join(
                          fingerprint[i:i + 2].upper() for i in range(0, 64, 2))))):
            src = source(plant)
            async with running(src) as got:
                samples = await take_samples(got, 4)
            assert {s.signal: s.value for s in samples}.items() >= {"good": 42, "state": 1}.items()
            assert src.stats.connects == 1
    finally:
        await plc.stop()


async def test_a_server_limiting_monitored_items_per_call_is_subscribed_in_full(tmp_path: Path) -> None:
    port = free_port()
    gauges = 28
    plant = parse_plant(plant_raw(port, gauges=gauges))
    plc = OpcUaPlc(plant, "plc", max_monitored_items_per_call=7)
    # the collector's plant names one more node, in a namespace this server does not have
    raw = plant_raw(port, gauges=gauges)
    raw["lines"][0]["machines"][0]["signals"]["gx"] = {"node": "nsu=urn:not:here;s=ln.m1.GX"}
    collected = parse_plant(raw)
    await start(plc)
    try:
        # the server refuses a call over its limit as a whole
        async with Client(plc.endpoint, timeout=5) as client:
            sub = await client.create_subscription(500, None)
            requests = []
            for handle, i in enumerate(range(0, gauges, 2), start=1):
                rv = ua.ReadValueId(NodeId=ua.NodeId.from_string(f"ns=2;s=ln.m1.G{i:02d}"),
                                    AttributeId=ua.AttributeIds.Value)
                requests.append(ua.MonitoredItemCreateRequest(
                    ItemToMonitor=rv, MonitoringMode=ua.MonitoringMode.Reporting,
                    RequestedParameters=ua.MonitoringParameters(ClientHandle=handle, QueueSize=1)))
            with pytest.raises(ua.uaerrors.BadTooManyOperations):
                await sub.create_monitored_items(requests)  # 14 items, limit 7
            assert plc.monitor_calls_refused == 1

        src = source(collected)
        async with running(src) as got:
            samples = await take_samples(got, gauges + 2)
            assert {s.signal for s in samples} == set(plant.lines[0].machines[0].signals)
            assert src.monitor_calls == 5 and plc.monitor_calls_refused == 1  # 30 items, 7 a call
            assert src.namespace_reads == 1  # 15 nsu= nodes, one read
            assert src.stats.errors == {"bad_node": 1}  # the unknown namespace: that node only
            # a new connection resolves the namespaces again, once
            await plc.restart(0.2)
            await eventually(lambda: src.stats.connects == 2, within_s=20, what="the reconnect")
            assert src.namespace_reads == 2
    finally:
        await plc.stop()
