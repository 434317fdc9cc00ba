"""The read side: every figure the API serves, from one read of each kind of fact per request.

:class:`Figures` (a plant and a store) resolves windows and shifts, and computes state timelines,
OEE/TEEP and losses (per window and per bucket), downtime and its Pareto, throughput with targets,
and a line's status. For a window it reads the state changes of all machines it needs once (with
``micro_stop_s`` of margin either side, so stops are judged whole: :func:`core.oee.read_range`),
the product changes once, and the counters on the bucket grid in one request (one range for the
machines without products, one per product segment of the others, since a count's product is known
only to the nanosecond of its change: :meth:`core.store.base.RangeCounts.count_ranges`), then
derives every bucket in memory. The math is :mod:`core.oee`'s and :mod:`core.figures`'; the rules
are in docs/architecture.md, "Figures".

Errors: everything a request can get wrong is a :class:`core.figures.FigureError` (unknown
line, machine or shift: :class:`core.figures.NotFound`); store errors pass through.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import pairwise

from core import figures
from core import oee as om
from core import operator as op
from core import report as rp
from core.calendar import ShiftWindow, shift_on
from core.model import COUNTER_SIGNALS, from_ns, signal_kind, to_ns
from core.plant import Line, Machine, Plant
from core.store.base import (
    CountBucket,
    CountRange,
    OperatorEntry,
    OperatorLog,
    RangeCounts,
    StateChange,
    Store,
)

NS = 1_000_000_000
NS_PER_H = 3_600 * NS
WINDOW_HELP = ("give start and end (ISO-8601 with offset), or shift=current|previous, or shift=<id> with "
               "date=YYYY-MM-DD")


class UnknownMachine(figures.NotFound):
    """A machine id the plant file does not declare."""


class UnknownSignal(figures.NotFound):
    """A signal the machine does not have."""


class NotAGauge(figures.FigureError):
    """A counter, state, reason or product signal asked for as a gauge."""


class UnknownShift(figures.NotFound):
    """A shift id the calendar does not declare, or a shift that does not run on the date asked."""


@dataclass(frozen=True, slots=True)
class GaugeAt:
    start: datetime
    end: datetime
    mean: float | None
    min: float | None
    max: float | None
    count: int


@dataclass(frozen=True, slots=True)
class GaugeSeries:
    bucket: figures.Bucket
    points: tuple[GaugeAt, ...]


@dataclass(frozen=True, slots=True)
class Window:
    """``[start, end)`` a request means; ``shift`` when it was asked as a shift; ``as_of`` the instant
    after which nothing has happened yet."""

    start: datetime
    end: datetime
    shift: ShiftWindow | None
    as_of: datetime


@dataclass(frozen=True, slots=True)
class ParetoShare:
    row: om.ParetoRow
    share: float
    cumulative_share: float


@dataclass(frozen=True, slots=True)
class Downtime:
    line: om.LineOee
    pareto: tuple[ParetoShare, ...]
    total_s: float


@dataclass(frozen=True, slots=True)
class TargetPoint:
    start: datetime
    end: datetime
    good: int
    scrap: int
    target: float
    cumulative_good: int
    cumulative_target: float


@dataclass(frozen=True, slots=True)
class ThroughputFigures:
    line: str
    start: datetime
    end: datetime
    bucket: figures.Bucket
    points: tuple[TargetPoint, ...]
    total_good: int
    total_scrap: int
    total_target: float


@dataclass(frozen=True, slots=True)
class StopRow:
    """A stop part in a window: ``seconds`` inside the window (and before ``as_of``)."""

    part: op.StopPart
    seconds: float
    open: bool


@dataclass(frozen=True, slots=True)
class MachineNow:
    machine: str
    state: str
    reason: int | None
    since: datetime | None  # None: the store holds no state of it
    last_data: datetime | None
    stale: bool = False  # newest data older than the machine's stale_after_s at as_of (or none at all)


@dataclass(frozen=True, slots=True)
class ShiftProgress:
    good: int
    scrap: int
    shift_target: float
    expected: float
    elapsed_s: float
    planned_production_elapsed_s: float
    oee: om.LineOee | None  # None when the shift has just begun


@dataclass(frozen=True, slots=True)
class LineNow:
    line: str
    as_of: datetime
    shift: ShiftWindow | None
    progress: ShiftProgress | None
    machines: tuple[MachineNow, ...]


def target_of(line: Line, ns: int) -> float:
    """The line's target for ``ns`` nanoseconds of planned production time."""
    return line.target_per_hour * ns / NS_PER_H


