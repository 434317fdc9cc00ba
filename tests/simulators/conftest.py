"""Plants for the simulator tests, built from dicts with core.plant.parse_plant."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.plant import Plant, parse_plant

DEMO_PLANT = Path(__file__).resolve().parents[2] / "deploy" / "plants" / "demo.yaml"
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
FAST_SIM = {"cycle_cv": 0.1, "scrap_rate": 0.15, "mtbf_s": 6, "mttr_s": 1.0, "micro_stop_rate_per_h": 400}


@pytest.fixture(scope="session")
def demo_raw() -> dict[str, Any]:
    """The demo plant file as loaded YAML (copy it before changing it)."""
    raw = yaml.safe_load(DEMO_PLANT.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


@pytest.fixture(scope="session")
def demo_plant(demo_raw: dict[str, Any]) -> Plant:
    return parse_plant(copy.deepcopy(demo_raw), DEMO_PLANT)


def _fast_base() -> dict[str, Any]:
    return {
        "site": {"id": "sim-test", "timezone": "Asia/Tokyo"},
        # production all day, every day: the live tests must not land in a break
        "calendar": {"shifts": [{"id": "all", "start": "00:00", "end": "00:00", "days": ALL_DAYS}],
                     "micro_stop_s": 2},
        "reasons": {10: {"name": "Tool change", "category": "changeover"},
                    20: {"name": "Spindle fault", "category": "breakdown"},
                    30: {"name": "Waiting for material", "category": "starved"},
                    40: {"name": "Minor stop", "category": "micro_stop"}},
        "sources": {},
        "lines": [{"id": "fast-1", "machines": []}],
    }


@pytest.fixture
def opcua_fast_plant() -> Callable[[int], Plant]:
    """A small OPC UA plant with sub-second cycles on opc.tcp://127.0.0.1:<port>; one machine
    has 8-bit counters starting at 250, so they wrap within seconds."""

    def make(port: int) -> Plant:
        raw = _fast_base()
        raw["sources"]["plc"] = {"opcua": {"endpoint": f"opc.tcp://127.0.0.1:{port}", "security": "none"}}
        state_map = {1: "running", 2: "idle", 3: "down", 4: "changeover", 5: "planned"}
        specs = [("m1", 0.5, 8, 250), ("m2", 0.7, 16, 0), ("m3", 0.9, 32, 4_294_967_290)]
        for mid, cycle, bits, start in specs:
            raw["lines"][0]["machines"].append({
                "id": mid, "ideal_cycle_s": cycle, "source": "plc",
                "signals": {
                    "good": {"node": f"ns=2;s=fast-1.{mid}.GoodCount", "counter_bits": bits},
                    "scrap": {"node": f"ns=2;s=fast-1.{mid}.ScrapCount", "counter_bits": bits},
                    "state": {"node": f"ns=2;s=fast-1.{mid}.State", "map": state_map},
                    "reason": {"node": f"ns=2;s=fast-1.{mid}.StopReason"},
                    # a node id by namespace URI, as some PLCs publish them
                    "temp": {"node": f"nsu=urn:example:plc;s=fast-1.{mid}.Temp", "unit": "°C"},
                },
                "simulation": {**FAST_SIM, "reasons": [10, 20, 30, 40], "counter_start": start},
            })
        return parse_plant(raw, "<opcua fast plant>")

    return make


@pytest.fixture
def mqtt_fast_plant() -> Callable[[str, int], tuple[Plant, str]]:
    """A small MQTT plant with sub-second cycles on the given broker; topics under a fresh
    prefix, so retained messages of other tests never mix in. Returns (plant, prefix)."""

    def make(host: str, port: int) -> tuple[Plant, str]:
        prefix = f"simtest-{uuid.uuid4().hex[:10]}"
        raw = _fast_base()
        raw["sources"]["broker"] = {"mqtt": {"host": host, "port": port, "qos": 1}}
        state_map = {0: "planned", 1: "running", 2: "idle", 3: "down", 4: "changeover"}
        for mid, cycle in (("p1", 0.5), ("p2", 0.8)):
            base = f"{prefix}/fast-1/{mid}"
            ts = {"time_field": "ts", "time_unit": "ms"}
            raw["lines"][0]["machines"].append({
                "id": mid, "ideal_cycle_s": cycle, "source": "broker",
                "signals": {
                    "good": {"topic": f"{base}/counts", "field": "good", **ts, "counter_bits": 16},
                    "scrap": {"topic": f"{base}/counts", "field": "scrap", **ts, "counter_bits": 16},
                    "state": {"topic": f"{base}/state", "field": "code", **ts, "map": state_map},
                    "reason": {"topic": f"{base}/state", "field": "reason", **ts},
                    "pressure": {"topic": f"{base}/process", "field": "pressure", **ts, "unit": "MPa"},
                },
                "simulation": {**FAST_SIM, "reasons": [10, 20, 30, 40], "counter_start": 65_530},
            })
        return parse_plant(raw, "<mqtt fast plant>"), prefix

    return make
