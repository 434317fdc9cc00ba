"""Operator input applied to what the store returns: pure functions, no I/O.

An operator names (or corrects) the reason of a stop, splits a stop in two, books scrap found later
and writes notes (:class:`core.store.base.OperatorEntry`, an append-only log). The figures are the
machine's facts with these entries laid over them (docs/architecture.md, "Operator input"):

- **Reasons.** A stop is :mod:`core.oee`'s: from the first non-running state to the next ``running``
  or ``planned`` one. A ``stop_reason`` entry at ``time_ns`` (the stop's start, or a split point of an
  earlier entry) gives its reason to every stretch from there to the next split point (or the stop's
  end); with ``until_ns`` it splits the stop there first, and ``[until, …)`` keeps what it had.
  Entries take effect in recorded order (later ones win). The *state* of every stretch stays the
  machine's: only reasons change, so time bases, availability and stop lengths are untouched.
  :func:`apply_reasons` returns the state changes with the reasons replaced and a change inserted
  at each split point, so every figure of :mod:`core.oee` sees them without knowing about operators.
- **Scrap bookings.** A ``scrap`` entry adds ``quantity`` to the machine's scrap and takes it from
  its good in the bucket holding ``time_ns`` (:func:`bookings`).

Look-back: a window's figures read the entries whose subject time lies at most :data:`LOOKBACK_NS`
before the states they read, so a stop named more than that before a window's start keeps the
machine's reason in that window (a stop of more than a week is not named after the fact).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.oee import MICRO_STATES, STOP_ENDS
from core.store.base import OperatorEntry, StateChange, entry_order

NS = 1_000_000_000
LOOKBACK_NS = 7 * 86_400 * NS
MAX_NOTE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class StopSpan:
    """One stop of a machine as the raw state changes tell it: ``until_ns`` None while it is still open
    at the end of what was read."""

    machine: str
    since_ns: int
    until_ns: int | None


@dataclass(frozen=True, slots=True)
class Naming:
    """What holds from a split point on: the operator's reason (None: the machine's own) and the entry
    that set it (None: no operator named it)."""

    reason: int | None
    entry: OperatorEntry | None


@dataclass(slots=True)
class MachineReasons:
    """A machine's stops and the operator's split points with what holds from each."""

    machine: str
    changes: list[StateChange]  # sorted by time
    stops: list[StopSpan]
    points: dict[int, Naming] = field(default_factory=dict)
    since: list[int] = field(default_factory=list)  # the stops' starts, to find one by bisection

    def __post_init__(self) -> None:
        self.since = [s.since_ns for s in self.stops]

    def stop_at(self, t: int) -> StopSpan | None:
        """The stop holding instant ``t``, or None."""
        i = bisect_right(self.since, t) - 1
        if i < 0:
            return None
        s = self.stops[i]
        return s if s.until_ns is None or t < s.until_ns else None

    def naming_at(self, t: int) -> Naming:
        """What the operator said for instant ``t``: the last split point at or before it inside its stop."""
        stop = self.stop_at(t)
        if stop is None:
            return Naming(None, None)
        best: int | None = None
        for p in self.points:
            if stop.since_ns <= p <= t and (best is None or p > best):
                best = p
        return self.points[best] if best is not None else Naming(None, None)

    def part_starts(self, stop: StopSpan) -> list[int]:
        """The starts of the stop's parts: its own start and the split points inside it."""
        inside = [p for p in self.points if p > stop.since_ns and (stop.until_ns is None or p < stop.until_ns)]
        return [stop.since_ns, *sorted(inside)]

    def state_at(self, t: int) -> StateChange | None:
        times = [c.time_ns for c in self.changes]
        i = bisect_right(times, t) - 1
        return self.changes[i] if i >= 0 else None


def stops_from_changes(changes: Sequence[StateChange], machine: str) -> list[StopSpan]:
    """A machine's stops from its sorted state changes (the first change of a list counts as a stop's
    start when it is not running: what came before was not read)."""
    out: list[StopSpan] = []
    since: int | None = None
    for c in changes:
        if c.machine != machine:
            continue
        if c.state in STOP_ENDS:
            if since is not None:
                out.append(StopSpan(machine, since, c.time_ns))
                since = None
        elif since is None:
            since = c.time_ns
    if since is not None:
        out.append(StopSpan(machine, since, None))
    return out


def reasons_of(changes: Sequence[StateChange], entries: Iterable[OperatorEntry]) -> dict[str, MachineReasons]:
    """Per machine with ``stop_reason`` entries: its stops and split points after every entry, in order."""
    named = sorted((e for e in entries if e.action == "stop_reason" and e.machine is not None and e.reason is not None),
                   key=entry_order)
    out: dict[str, MachineReasons] = {}
    for e in named:
        assert e.machine is not None
        mr = out.get(e.machine)
        if mr is None:
            own = sorted((c for c in changes if c.machine == e.machine), key=lambda c: c.time_ns)
            mr = out[e.machine] = MachineReasons(e.machine, own, stops_from_changes(own, e.machine))
        stop = mr.stop_at(e.time_ns)
        if stop is None:
            continue  # the stop is not in what was read (or the data changed under it): nothing to name
        naming = Naming(e.reason, e)
        if e.until_ns is not None and e.until_ns > e.time_ns and (stop.until_ns is None or e.until_ns < stop.until_ns):
            if e.until_ns not in mr.points:
                mr.points[e.until_ns] = mr.naming_at(e.until_ns)
            for p in [p for p in mr.points if e.time_ns <= p < e.until_ns]:
                mr.points[p] = naming
        mr.points[e.time_ns] = naming
    return out