def production_ns(plant: Plant, start: datetime, end: datetime) -> list[tuple[int, int]]:
    """The calendar's production time (shifts minus breaks) in ``[start, end)`` as ns intervals: what a
    target counts. A ``planned`` state does not lower a target (see docs/architecture.md)."""
    if end <= start:
        return []
    return om.calendar_intervals(plant, start, end)[1]


def ns_inside(intervals: Sequence[tuple[int, int]], starts: Sequence[int], a: int, b: int) -> int:
    return om._inside_ns(intervals, starts, a, b)


# ---- facts read once per request --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Facts:
    """What one request read: state changes per machine (sorted) and, per machine and bucket, counts
    per product plus the machine's raw good (``good``, or ``total − scrap``) per bucket."""

    states: dict[str, list[StateChange]]
    times: dict[str, list[int]]  # the states' times, to slice them per bucket by bisection
    counts: dict[str, list[dict[str | None, list[int]]]]  # machine → bucket → product → [good, scrap]
    raw_good: dict[str, list[int]]  # machine → bucket → good (total − scrap may be negative)

    def states_for(self, machines: Sequence[str], lo: int, hi: int) -> list[StateChange]:
        """The changes of ``machines`` in ``[lo, hi)`` plus each one's last before ``lo``."""
        out: list[StateChange] = []
        for m in machines:
            own = self.states.get(m, [])
            times = self.times.get(m, [])
            i, j = bisect_left(times, lo), bisect_left(times, hi)
            out.extend(own[max(i - 1, 0):j])
        return out

    def product_counts(self, machine: str, i: int) -> list[om.ProductCounts]:
        per = self.counts.get(machine)
        if not per:
            return []
        return [om.ProductCounts(p, g, s) for p, (g, s) in per[i].items()]


def _pareto_shares(pareto: Sequence[om.ParetoRow]) -> tuple[ParetoShare, ...]:
    total = sum(r.seconds for r in pareto)
    rows: list[ParetoShare] = []
    cum = 0.0
    for r in pareto:
        cum += r.seconds
        rows.append(ParetoShare(r, r.seconds / total if total else 0.0, cum / total if total else 0.0))
    return tuple(rows)


def _bucket_index(edges: Sequence[int], t: int) -> int:
    # a store bucket may start before the first edge (the store clips facts to the window)
    return min(max(bisect_right(edges, t) - 1, 0), len(edges) - 2)


def resolve_window(plant: Plant, as_of: datetime, start: datetime | None, end: datetime | None,
                   shift: str | None, day: str | date | None) -> Window:
    """The window a request means: ``start``/``end``, or a shift (``current``, ``previous``, or an
    id with ``day``) cut at ``as_of``. :class:`core.figures.WindowError` says what is allowed."""
    figures.check_time("as_of", as_of)
    if shift is not None:
        if start is not None or end is not None:
            raise figures.WindowError(f"use either shift or start and end, not both; {WINDOW_HELP}")
        try:
            if isinstance(day, str) and shift not in ("current", "previous"):
                day = om.parse_day(day)
            if isinstance(day, date):
                figures.check_day("date", day)
            w = om.select_shift(plant, shift, as_of, day)
        except om.OeeError as e:
            raise figures.WindowError(f"{e}; {WINDOW_HELP}") from None
        figures.check_time(f"the start of shift {w.shift_id!r} on {w.day.isoformat()}", w.start)
        cut = om.shift_figure_window(w, as_of)
        if cut is None:
            raise figures.WindowError(f"shift {w.shift_id!r} of {w.day.isoformat()} has not begun at as_of "
                                      f"{as_of.isoformat()}; ask for a shift that has, or pass a later as_of")
        return Window(cut[0], cut[1], w, as_of)
    if day is not None:
        raise figures.WindowError(f"date needs shift=<id>; {WINDOW_HELP}")
    if start is None or end is None:
        missing = " and ".join(n for n, v in (("start", start), ("end", end)) if v is None)
        raise figures.WindowError(f"{missing} missing; {WINDOW_HELP}")
    figures.check_time("start", start)
    figures.check_time("end", end)
    if end <= start:
        raise figures.WindowError(f"the window is empty or reversed: start {start.isoformat()} is not before "
                                  f"end {end.isoformat()}; end must be after start")
    return Window(start, end, None, as_of)


