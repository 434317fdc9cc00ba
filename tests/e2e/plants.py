"""Small plants for end-to-end runs: short cycle times so a 20 s window holds many parts."""

from __future__ import annotations

from typing import Any

from core.plant import Plant, parse_plant

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
STATE_MAP = {1: "running", 2: "idle", 3: "down", 4: "changeover", 5: "planned"}


def _opcua_machine(line: str, mid: str, cycle: float, bits: int) -> dict[str, Any]:
    n = f"ns=2;s={line}.{mid}"
    return {
        "id": mid, "name": {"ja": f"機械 {mid}", "en": f"Machine {mid}"}, "ideal_cycle_s": cycle, "source": "plc",
        "signals": {
            "good": {"node": f"{n}.GoodCount", "counter_bits": bits},
            "scrap": {"node": f"{n}.ScrapCount", "counter_bits": bits},
            "state": {"node": f"{n}.State", "map": STATE_MAP},
            "reason": {"node": f"{n}.StopReason"},
            "temp": {"node": f"{n}.Temp", "unit": "°C"},
        },
        "simulation": {"scrap_rate": 0.1, "mtbf_s": 8, "mttr_s": 2, "reasons": [20, 10], "micro_stop_rate_per_h": 0},
    }


def _mqtt_machine(line: str, mid: str, cycle: float, prefix: str) -> dict[str, Any]:
    base = f"{prefix}/{line}/{mid}"
    t = {"time_field": "ts", "time_unit": "ms"}
    return {
        "id": mid, "name": f"Machine {mid}", "ideal_cycle_s": cycle, "source": "broker",
        "signals": {
            "good": {"topic": f"{base}/counts", "field": "good", "counter_bits": 32, **t},
            "scrap": {"topic": f"{base}/counts", "field": "scrap", "counter_bits": 32, **t},
            "state": {"topic": f"{base}/state", "field": "code", "map": {0: "planned", **STATE_MAP}, **t},
            "reason": {"topic": f"{base}/state", "field": "reason", **t},
        },
        "simulation": {"scrap_rate": 0.1, "mtbf_s": 8, "mttr_s": 2, "reasons": [21], "micro_stop_rate_per_h": 0},
    }


def fast_plant(opcua_port: int, mqtt_port: int, *, all_day: bool = True, prefix: str = "e2e") -> Plant:
    """Two lines: `ua` (2 machines over OPC UA, 16-bit counters) and `mq` (2 machines over MQTT).

    `prefix` starts every MQTT topic: runs sharing a broker use their own, so retained messages of
    one run never reach another."""
    shifts: list[dict[str, Any]]
    if all_day:
        shifts = [{"id": "all", "start": "00:00", "end": "00:00", "days": ALL_DAYS}]
    else:
        shifts = [
            {"id": "day", "start": "08:00", "end": "17:00", "days": ALL_DAYS,
             "breaks": [["10:00", "10:10"], ["12:00", "12:45"]]},
            {"id": "night", "start": "20:00", "end": "05:00", "days": ALL_DAYS, "breaks": [["00:00", "00:45"]]},
        ]
    raw = {
        "site": {"id": "e2e", "name": {"ja": "試験工場", "en": "Test plant"}, "timezone": "Asia/Tokyo", "locale": "en"},
        "calendar": {"shifts": shifts, "micro_stop_s": 120},
        "reasons": {
            10: {"name": {"ja": "工具交換", "en": "Tool change"}, "category": "changeover"},
            20: {"name": {"ja": "主軸異常", "en": "Spindle fault"}, "category": "breakdown"},
            21: {"name": {"ja": "油圧異常", "en": "Hydraulic fault"}, "category": "breakdown"},
        },
        "sources": {
            "plc": {"opcua": {"endpoint": f"opc.tcp://127.0.0.1:{opcua_port}"}},
            "broker": {"mqtt": {"host": "127.0.0.1", "port": mqtt_port, "qos": 1}},
        },
        "lines": [
            {"id": "ua", "name": {"ja": "OPC UA ライン", "en": "OPC UA line"}, "target_per_hour": 3000,
             "machines": [_opcua_machine("ua", "ua-1", 0.6, 16), _opcua_machine("ua", "ua-2", 0.8, 16)]},
            {"id": "mq", "name": {"ja": "MQTT ライン", "en": "MQTT line"}, "target_per_hour": 3000,
             "machines": [_mqtt_machine("mq", "mq-1", 0.5, prefix), _mqtt_machine("mq", "mq-2", 0.7, prefix)]},
        ],
    }
    return parse_plant(raw, "<e2e plant>")
