"""The store protocol: what the collector writes and the API reads.

Times are UTC epoch nanoseconds (ints) at this seam; identifiers reaching a backend have been
checked against the plant file (``core.plant.ID_RE``) before, and backends check them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from core.model import Fact


class StoreError(Exception):
    """The store failed a request (bad answer, bad query)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now; the caller may retry later."""


@dataclass(frozen=True, slots=True)
class CountBucket:
    """Sum of the increments of one counter of one machine in ``[start_ns, start_ns + bucket)``."""

    start_ns: int
    machine: str
    signal: str
    total: int


@dataclass(frozen=True, slots=True)
class StateChange:
    """A machine entered ``state`` (with ``reason``) at ``time_ns``."""

    time_ns: int
    machine: str
    state: str
    reason: int | None


@dataclass(frozen=True, slots=True)
class ProductChange:
    """A machine started making ``product`` at ``time_ns``."""

    time_ns: int
    machine: str
    product: str


@dataclass(frozen=True, slots=True)
class GaugeBucket:
    start_ns: int
    machine: str
    signal: str
    mean: float
    min: float
    max: float
    count: int


@runtime_checkable
class Store(Protocol):
    """One protocol, two backends (SQLite, InfluxDB); one contract test suite for both."""

    async def open(self) -> None:
        """Connect / create schema. Idempotent."""

    async def close(self) -> None: ...

    async def write(self, facts: Sequence[Fact]) -> None:
        """Store facts; idempotent by ``Fact.key`` (the same fact twice is stored once).

        Returns only once the store has confirmed the write; raises ``StoreUnavailable``
        when it cannot be reached (nothing is then assumed written)."""

    async def count_buckets(
        self, machines: Sequence[str], signals: Sequence[str], start_ns: int, end_ns: int, bucket_ns: int
    ) -> list[CountBucket]:
        """Per machine and signal, sums of increments in buckets aligned to UTC epoch multiples of
        ``bucket_ns`` within ``[start_ns, end_ns)``. Only non-empty buckets are returned (any
        order); callers fill zeros. ``start_ns``/``end_ns`` need not be aligned: facts outside
        the window are never counted."""

    async def state_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[StateChange]:
        """State facts with time in ``[start_ns, end_ns)``, plus, per machine, the last one before
        ``start_ns`` (so a window's first seconds are not blank); ordered by time."""

    async def product_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[ProductChange]:
        """Product facts with time in ``[start_ns, end_ns)``, plus, per machine, the last one before
        ``start_ns`` (the product being made when the window opens); ordered by time."""

    async def gauge_buckets(
        self, machine: str, signal: str, start_ns: int, end_ns: int, bucket_ns: int
    ) -> list[GaugeBucket]:
        """Mean/min/max/count of a gauge per epoch-aligned bucket (non-empty buckets only)."""

    async def last_times(self, machines: Sequence[str]) -> dict[str, int]:
        """Per machine, the time of its newest fact of any kind (machines with none are absent)."""

    async def ping(self) -> bool:
        """True when the store answers."""
