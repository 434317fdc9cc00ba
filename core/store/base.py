"""The store protocol: what the collector writes and the API reads.

Times are UTC epoch nanoseconds (ints) at this seam; identifiers reaching a backend have been
checked against the plant file (``core.plant.ID_RE``) before, and backends check them again.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from core.model import Fact
from core.plant import ID_RE


class StoreError(Exception):
    """The store failed a request (bad answer, bad query)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now; the caller may retry later."""


class FactRefused(StoreError):
    """The store cannot hold (some of) the facts written: the data, not the connection or the
    credentials, is the problem, and writing the same facts again fails the same way. The other
    facts of the write may or may not have been stored (writes are idempotent by key)."""


# What both stores hold: signed 64-bit integers, and InfluxDB's timestamps (int64 ns, its
# documented range ends one short of each int64 limit: 1677-09-21 .. 2262-04-11).
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MIN_TIME_NS, MAX_TIME_NS = INT64_MIN + 2, INT64_MAX - 1
FACT_KINDS = frozenset({"count", "state", "gauge", "product"})
# claim keys and owners: plain enough for a SQLite text key, an InfluxDB tag and an InfluxQL literal
CLAIM_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,300}")


def check_claim(key: str, owner: str) -> None:
    """Raise :class:`StoreError` unless ``key`` and ``owner`` are claim strings (:data:`CLAIM_RE`)."""
    for what, v in (("claim key", key), ("claim owner", owner)):
        if not isinstance(v, str) or not CLAIM_RE.fullmatch(v):
            raise StoreError(f"{what} {v!r} must be 1 to 300 characters of A-Z a-z 0-9 _ . : / -")


@functools.lru_cache(maxsize=4096)
def _is_id(v: str) -> bool:
    # a plant has a few thousand ids at most, and every fact of a batch repeats them: the regex
    # ran for each fact was a third of the check's cost
    return ID_RE.fullmatch(v) is not None


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: object) -> bool:
    if not isinstance(v, str):
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: neither store can encode them
        return False
    return True


def fact_problem(f: Fact) -> str | None:
    """Why a fact cannot be held by every store, or None. Both backends refuse such a fact with
    :class:`FactRefused`, and the importer checks rows with it before it writes anything."""
    if f.kind not in FACT_KINDS:
        return f"unknown fact kind {f.kind!r}"
    for what, v in (("line", f.line), ("machine", f.machine), ("signal", f.signal)):
        if not isinstance(v, str) or not _is_id(v):
            return f"{what} {v!r} is not an identifier"
    if not _int(f.time_ns) or not MIN_TIME_NS <= f.time_ns <= MAX_TIME_NS:
        return f"time {f.time_ns!r} ns is outside what the stores hold (int64 ns: 1677 .. 2262)"
    if f.reason is not None and (not _int(f.reason) or not INT64_MIN <= f.reason <= INT64_MAX):
        return f"reason {f.reason!r} is not a 64-bit integer"
    if f.unit is not None and not _text(f.unit):
        return f"unit {f.unit!r} is not storable text"
    value = f.value
    if f.kind == "count":
        if not isinstance(value, int) or isinstance(value, bool) or not INT64_MIN <= value <= INT64_MAX:
            return f"count increment {value!r} is not a 64-bit integer"
    elif f.kind == "gauge":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
            return f"gauge value {value!r} is not a finite number"
    elif not _text(value):
        return f"{f.kind} value {value!r} is not storable text"
    return None


def check_facts(facts: Sequence[Fact]) -> None:
    """Raise :class:`FactRefused` naming the first fact no store can hold."""
    for f in facts:
        problem = fact_problem(f)
        if problem is not None:
            raise FactRefused(f"fact {f.kind}/{f.machine}/{f.signal} at {f.time_ns!r}: {problem}")


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


CountRange = tuple[Sequence[str], int, int]  # (machines, start_ns, end_ns)


@runtime_checkable
class RangeCounts(Protocol):
    """What both backends add to :class:`Store` for the read side: several count reads in one request."""

    async def count_ranges(self, signals: Sequence[str], ranges: Sequence[CountRange],
                           bucket_ns: int) -> list[list[CountBucket]]:
        """:meth:`Store.count_buckets` for each ``(machines, start_ns, end_ns)`` of ``ranges``, in one
        request to the store (one snapshot in SQLite); the answers in the order of ``ranges``."""


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

    async def claim(self, key: str, owner: str) -> bool:
        """Claim ``key`` for ``owner``: True for exactly one owner per key, however many claim it at
        once from however many processes (the same owner claiming again gets True again). Claims
        are kept; alerts use them so that of several API replicas one sends each message
        (``api/alerts.py``). :class:`StoreError` for a key or owner outside :data:`CLAIM_RE`."""


# ---- operator input (docs/architecture.md, "Operator input") ---------------------------------------

OPERATOR_ACTIONS = frozenset({"stop_reason", "scrap", "note"})


@dataclass(frozen=True, slots=True)
class OperatorEntry:
    """One thing an operator said, as recorded: a stop's reason named (``stop_reason``: ``time_ns`` the
    stop (part) start, ``until_ns`` a split point or None, ``reason``), scrap found later (``scrap``:
    ``time_ns`` when, ``quantity``, ``reason`` a catalogue code or None) or a note on a line (``note``:
    ``text``). ``text`` is the operator's note for the other actions. ``old``/``new`` are the short
    JSON texts the audit shows. Entries are never changed or deleted: a correction is a new entry
    (later ``recorded_ns`` wins), so the log is its own audit trail."""

    id: str
    recorded_ns: int
    author: str
    action: str
    line: str
    machine: str | None
    time_ns: int
    until_ns: int | None = None
    reason: int | None = None
    quantity: int | None = None
    text: str | None = None
    old: str | None = None
    new: str = "{}"


def entry_order(e: OperatorEntry) -> tuple[int, str]:
    """The order entries take effect in: recorded time, then id (two in one nanosecond stay apart)."""
    return e.recorded_ns, e.id


def check_entry(e: OperatorEntry) -> None:
    """Raise :class:`FactRefused` for an entry no store can hold (the API checks the meaning before)."""
    if e.action not in OPERATOR_ACTIONS:
        raise FactRefused(f"operator entry {e.id!r}: unknown action {e.action!r}")
    for what, v in (("line", e.line), ("machine", e.machine)):
        if v is not None and not _is_id(v):
            raise FactRefused(f"operator entry {e.id!r}: {what} {v!r} is not an identifier")
    for what, n in (("recorded", e.recorded_ns), ("time", e.time_ns), ("until", e.until_ns)):
        if n is not None and (not _int(n) or not MIN_TIME_NS <= n <= MAX_TIME_NS):
            raise FactRefused(f"operator entry {e.id!r}: {what} {n!r} ns is outside what the stores hold")
    for what, t in (("id", e.id), ("author", e.author), ("text", e.text), ("old", e.old), ("new", e.new)):
        if t is not None and not _text(t):
            raise FactRefused(f"operator entry {e.id!r}: {what} is not storable text")
    if not e.id:
        raise FactRefused("an operator entry needs an id")


@runtime_checkable
class OperatorLog(Protocol):
    """What both backends add for operator input: an append-only log of :class:`OperatorEntry`."""

    async def add_entry(self, entry: OperatorEntry) -> None:
        """Store one entry (its ``id`` is unique; the same id twice is stored once)."""

    async def entries(self, lines: Sequence[str], start_ns: int, end_ns: int,
                      actions: Sequence[str] | None = None) -> list[OperatorEntry]:
        """Entries of ``lines`` (and ``actions``, all when None) whose subject time (``time_ns``) is in
        ``[start_ns, end_ns)``, in :func:`entry_order`."""

    async def audit(self, start_ns: int, end_ns: int) -> list[OperatorEntry]:
        """Every entry recorded in ``[start_ns, end_ns)``, in :func:`entry_order`."""
