"""Samples (what sources yield) and facts (what normalize makes of them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

CanonicalState = Literal["running", "idle", "down", "changeover", "planned", "offline"]
CANONICAL_STATES: tuple[CanonicalState, ...] = ("running", "idle", "down", "changeover", "planned", "offline")

Quality = Literal["good", "uncertain", "bad"]
FactKind = Literal["count", "state", "gauge", "product"]

COUNTER_SIGNALS = frozenset({"good", "scrap", "total"})
STATE_SIGNAL = "state"
REASON_SIGNAL = "reason"
PRODUCT_SIGNAL = "product"
MEANINGFUL_SIGNALS = COUNTER_SIGNALS | {STATE_SIGNAL, REASON_SIGNAL, PRODUCT_SIGNAL}

SignalKind = Literal["counter", "state", "reason", "product", "gauge"]


def signal_kind(name: str) -> SignalKind:
    """What a signal name means (docs/architecture.md, "The plant file"): any name without a meaning is a gauge."""
    if name in COUNTER_SIGNALS:
        return "counter"
    if name == STATE_SIGNAL:
        return "state"
    if name == REASON_SIGNAL:
        return "reason"
    if name == PRODUCT_SIGNAL:
        return "product"
    return "gauge"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ns(t: datetime) -> int:
    """Epoch nanoseconds of an aware datetime (microsecond precision, exact integer arithmetic)."""
    if t.tzinfo is None:
        raise ValueError(f"time without offset: {t.isoformat()}")
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def from_ns(ns: int) -> datetime:
    """Aware UTC datetime of epoch nanoseconds (truncated to microseconds)."""
    # the epoch plus whole microseconds: the same value as fromtimestamp(...).replace(microsecond=...),
    # at under half the cost (every sample and every spooled fact goes through here)
    return _EPOCH + timedelta(microseconds=ns // 1_000)


@dataclass(frozen=True, slots=True)
class Sample:
    """One raw reading of one signal of one machine, as a source saw it."""

    machine: str
    signal: str
    value: float | int | str
    time: datetime  # source time, timezone-aware
    quality: Quality = "good"
    source: str = ""


@dataclass(frozen=True, slots=True)
class Fact:
    """A production fact, made once at the edge.

    - ``count``: ``value`` is the increment (int) of counter ``signal`` (good/scrap/total).
    - ``state``: ``value`` is the canonical state, ``reason`` the stop-reason code (or None).
    - ``gauge``: ``value`` is the reading (float), ``unit`` its unit.
    - ``product``: ``value`` is the product code now being made.

    ``time_ns`` is UTC epoch nanoseconds. Normalize keeps it strictly increasing per
    (machine, signal) so that ``key`` is unique, and it derives it only from the samples,
    so a replay lands on the same key (InfluxDB keeps one point per series and timestamp).
    """

    kind: FactKind
    time_ns: int
    line: str
    machine: str
    signal: str
    value: float | int | str
    reason: int | None = None
    unit: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.machine}/{self.signal}/{self.time_ns}"

    @property
    def time(self) -> datetime:
        return from_ns(self.time_ns)