def apply_reasons(changes: Sequence[StateChange], entries: Iterable[OperatorEntry]) -> list[StateChange]:
    """The state changes with the operator's reasons (see the module docstring), sorted by time: inside a
    named stop part every change gets the named reason, and a change (same state) starts each split
    point, so stretches break there. Machines without entries are passed through unchanged."""
    per = reasons_of(changes, entries)
    if not per:
        return sorted(changes, key=lambda c: c.time_ns)
    out = [c for c in changes if c.machine not in per]
    for mr in per.values():
        times = {c.time_ns for c in mr.changes}
        for c in mr.changes:
            n = mr.naming_at(c.time_ns) if c.state not in STOP_ENDS else Naming(None, None)
            out.append(c if n.entry is None else StateChange(c.time_ns, c.machine, c.state, n.reason))
        for p, n in mr.points.items():
            if p in times or mr.stop_at(p) is None:
                continue
            at = mr.state_at(p)
            if at is None:
                continue
            reason = n.reason if n.entry is not None else at.reason
            out.append(StateChange(p, mr.machine, at.state, reason))
    out.sort(key=lambda c: c.time_ns)
    return out


@dataclass(frozen=True, slots=True)
class StopPart:
    """A stop, or a part of one made by a split, with what the operator said about it."""

    machine: str
    start_ns: int
    end_ns: int | None  # None: still open at the end of what was read
    stop_since_ns: int
    stop_until_ns: int | None
    state: str  # at its start
    reason: int | None  # effective: the operator's if named, else the machine's at its start
    entry: OperatorEntry | None  # the entry that named it
    micro_stop: bool


def stop_parts(changes: Sequence[StateChange], entries: Iterable[OperatorEntry], machines: Sequence[str],
               micro_ns: int, horizon_ns: int) -> list[StopPart]:
    """Every stop part of ``machines`` in ``changes`` (sorted by machine order, then start). A stop is a
    micro-stop when shorter than ``micro_ns`` (open ones measured to ``horizon_ns``) with only down/idle."""
    per = reasons_of(changes, entries)
    out: list[StopPart] = []
    for m in machines:
        mr = per.get(m)
        if mr is None:
            own = sorted((c for c in changes if c.machine == m), key=lambda c: c.time_ns)
            mr = MachineReasons(m, own, stops_from_changes(own, m))
        for stop in mr.stops:
            end = stop.until_ns if stop.until_ns is not None else horizon_ns
            inside = [c for c in mr.changes if stop.since_ns <= c.time_ns < end]
            micro = end - stop.since_ns < micro_ns and all(c.state in MICRO_STATES for c in inside)
            starts = mr.part_starts(stop)
            for i, a in enumerate(starts):
                z = starts[i + 1] if i + 1 < len(starts) else stop.until_ns
                at = mr.state_at(a)
                n = mr.naming_at(a)
                reason = n.reason if n.entry is not None else (at.reason if at is not None else None)
                out.append(StopPart(m, a, z, stop.since_ns, stop.until_ns, at.state if at is not None else "offline",
                                    reason, n.entry, micro))
    return out


def part_starts(changes: Sequence[StateChange], entries: Iterable[OperatorEntry], machine: str) -> list[int]:
    """Where the machine's stop parts begin (what ``PUT …/stops/{start}/reason`` accepts)."""
    return [p.start_ns for p in stop_parts(changes, entries, [machine], 0, 0)]


def bookings(entries: Iterable[OperatorEntry], machines: Iterable[str], start_ns: int,
             end_ns: int) -> list[tuple[str, int, int]]:
    """(machine, time_ns, quantity) of the scrap bookings of ``machines`` inside ``[start_ns, end_ns)``."""
    ids = set(machines)
    return [(e.machine, e.time_ns, e.quantity) for e in sorted(entries, key=entry_order)
            if e.action == "scrap" and e.machine in ids and e.quantity and start_ns <= e.time_ns < end_ns]


def trim(applied: Sequence[StateChange], read: Sequence[StateChange]) -> list[StateChange]:
    """``applied`` (changes read further back for the operator's sake, reasons applied) cut back to what
    the store answered for the window: per machine nothing before its first change in ``read``."""
    first: dict[str, int] = {}
    for c in read:
        if c.machine not in first or c.time_ns < first[c.machine]:
            first[c.machine] = c.time_ns
    return [c for c in applied if c.machine in first and c.time_ns >= first[c.machine]]