class Figures:
    """Every figure of a plant from one store; see the module docstring."""

    def __init__(self, plant: Plant, store: Store) -> None:
        self.plant = plant
        self.store = store

    # ---- targets of requests ----

    def line(self, line_id: str) -> Line:
        line = self.plant.line(line_id)
        if line is None:
            raise figures.UnknownLine(f"unknown line '{line_id}'; this plant has: "
                                      f"{', '.join(ln.id for ln in self.plant.lines)}")
        return line

    def machine(self, machine_id: str) -> Machine:
        m = self.plant.machine(machine_id)
        if m is None:
            known = ", ".join(mm.id for _, mm in self.plant.machines())
            raise UnknownMachine(f"unknown machine '{machine_id}'; this plant has: {known}")
        return m

    def window(self, as_of: datetime, start: datetime | None, end: datetime | None, shift: str | None,
               day: str | date | None) -> Window:
        """The window a request means (:func:`resolve_window`)."""
        return resolve_window(self.plant, as_of, start, end, shift, day)

    # ---- reads ----

    async def operator_entries(self, machines: Sequence[Machine], start_ns: int, end_ns: int,
                               actions: Sequence[str] | None = None) -> list[OperatorEntry]:
        """The operator's entries about ``machines``' lines with subject time in ``[start_ns −``
        :data:`core.operator.LOOKBACK_NS` ``, end_ns)`` (one read; none from a store without a log)."""
        if not isinstance(self.store, OperatorLog) or not machines:
            return []
        ids = {m.id for m in machines}
        lines = sorted({ln.id for ln, m in self.plant.machines() if m.id in ids})
        found = await self.store.entries(lines, start_ns - op.LOOKBACK_NS, end_ns, actions)
        return [x for x in found if x.machine is None or x.machine in ids]

    async def state_changes(self, ids: Sequence[str], lo: int, hi: int,
                            entries: Sequence[OperatorEntry]) -> list[StateChange]:
        """The store's state changes over ``[lo, hi)`` (with each machine's last before ``lo``) with the
        operator's reasons applied, sorted by time. A named stop that began before the last change the
        store hands over needs the changes from its start: those machines are read once more from there."""
        read, merged, named = await self._changes_for(ids, lo, hi, entries)
        if not named:
            return read
        return op.trim(op.apply_reasons(merged, named), read)

    async def _changes_for(self, ids: Sequence[str], lo: int, hi: int, entries: Sequence[OperatorEntry]
                           ) -> tuple[list[StateChange], list[StateChange], list[OperatorEntry]]:
        """(what the store answered, that plus the changes back to the oldest named stop's start, the
        ``stop_reason`` entries of ``ids``)."""
        read = sorted(await self.store.state_changes(ids, lo, hi), key=lambda c: c.time_ns)
        named = [x for x in entries if x.action == "stop_reason" and x.machine in ids]
        if not named:
            return read, read, named
        first: dict[str, int] = {}
        for c in read:
            first.setdefault(c.machine, c.time_ns)
        back = {x.machine: x.time_ns for x in sorted(named, key=lambda x: -x.time_ns)
                if x.machine is not None and x.time_ns < first.get(x.machine, hi)}
        merged = list(read)
        if back:
            seen = {(c.machine, c.time_ns) for c in read}
            more = await self.store.state_changes(sorted(back), min(back.values()), lo)
            merged.extend(c for c in more if (c.machine, c.time_ns) not in seen)
            merged.sort(key=lambda c: c.time_ns)
        return read, merged, named

    # ---- operator input: stops and notes ----

    async def stop_list(self, line: Line, w: Window) -> list[StopRow]:
        """Every stop (part) of the line's machines overlapping the window, ordered by start, with the
        effective reason and who named it. Their ends are looked for up to :data:`core.operator.LOOKBACK_NS`
        after the window (never after ``as_of``); a stop still open there has ``end`` None."""
        s, e, as_of_ns = to_ns(w.start), to_ns(w.end), to_ns(w.as_of)
        ids = [m.id for m in line.machines]
        hi = max(min(e + op.LOOKBACK_NS, as_of_ns + 1), s + 1)
        entries = await self.operator_entries(line.machines, s, hi, ["stop_reason"])
        # a day back, so a stop across the window's start shows its own start (what naming it needs)
        _, merged, named = await self._changes_for(ids, s - 86_400 * NS, hi, entries)
        micro_ns = round(self.plant.calendar.micro_stop_s * NS)
        horizon = min(hi, as_of_ns)
        out: list[StopRow] = []
        for p in op.stop_parts(merged, named, ids, micro_ns, horizon):
            z = p.end_ns if p.end_ns is not None else horizon
            a, b = max(p.start_ns, s), min(z, e, as_of_ns)
            if p.start_ns < e and z > s and (b > a or p.start_ns >= s):
                out.append(StopRow(p, max(b - a, 0) / NS, p.end_ns is None))
        out.sort(key=lambda r: (r.part.start_ns, r.part.machine))
        return out

    async def stop_parts_near(self, machine: Machine, t_ns: int, now_ns: int) -> list[op.StopPart]:
        """The machine's stop parts from a day before ``t_ns`` to ``now_ns`` (what a naming is checked
        against: the part it names must begin at ``t_ns``)."""
        lo = t_ns - 86_400 * NS
        entries = await self.operator_entries([machine], lo, now_ns + 1, ["stop_reason"])
        _, merged, named = await self._changes_for([machine.id], lo, now_ns + 1, entries)
        return op.stop_parts(merged, named, [machine.id], round(self.plant.calendar.micro_stop_s * NS), now_ns)

    async def notes(self, line: Line, w: Window) -> list[OperatorEntry]:
        """The notes written on the line with their time in the window, by time."""
        if not isinstance(self.store, OperatorLog):
            return []
        s, e = to_ns(w.start), to_ns(w.end)
        found = await self.store.entries([line.id], s, e, ["note"])
        return sorted(found, key=lambda x: (x.time_ns, x.recorded_ns, x.id))

    async def _read(self, machines: Sequence[Machine], w: Window, edges: Sequence[int], grid_ns: int,
                    *, states_hi: int | None = None) -> _Facts:
        """One read of each kind of fact; ``states_hi`` reads states further (status: up to as_of itself)."""
        s, e = to_ns(w.start), to_ns(w.end)
        as_of_ns = to_ns(w.as_of)
        ids = [m.id for m in machines]
        n = len(edges) - 1
        st_by: dict[str, list[StateChange]] = defaultdict(list)
        entries: list[OperatorEntry] = []
        if ids:
            lo, hi = om.read_range(self.plant, s, e, as_of_ns)
            hi = max(hi, states_hi or hi)
            entries = await self.operator_entries(machines, min(lo, s), max(hi, e))
            for c in await self.state_changes(ids, lo, hi, entries):
                st_by[c.machine].append(c)
        counted = [m for m in machines if COUNTER_SIGNALS & set(m.signals)]
        with_products = [m for m in counted if "product" in m.signals]
        plain = [m for m in counted if "product" not in m.signals]
        segments: dict[str, list[om.ProductSegment]] = {m.id: [om.ProductSegment(s, e, None)] for m in plain}
        if with_products:
            changes = await self.store.product_changes([m.id for m in with_products], s, e)
            for m in with_products:
                segments[m.id] = om.product_segments(changes, m.id, s, e)
        counts: dict[str, list[dict[str | None, list[int]]]] = {m.id: [{} for _ in range(n)] for m in counted}
        by_id = {m.id: m for m in counted}

        def take(found: Sequence[CountBucket], product_of: dict[str, str | None]) -> None:
            for cb in found:
                m = by_id.get(cb.machine)
                if m is None or cb.machine not in product_of:
                    continue
                i = _bucket_index(edges, cb.start_ns)
                cell = counts[cb.machine][i].setdefault(product_of[cb.machine], [0, 0])
                if cb.signal == "scrap":
                    cell[1] += cb.total
                elif cb.signal == "good" or ("good" not in m.signals and cb.signal == "total"):
                    cell[0] += cb.total
                if cb.signal == "scrap" and "good" not in m.signals and "total" in m.signals:
                    cell[0] -= cb.total  # good = total − scrap (clamped over the series below)

        signals = sorted(COUNTER_SIGNALS & {sig for m in counted for sig in m.signals})
        ranges: list[CountRange] = []
        owners: list[dict[str, str | None]] = []
        if plain:
            ranges.append(([m.id for m in plain], s, e))
            owners.append(dict.fromkeys((m.id for m in plain), None))
        for m in with_products:
            for seg in segments[m.id]:
                if seg.end_ns > seg.start_ns:
                    ranges.append(([m.id], seg.start_ns, seg.end_ns))
                    owners.append({m.id: seg.product})
        if isinstance(self.store, RangeCounts):  # both backends: every range in one request
            results = await self.store.count_ranges(signals, ranges, grid_ns)
        else:
            results = [await self.store.count_buckets(ms, signals, a, z, grid_ns) for ms, a, z in ranges]
        for found, product_of in zip(results, owners, strict=True):
            take(found, product_of)
        for mid, t, q in op.bookings(entries, by_id, s, e):  # scrap found later: +scrap, −good where it was made
            product = next((seg.product for seg in segments[mid] if seg.start_ns <= t < seg.end_ns), None)
            cell = counts[mid][_bucket_index(edges, t)].setdefault(product, [0, 0])
            cell[1] += q
            if "good" in by_id[mid].signals or "total" in by_id[mid].signals:
                cell[0] -= q
        raw_good = {mid: [sum(c[0] for c in cell.values()) for cell in per] for mid, per in counts.items()}
        return _Facts(dict(st_by), {m: [c.time_ns for c in cs] for m, cs in st_by.items()}, counts, raw_good)

    # ---- OEE ----

    async def oee(self, target: Line | Machine, w: Window, bucket: str | figures.Bucket | None = None,
                  max_points: int = figures.MAX_BUCKETS
                  ) -> tuple[om.LineOee | om.MachineOee, list[om.LineOee | om.MachineOee]]:
        """Figures over the window and, with ``bucket``, per bucket (clipped to the window); every
        time field of the buckets sums to the window's, and so does good."""
        s, e = to_ns(w.start), to_ns(w.end)
        machines = list(target.machines) if isinstance(target, Line) else [target]
        if bucket is not None:
            b = figures.bucket_of(bucket)
            edges = figures.bucket_edges(w.start, w.end, b, self.plant.site.tz, max_points)
            grid = figures.query_grid_ns(edges, b)
        else:
            edges, grid = [s, e], max(e - s, NS)
        facts = await self._read(machines, w, edges, grid)
        good = {mid: figures.clamp_good(series) for mid, series in facts.raw_good.items()}
        whole = self._whole(target, w, facts, good)
        points: list[om.LineOee | om.MachineOee] = []
        if bucket is not None:
            for i, (a, z) in enumerate(pairwise(edges)):
                a, z = max(a, s), min(z, e)
                cs = {m.id: facts.product_counts(m.id, i) for m in machines}
                gs = {mid: g[i] for mid, g in good.items()}
                points.append(self._compute(target, from_ns(a), from_ns(z), w,
                                            facts.states_for([m.id for m in machines], *self._rr(a, z, w)), cs, gs))
        return whole, points

    def _whole(self, target: Line | Machine, w: Window, facts: _Facts,
               good: dict[str, list[int]]) -> om.LineOee | om.MachineOee:
        machines = list(target.machines) if isinstance(target, Line) else [target]
        s, e = to_ns(w.start), to_ns(w.end)
        counts = {m.id: self._sum_counts(facts, m.id) for m in machines}
        return self._compute(target, w.start, w.end, w, facts.states_for([m.id for m in machines], *self._rr(s, e, w)),
                             counts, {mid: sum(g) for mid, g in good.items()})

    def _rr(self, a: int, z: int, w: Window) -> tuple[int, int]:
        return om.read_range(self.plant, a, z, to_ns(w.as_of))

    @staticmethod
    def _sum_counts(facts: _Facts, machine: str) -> list[om.ProductCounts]:
        acc: dict[str | None, list[int]] = {}
        for cell in facts.counts.get(machine, []):
            for p, (g, sc) in cell.items():
                a = acc.setdefault(p, [0, 0])
                a[0] += g
                a[1] += sc
        return [om.ProductCounts(p, g, sc) for p, (g, sc) in acc.items()]

    def _compute(self, target: Line | Machine, start: datetime, end: datetime, w: Window,
                 states: Sequence[StateChange], counts: dict[str, list[om.ProductCounts]],
                 good: dict[str, int]) -> om.LineOee | om.MachineOee:
        if isinstance(target, Line):
            return om.line_oee(self.plant, target, start, end, states, counts, as_of=w.as_of, good=good)
        return om.machine_oee(self.plant, target, start, end, states, counts.get(target.id, []),
                               as_of=w.as_of, good=good.get(target.id))

    async def downtime(self, line: Line, w: Window) -> Downtime:
        lo, _ = await self.oee(line, w)
        assert isinstance(lo, om.LineOee)
        return Downtime(lo, _pareto_shares(lo.pareto), sum(r.seconds for r in lo.pareto))

    # ---- states ----

    async def states(self, machine: Machine, w: Window) -> list[om.Stretch]:
        """The machine's timeline covering the window exactly; time from ``as_of`` on is ``offline``."""
        s, e = to_ns(w.start), to_ns(w.end)
        lo, hi = self._rr(s, e, w)
        changes = await self.state_changes([machine.id], lo, hi, await self.operator_entries([machine], lo, hi))
        return [x for x, _ in om.window_timeline(self.plant, machine.id, changes, s, e, to_ns(w.as_of))]

    # ---- throughput ----

    def empty_current_shift(self, as_of: datetime) -> tuple[ShiftWindow | None, datetime | None] | None:
        """For ``shift=current`` when there is nothing to show: (None, None) when no shift runs at
        ``as_of``, (the shift, ``as_of``) when ``as_of`` is its first instant; None when it has a window."""
        so_far = figures.shift_so_far(self.plant, as_of)
        if so_far is None:
            return None, None
        if so_far.end_so_far <= so_far.window.start:
            return so_far.window, so_far.end_so_far
        return None

    async def throughput(self, line: Line, w: Window, bucket: str | figures.Bucket,
                         max_buckets: int = figures.MAX_BUCKETS) -> ThroughputFigures:
        """Good (output machines) and scrap (all machines) per bucket with targets. Good per bucket is
        never negative and sums to the good OEE counts for the window (:func:`core.figures.clamp_good`)."""
        b = figures.bucket_of(bucket)
        tz = self.plant.site.tz
        s0, e0 = to_ns(w.start), to_ns(w.end)
        booked = op.bookings(await self.operator_entries(line.machines, s0, e0, ["scrap"]),
                             [m.id for m in line.machines], s0, e0)
        result = await figures.line_throughput(self.store, self.plant, line.id, w.start, w.end, b,
                                               max_buckets=max_buckets, booked=booked)
        ppt = production_ns(self.plant, result.start, result.end)
        starts = [x for x, _ in ppt]
        w0, w1 = to_ns(w.start), to_ns(w.end)
        points: list[TargetPoint] = []
        cum_good = cum_ns = 0
        for p in result.points:
            ns = ns_inside(ppt, starts, max(to_ns(p.start), w0), min(to_ns(p.end), w1))
            cum_good += p.good
            cum_ns += ns
            points.append(TargetPoint(p.start, p.end, p.good, p.scrap, target_of(line, ns), cum_good,
                                      target_of(line, cum_ns)))
        return ThroughputFigures(line.id, w.start.astimezone(tz), w.end.astimezone(tz), b, tuple(points),
                                 result.total_good, result.total_scrap, target_of(line, cum_ns))

    # ---- gauges ----

    async def gauge(self, machine: Machine, signal: str, w: Window, bucket: str | figures.Bucket) -> GaugeSeries:
        """Mean, min, max and count of a gauge per bucket (one read on the bucket grid)."""
        gauges = [n for n in machine.signals if signal_kind(n) == "gauge"]
        which = f"its gauges: {', '.join(gauges)}" if gauges else "it has no gauges"
        if signal not in machine.signals:
            raise UnknownSignal(f"machine '{machine.id}' has no signal '{signal}'; {which}")
        kind = signal_kind(signal)
        if kind != "gauge":
            raise NotAGauge(f"'{signal}' of machine '{machine.id}' is a {kind} signal, not a gauge; {which}")
        b = figures.bucket_of(bucket)
        edges = figures.bucket_edges(w.start, w.end, b, self.plant.site.tz)
        found = await self.store.gauge_buckets(machine.id, signal, to_ns(w.start), to_ns(w.end),
                                               figures.query_grid_ns(edges, b))
        n = len(edges) - 1
        acc: list[list[float]] = [[0.0, 0.0, float("inf"), float("-inf")] for _ in range(n)]  # sum, n, min, max
        for g in found:
            i = bisect_right(edges, g.start_ns) - 1
            if 0 <= i < n and g.count > 0:
                a = acc[i]
                a[0] += g.mean * g.count
                a[1] += g.count
                a[2] = min(a[2], g.min)
                a[3] = max(a[3], g.max)
        return GaugeSeries(b, tuple(GaugeAt(from_ns(edges[i]), from_ns(edges[i + 1]), a[0] / a[1] if a[1] else None,
                                            a[2] if a[1] else None, a[3] if a[1] else None, int(a[1]))
                                    for i, a in enumerate(acc)))

    # ---- the shift report ----

    async def shift_report(self, shift_id: str, day: str | date, as_of: datetime) -> rp.ShiftReport:
        """Every line over shift ``shift_id`` of local ``day`` (cut at ``as_of``: a running shift is
        reported so far): the OEE figures, throughput per hour with targets and the downtime the
        figure routes give for that window, the longest stops, and operator annotations
        (:func:`core.report.operator_annotations`). :class:`UnknownShift` (404) for a shift the
        calendar lacks or that does not run that day; :class:`core.figures.WindowError` (422) for a
        bad date or a shift that has not begun at ``as_of``."""
        figures.check_time("as_of", as_of)
        ids = [s.id for s in self.plant.calendar.shifts]
        if shift_id not in ids:
            raise UnknownShift(f"unknown shift '{shift_id}'; this plant's calendar has: {', '.join(ids) or '(none)'}")
        try:
            d = figures.check_day("date", om.parse_day(day) if isinstance(day, str) else day)
        except om.OeeError as e:
            raise figures.WindowError(str(e)) from None
        sw = shift_on(self.plant, shift_id, d)
        if sw is None:
            raise UnknownShift(f"shift '{shift_id}' does not run on {d.isoformat()} ({d:%A}: not one of its days, "
                               "or a holiday); ask for a date it runs on")
        w = resolve_window(self.plant, as_of, None, None, shift_id, d)
        shift_ppt = om._total(production_ns(self.plant, sw.start, sw.end))
        lines: list[rp.LineReport] = []
        for line in self.plant.lines:
            lo, _ = await self.oee(line, w)
            assert isinstance(lo, om.LineOee)
            tp = await self.throughput(line, w, "1h")
            notes = await rp.operator_annotations(self, line, w)
            own = [ev for ev in lo.events if not ev.micro_stop]
            top = sorted(own, key=lambda ev: (-ev.seconds, ev.start, ev.machine))[:rp.TOP_STOPS]
            lines.append(rp.LineReport(
                line, lo, tp.total_target, target_of(line, shift_ppt), tp.points,
                tuple(rp.StopRow(ev, notes.named_by(ev.machine, ev.start)) for ev in top),
                _pareto_shares(lo.pareto), notes.notes))
        return rp.ShiftReport(sw, w, as_of >= sw.end, tuple(lines))

    # ---- status ----

    async def status(self, line: Line, as_of: datetime) -> LineNow:
        """Each machine's state at ``as_of`` and since when, and the shift so far: one state read from
        the shift's start (or ``as_of``) up to ``as_of``, the store's last change before it telling
        since when a machine has been in a state older than that."""
        figures.check_time("as_of", as_of)
        ids = [m.id for m in line.machines]
        so_far = figures.shift_so_far(self.plant, as_of)
        as_of_ns = to_ns(as_of)
        progress = None
        shift = None
        whole: om.LineOee | None = None
        if so_far is not None and so_far.end_so_far > so_far.window.start:
            sw, end = so_far.window, so_far.end_so_far
            w = Window(sw.start, end, sw, as_of)
            s, e = to_ns(sw.start), to_ns(end)
            facts = await self._read(line.machines, w, [s, e], max(e - s, NS), states_hi=as_of_ns + 1)
            changes = [c for cs in facts.states.values() for c in cs]
            lo_fig = self._whole(line, w, facts, {mid: figures.clamp_good(g) for mid, g in facts.raw_good.items()})
            assert isinstance(lo_fig, om.LineOee)
            whole = lo_fig
        else:
            lo, _ = om.read_range(self.plant, as_of_ns, as_of_ns, None)
            changes = await self.state_changes(ids, lo, as_of_ns + 1,
                                               await self.operator_entries(line.machines, lo, as_of_ns + 1))
        last = await self.store.last_times(ids)
        machines: list[MachineNow] = []
        for m in line.machines:
            now = om.state_timeline(changes, m.id, as_of_ns, as_of_ns + 1)[-1]
            known = any(c.machine == m.id for c in changes)
            stale = m.stale_after_s is not None and (m.id not in last
                                                     or as_of_ns - last[m.id] > m.stale_after_s * 1e9)
            machines.append(MachineNow(m.id, now.state, now.reason, from_ns(now.since_ns) if known else None,
                                       from_ns(last[m.id]) if m.id in last else None, stale))
        if so_far is not None:
            sw = so_far.window
            shift = sw
            ppt_ns = om._total(production_ns(self.plant, sw.start, so_far.end_so_far))
            shift_ppt_ns = om._total(production_ns(self.plant, sw.start, sw.end))
            good, scrap = (whole.good, whole.scrap) if whole is not None else (0, 0)
            progress = ShiftProgress(good, scrap, target_of(line, shift_ppt_ns), target_of(line, ppt_ns),
                                     so_far.elapsed_s, ppt_ns / NS, whole)
        return LineNow(line.id, as_of, shift, progress, tuple(machines))

    async def in_states_since(self, machine: Machine, as_of: datetime, states: frozenset[str],
                              max_lookback_s: float = 90 * 86_400.0) -> datetime | None:
        """Since when ``machine`` has been, without a break, in one of ``states`` at ``as_of`` (a
        stop's start when ``states`` are the stop states, whatever states and reasons change inside
        it); None when its state at ``as_of`` is not one of them or the store holds no state of it.

        It reads back from ``as_of`` in growing windows (an hour, then 4×, ...) until a state outside
        ``states`` is found, at most ``max_lookback_s``: then the earliest change read is the answer.
        The answer is the time of a stored fact, so every reader at any later instant of the same
        stretch gets the same one (alerts identify an episode by it)."""
        figures.check_time("as_of", as_of)
        hi = to_ns(as_of) + 1
        floor = hi - round(max_lookback_s * NS)
        span = 3_600 * NS
        earliest: int | None = None
        while True:
            lo = max(hi - span, floor)
            changes = [c for c in await self.store.state_changes([machine.id], lo, hi) if c.machine == machine.id]
            changes.sort(key=lambda c: c.time_ns)
            for c in reversed(changes):
                if c.state not in states:
                    return None if earliest is None else from_ns(earliest)
                earliest = c.time_ns
            if not changes or changes[0].time_ns >= lo or lo <= floor:
                # nothing before the window (or the lookback is used up): the stretch starts there
                return None if earliest is None else from_ns(earliest)
            hi, span = changes[0].time_ns, span * 4
