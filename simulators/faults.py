"""Faults on demand for the live simulators, from the command line, a faults file or a test.

A fault is written ``KIND[:VALUE][@AT[+DURATION]][/SOURCE]``:

- ``restart@60s`` — the PLC restarts 60 s after start: OPC UA server away (default 5 s), back with
  non-retentive counters at 0 and a new ``ServerStatus.StartTime``; a Sparkplug B edge node drops
  its MQTT connection (the broker publishes its NDEATH), sets non-retentive counters to 0 and is
  born again after that time with the next ``bdSeq``.
- ``rollover`` — counters start a few parts short of their width, so they wrap soon after start.
- ``silence@30s+20s`` — server alive, no value updates for 20 s (MQTT: nothing published).
- ``bad_quality@10s+5s`` — OPC UA values written with a Bad status code for 5 s.
- ``skew:5s@10s+30s`` — source timestamps 5 s ahead (negative: behind) for 30 s.
- ``malformed:5%`` or ``malformed:0.05@0s+60s`` — that share of MQTT messages malformed.
- ``disconnect@20s+5s`` — the MQTT publisher drops its broker connection for 5 s.
- ``seq_gap@10s`` or ``seq_gap:3@10s`` — a Sparkplug B edge node loses its next (3) data
  messages on the way: their ``seq`` numbers are used, the messages never arrive.

``/SOURCE`` limits a fault to one source of the plant (default: every source it applies to).
Times are ``500ms``, ``30s``, ``2m``, ``1h`` or plain seconds. A faults file is YAML or JSON: a
list of such strings or of mappings ``{kind, at, duration, value, source}``. Each fault becomes a
ledger record ``{"t", "kind": "fault", "fault", ...}`` when it begins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from core.plant import Plant, Simulation

FaultKind = Literal["restart", "rollover", "silence", "bad_quality", "skew", "malformed", "disconnect", "seq_gap"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
OPCUA_ONLY = frozenset({"restart", "bad_quality"})
MQTT_ONLY = frozenset({"malformed", "disconnect", "seq_gap"})
SPARKPLUG_TOO = frozenset({"restart"})  # OPC UA faults a Sparkplug B edge node has as well
SPARKPLUG_ONLY = frozenset({"seq_gap"})

DEFAULT_DURATION_S: dict[str, float | None] = {
    "restart": 5.0, "rollover": None, "silence": 10.0, "bad_quality": 5.0, "skew": None,
    "malformed": None, "disconnect": 5.0, "seq_gap": None,
}
ROLLOVER_MARGIN = 3  # parts before a counter wraps, with the `rollover` fault

_DUR_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_FAULT_RE = re.compile(
    r"^(?P<kind>[a-z_]+)(?::(?P<value>[^@/]+))?(?:@(?P<at>[^+/]+)(?:\+(?P<dur>[^/]+))?)?(?:/(?P<source>[a-z0-9][a-z0-9_-]*))?$"
)


class FaultSpecError(ValueError):
    """A fault that cannot be understood; the message says what is allowed."""


def parse_duration(text: str) -> float:
    m = _DUR_RE.match(text)
    if not m:
        raise FaultSpecError(f"'{text}' is not a duration; write 500ms, 30s, 2m, 1h or seconds")
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    at_s: float = 0.0
    duration_s: float | None = None
    value: float | None = None
    source: str | None = None

    def record(self) -> dict[str, Any]:
        """The ledger fields of this fault (the writer adds ``t`` and ``kind``)."""
        rec: dict[str, Any] = {"fault": self.kind}
        if self.source is not None:
            rec["source"] = self.source
        if self.duration_s is not None:
            rec["duration_s"] = self.duration_s
        if self.value is not None:
            rec["value"] = self.value
        return rec


def _fault(kind: str, at: float, duration: float | None, value: float | None, source: str | None) -> Fault:
    if kind not in FAULT_KINDS:
        raise FaultSpecError(f"unknown fault '{kind}'; use one of {', '.join(FAULT_KINDS)}")
    if at < 0:
        raise FaultSpecError(f"fault '{kind}' at {at:g}s: a fault cannot begin before the start")
    if duration is None:
        duration = DEFAULT_DURATION_S[kind]
    if duration is not None and duration <= 0:
        raise FaultSpecError(f"fault '{kind}': the duration must be positive")
    if kind == "skew" and value is None:
        raise FaultSpecError("fault 'skew' needs an offset, e.g. skew:5s@10s+30s")
    if kind == "seq_gap" and value is not None and (value < 1 or not float(value).is_integer()):
        raise FaultSpecError(f"fault 'seq_gap': {value:g} is not a number of messages (1, 2, ...)")
    if kind == "malformed":
        if value is None:
            raise FaultSpecError("fault 'malformed' needs a rate, e.g. malformed:5% or malformed:0.05")
        if not 0 < value <= 1:
            raise FaultSpecError(f"fault 'malformed': rate {value:g} is not in (0, 1]")
    return Fault(kind, at, duration, value, source)  # type: ignore[arg-type]


def _value(kind: str, text: str) -> float:
    text = text.strip()
    if kind == "malformed":
        if text.endswith("%"):
            return float(text[:-1]) / 100
        return float(text)
    if kind == "seq_gap":
        return float(text)
    return parse_duration(text)


def parse_fault(text: str) -> Fault:
    m = _FAULT_RE.match(text.strip())
    if not m:
        raise FaultSpecError(f"'{text}' is not a fault; write KIND[:VALUE][@AT[+DURATION]][/SOURCE], "
                             "e.g. restart@60s, rollover, silence@30s+20s, malformed:5%")
    kind = m.group("kind")
    try:
        value = _value(kind, m.group("value")) if m.group("value") else None
    except ValueError as e:
        raise FaultSpecError(f"'{text}': bad value '{m.group('value')}' ({e})") from None
    at = parse_duration(m.group("at")) if m.group("at") else 0.0
    dur = parse_duration(m.group("dur")) if m.group("dur") else None
    return _fault(kind, at, dur, value, m.group("source"))


def load_faults(path: Path) -> list[Fault]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise FaultSpecError(f"{path}: cannot read the faults file ({e})") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise FaultSpecError(f"{path}: a faults file is a list of faults")
    out: list[Fault] = []
    for i, item in enumerate(data):
        try:
            if isinstance(item, str):
                out.append(parse_fault(item))
            elif isinstance(item, dict):
                kind = str(item.get("kind", ""))
                raw_value = item.get("value")
                value = None if raw_value is None else _value(kind, str(raw_value))
                at = parse_duration(str(item.get("at", 0)))
                dur = parse_duration(str(item["duration"])) if item.get("duration") is not None else None
                out.append(_fault(kind, at, dur, value, item.get("source")))
            else:
                raise FaultSpecError("each fault is a string or a mapping with 'kind'")
        except (FaultSpecError, ValueError) as e:
            raise FaultSpecError(f"{path}: [{i}]: {e}") from None
    return out


def check_sources(faults: list[Fault], plant: Plant) -> None:
    """Every named source exists and is of a kind the fault applies to."""
    for f in faults:
        if f.source is None:
            continue
        src = plant.sources.get(f.source)
        if src is None:
            raise FaultSpecError(f"fault '{f.kind}': unknown source '{f.source}'; the plant has "
                                 f"{', '.join(plant.sources)}")
        sparkplug = src.mqtt is not None and src.mqtt.payload == "sparkplug"
        if f.kind in OPCUA_ONLY and src.kind != "opcua" and not (f.kind in SPARKPLUG_TOO and sparkplug):
            also = " and Sparkplug B edge nodes" if f.kind in SPARKPLUG_TOO else ""
            raise FaultSpecError(f"fault '{f.kind}' applies to OPC UA sources{also}, '{f.source}' is MQTT")
        if f.kind in SPARKPLUG_ONLY and not sparkplug:
            raise FaultSpecError(f"fault '{f.kind}' applies to Sparkplug B sources (payload: sparkplug), "
                                 f"'{f.source}' is not one")
        if f.kind in MQTT_ONLY and src.kind != "mqtt":
            raise FaultSpecError(f"fault '{f.kind}' applies to MQTT sources, '{f.source}' is OPC UA")


def with_rollover(plant: Plant, sources: set[str] | None = None, margin: int = ROLLOVER_MARGIN) -> Plant:
    """The plant with counters starting ``margin`` parts short of their width (per machine, the
    narrowest counter decides), so they wrap soon after start."""
    lines = []
    for line in plant.lines:
        machines = []
        for m in line.machines:
            bits = [s.counter_bits for s in m.signals.values() if s.counter_bits is not None]
            if bits and (sources is None or m.source in sources):
                sim: Simulation = m.simulation.model_copy(update={"counter_start": 2 ** min(bits) - margin})
                m = m.model_copy(update={"simulation": sim})
            machines.append(m)
        lines.append(line.model_copy(update={"machines": machines}))
    return plant.model_copy(update={"lines": lines})
