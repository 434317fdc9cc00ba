"""A source's password from `password_env` reaches a real OPC UA server (the bundled simulator,
which checks user name and password): the right one logs in, a wrong one does not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from collector.sources import SourceOffline
from collector.sources.opcua import OpcUaSource
from core.model import Sample
from core.plant import parse_plant
from simulators.model import Event
from simulators.opcua_plc import OpcUaPlc, wall_ms
from tests.collector.conftest import running, take
from tests.support.services import free_port


def plant_raw(port: int) -> dict[str, Any]:
    return {
        "site": {"id": "pw-test"},
        "sources": {"plc": {"opcua": {
            "endpoint": f"opc.tcp://127.0.0.1:{port}", "security": "none", "allow_password_without_security": True,
            "username": "operator", "password_env": "MIERUKA_TEST_OPC_PW",
            # the simulator's side: the one login it accepts
            "users": {"operator": "right-pw"}}}},
        "lines": [{"id": "ln", "machines": [{"id": "m1", "source": "plc", "signals": {
            "good": {"node": "ns=2;s=ln.m1.GoodCount", "counter_bits": 16}}}]}],
    }


async def test_password_env_logs_in_and_a_wrong_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    plant = parse_plant(plant_raw(free_port()), "<password plant>")
    endpoint = plant.sources["plc"].opcua
    assert endpoint is not None
    plc = OpcUaPlc(plant, "plc")
    await plc.init()
    await plc.apply(Event(wall_ms(), "ln", "m1", "count", (("good", 42),), initial=True))
    await plc.start()
    signals = [("m1", "good", plc.node_id("m1", "good"))]
    try:
        monkeypatch.setenv("MIERUKA_TEST_OPC_PW", "right-pw")
        src = OpcUaSource("plc", endpoint, signals)
        async with running(src) as got:
            [first] = await take(got, 1)
        assert isinstance(first, Sample) and first.value == 42 and src.stats.connects == 1

        monkeypatch.setenv("MIERUKA_TEST_OPC_PW", "wrong-pw")
        src = OpcUaSource("plc", endpoint, signals, backoff_initial_s=0.1, backoff_max_s=0.2)
        async with src:  # not `running`: that waits for a connection, which must not come
            # the first item of a source that cannot connect is the offline marker with the reason
            offline = await asyncio.wait_for(anext(src), timeout=10)
        assert isinstance(offline, SourceOffline), offline
        assert "BadUserAccessDenied" in offline.reason, offline.reason
        assert src.stats.connects == 0 and src.stats.connect_failures == 1
    finally:
        await plc.stop()
