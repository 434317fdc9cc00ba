"""Sources: async context managers that yield raw samples from machines.

Every source follows one shape (like ``aiomqtt.Client.messages``)::

    async with OpcUaSource(...) as src:
        async for item in src:          # Sample | SampleBatch | SourceRestarted | ...
            ...

- Protocol callbacks only enqueue into an unbounded queue; they never await downstream work.
- The source owns reconnection (capped, jittered backoff; for MQTT paho's own capped backoff),
  so a machine that is down at start or drops later never ends the iteration.
- A source that sees the far end restart (OPC UA ``ServerStatus.StartTime`` changed between two
  connections) yields a :class:`SourceRestarted` marker *before* the first sample of the new
  connection; the pipeline hands it to ``Normalizer.source_restarted`` so that non-retentive
  counters are treated as reset even when their value did not drop.

Value coercion (JSON / CSV / OPC UA value to the Python type a signal's meaning needs) lives
here too, so the MQTT source and the importer agree on what "the right type" is.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from core.model import Quality, Sample, SignalKind, from_ns, signal_kind
from core.plant import Signal

__all__ = [
    "AckPoint",
    "Backoff",
    "BadValue",
    "DeadLetterSink",
    "MachinesOffline",
    "MachinesOnline",
    "SampleBatch",
    "SampleSource",
    "SignalKind",
    "SourceFailed",
    "SourceItem",
    "SourceOffline",
    "SourceOnline",
    "SourceRestarted",
    "SourceStats",
    "coerce_value",
    "signal_kind",
]


class SourceFailed(Exception):
    """A source that cannot go on by itself (e.g. the broker refused its subscription, or its
    protocol thread died): raised from ``__anext__`` with the reason, so the collector stops
    with an error instead of sitting connected to nothing."""


@dataclass(frozen=True, slots=True)
class SourceRestarted:
    """The far end of ``source`` restarted (a PLC reboot seen on the connection).

    Yielded in order with the samples, before any sample read after the restart."""

    source: str
    start_time: datetime
    previous_start_time: datetime


@dataclass(frozen=True, slots=True)
class SourceOffline:
    """``source`` became unreachable at ``since`` (connection lost, or the first connection
    failed). Yielded once per outage, in order with the samples."""

    source: str
    since: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class SourceOnline:
    """``source`` is connected again since ``at`` (after a :class:`SourceOffline`); yielded
    before any sample of the new connection. ``start_time`` is the server's start time when the
    protocol tells it (OPC UA ``ServerStatus.StartTime``), saved with the normalizer state."""

    source: str
    at: datetime
    start_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class MachinesOffline:
    """Some ``machines`` of ``source`` became unreachable at ``since`` while the source stays up
    (a Sparkplug B device's ``DDEATH``): they are ``offline`` until :class:`MachinesOnline`.
    Yielded in order with the samples."""

    source: str
    machines: tuple[str, ...]
    since: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class MachinesOnline:
    """``machines`` of ``source`` are reachable again since ``at`` (after a
    :class:`MachinesOffline`; a Sparkplug B device's next ``DBIRTH``); yielded before their
    samples, whose first state is stamped no earlier than ``at``."""

    source: str
    machines: tuple[str, ...]
    at: datetime


@dataclass(frozen=True, slots=True)
class AckPoint:
    """Everything ``source`` yielded before this marker may be acknowledged upstream once it is
    durable: the pipeline hands ``token`` back to ``source.ack(token)`` after the spool commit
    that holds those samples' facts (MQTT QoS 1 manual acknowledgement)."""

    source: str
    token: object


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Samples of ``source`` that arrived together, in order, as rows ``(machine, signal, value,
    source time in epoch ns, quality)``: what a source that reads many values at once (an OPC UA
    publish) yields as one item. The pipeline feeds the rows to the normalizer as they are, with
    no :class:`~core.model.Sample` and no datetime per value (10 000 signals make 10 000 of them
    a second)."""

    source: str
    rows: list[tuple[str, str, float | int | str, int, Quality]]

    def samples(self) -> list[Sample]:
        """The rows as :class:`~core.model.Sample` s (times to the microsecond)."""
        return [Sample(m, sig, v, from_ns(t), q, self.source) for m, sig, v, t, q in self.rows]


SourceItem = (Sample | SampleBatch | SourceRestarted | SourceOffline | SourceOnline | MachinesOffline
              | MachinesOnline | AckPoint)


@dataclass
class SourceStats:
    """Counters a source keeps; read them, never write them."""

    connected: bool = False
    connects: int = 0  # successful connections (the first one included)
    connect_failures: int = 0  # failed connection attempts
    losses: int = 0  # connections lost
    messages: int = 0  # protocol notifications / messages received
    samples: int = 0  # samples yielded
    restarts: int = 0  # far-end restarts seen
    acks: int = 0  # messages acknowledged upstream after their facts were durable (MQTT)
    errors: Counter[str] = field(default_factory=Counter)  # dropped input, by kind


class SampleSource(Protocol):
    """What the pipeline needs from a source."""

    source_id: str
    stats: SourceStats

    async def __aenter__(self) -> SampleSource: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def __aiter__(self) -> SampleSource: ...

    async def __anext__(self) -> SourceItem: ...

    async def wait_ready(self) -> None:
        """Return once the source is connected and subscribed (tests and health checks)."""

    def ack(self, token: object) -> None:
        """Acknowledge upstream what an :class:`AckPoint` with ``token`` covered (no-op for
        protocols without acknowledgements)."""


class DeadLetterSink(Protocol):
    """Where malformed input goes with its reason and raw bytes (``collector.deadletter.DeadLetters``)."""

    def record(self, kind: str, reason: str, *, source: str = "", raw: bytes | bytearray | str | None = None,
               topic: str | None = None) -> None: ...


class Backoff:
    """Capped exponential backoff with jitter: delays grow ×2 from ``initial_s`` up to ``max_s``,
    each drawn from ``[d/2, d]`` so that many clients losing one server do not retry in step."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._attempt = 0

    def next(self) -> float:
        d = min(self.max_s, self.initial_s * (2 ** min(self._attempt, 32)))
        self._attempt += 1
        return random.uniform(d / 2, d)

    def reset(self) -> None:
        self._attempt = 0


class OncePerKind:
    """Logs the first occurrence of each kind of problem, then only counts (log state, not samples)."""

    def __init__(self, logger: logging.Logger, counter: Counter[str]) -> None:
        self._log = logger
        self._counter = counter

    def __call__(self, kind: str, msg: str, *args: object) -> None:
        self._counter[kind] += 1
        if self._counter[kind] == 1:
            self._log.warning(msg + " (logged once; further ones are only counted as %r)", *args, kind)


def _as_int(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return int(raw) if raw.is_integer() else None
    if isinstance(raw, str):
        text = raw.strip()
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                return None
            return int(f) if f.is_integer() else None
    return None


def _as_float(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        f = float(raw)
    elif isinstance(raw, str):
        try:
            f = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


class BadValue(ValueError):
    """A value that does not fit its signal; ``kind`` is ``wrong_type`` or ``bad_value``."""

    def __init__(self, kind: Literal["wrong_type", "bad_value"], message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def coerce_value(name: str, signal: Signal, raw: object) -> int | float | str:
    """The value of signal ``name`` as its meaning needs it, from a JSON value, a CSV cell or an
    OPC UA variant: counters, state and reason codes are ints, gauges floats, products strings.

    Raises :class:`BadValue` (a ``ValueError``) with a reason a plant engineer can act on. State codes are *not*
    checked against the map here: the normalizer owns that rule (``unmapped_state``)."""
    kind = signal_kind(name)
    if kind in ("counter", "state", "reason"):
        v = _as_int(raw)
        if v is None:
            raise BadValue("wrong_type", f"{name} needs an integer, got {raw!r}")
        if kind == "counter" and v < 0:
            raise BadValue("bad_value", f"counter {name} cannot be negative, got {v}")
        if kind == "counter" and signal.counter_bits is not None and v >= 2**signal.counter_bits:
            raise BadValue("bad_value", f"counter {name} does not fit in {signal.counter_bits} bits, got {v}")
        return v
    if kind == "product":
        if isinstance(raw, bool) or raw is None:
            raise BadValue("wrong_type", f"product needs a product code, got {raw!r}")
        if isinstance(raw, int):
            return str(raw)
        if isinstance(raw, str) and raw.strip():
            return raw.strip()
        raise BadValue("wrong_type", f"product needs a product code, got {raw!r}")
    f = _as_float(raw)
    if f is None:
        raise BadValue("wrong_type", f"gauge {name} needs a finite number, got {raw!r}")
    return f


def aware_utc(t: datetime) -> datetime:
    """OPC UA stacks hand out naive UTC datetimes in places; make them aware."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
