"""OEE, downtime and losses: pure functions over facts (state changes, counts, product changes).

Everything here works on what the :class:`~core.store.base.Store` protocol returns; the store
reads are thin wrappers (:func:`machine_oee_from_store`, :func:`line_oee_from_store`). Windows are
``[start, end)``; times are aware datetimes at the edges and UTC epoch nanoseconds inside.

Definitions (docs/architecture.md, "Figures"; where it is silent, the choice is written here):

- **Timeline.** A machine is in the state of its last state change (the store hands over the
  last change before the window too). Time before its first known state is ``offline`` (no
  data); so is a whole window of a machine with no state facts at all. Consecutive changes to
  the same (state, reason) are one stretch.
- **Calendar time** = the window's length. **Scheduled time** = shift windows on working days
  ∩ the window, as elapsed real time (DST-safe: :mod:`core.calendar`). **Breaks** = scheduled
  time that :func:`core.calendar.planned_intervals` marks planned. **Planned time** = breaks ∪
  ``planned`` state time inside scheduled time (each second once). **Planned production time**
  (PPT) = scheduled − planned. ``running`` time outside every shift is scheduled and PPT (a machine
  that runs when nothing was scheduled was scheduled for that time); a break stays planned even
  when the state says running. Other states outside scheduled time are ignored by every figure but
  the state seconds. Time at or after ``as_of`` has not happened: ``offline`` in the timeline, not
  calendar, scheduled or planned production time.
- **Stops.** A stop runs from the first non-running state to the next ``running`` or ``planned``
  one, whatever states and reasons change inside (:class:`Stop`). Its *length* is measured from
  its first change (even before the window) to that next change, over states read
  ``micro_stop_s`` beyond both window edges (:func:`read_range`): a stop still open at the end of
  what was read is at least that long. A stop of only ``down``/``idle`` shorter than
  ``calendar.micro_stop_s`` is a **micro-stop**: a performance loss, counted in run time. A stop
  with ``changeover`` or ``offline`` in it never is.
- **Run time** = ``running`` time + micro-stop time, both inside PPT.
- **Availability** = run / PPT. **Performance** = Σ(ideal cycle of the product × (good + scrap))
  / run, with the product's ``ideal_cycle_s`` from ``plant.products``, else the machine's.
  A count made in the same instant as a product change belongs to the product before it (the
  part was finished, then the next program was selected). **Quality** = good / (good + scrap).
  **OEE** = A × P × Q. **TEEP** = OEE × PPT / calendar time.
- **No data**: no counts in the window → ``no_data`` and every ratio None (never 100 %); a zero
  denominator (no PPT, no run time) also gives None for that ratio and what depends on it.
- **Starved / blocked**: ``idle`` whose reason's catalogue category is ``starved`` or ``blocked``
  is caused by a neighbour, so it is not the machine's own downtime: it is left out of the
  downtime Pareto and the idle loss and reported as ``starved_blocked_s`` (it is still not run
  time, so a station's availability shows it; a line's downtime does not double count it).
- **Downtime events**: every stretch of one (state, reason) inside a stop with seconds inside PPT
  (micro-stops flagged ``micro_stop``, the stop's start in ``stop_start``); ``seconds`` counts only
  its part inside PPT and the window, ``start``/``end`` are clipped to the window. The **Pareto**
  is over events that are neither micro-stops nor starved/blocked, by (state, reason), seconds
  descending; its count is the number of stops a (state, reason) occurs in.
- **MTBF** = run time / number of stops with ``down`` in them (micro-stops excluded); **MTTR** =
  their ``down`` PPT seconds / their number; None without such stops.
- **Six big losses** (seconds), which with ``offline`` and ``starved_blocked`` partition PPT −
  ideal time of good parts: breakdowns (``down``), changeover, idle (own idle), micro-stops,
  reduced speed (run − micro-stops − ideal time of good + scrap, i.e. ``running`` time not
  explained by ideal cycles; negative when faster than ideal), rejects (ideal time of scrap).
- **A line**: good = its output machine(s)' good; scrap = all its machines' scrap. Its run time,
  PPT, ideal time and loss tree are its output machine(s)' (summed when several), so its losses
  partition its PPT; its quality uses the line's good and scrap; its downtime events and Pareto
  are all stations' own (starved/blocked left out).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import pairwise
from typing import Literal, Protocol

from core.calendar import ShiftWindow, current_shift, planned_intervals, previous_shift, shift_on, shift_windows
from core.figures import FigureError
from core.model import COUNTER_SIGNALS, from_ns, to_ns
from core.plant import Line, Machine, Plant
from core.store.base import CountBucket, StateChange, Store

NS = 1_000_000_000
MICRO_STATES = frozenset({"down", "idle"})
NEIGHBOUR_CATEGORIES = frozenset({"starved", "blocked"})
Interval = tuple[int, int]


class OeeError(FigureError):
    """A request that cannot be answered as asked (unknown machine, line or shift, bad date)."""


class ProductFact(Protocol):
    """What the figures need of a product change (``core.store.base.ProductChange`` has it)."""

    @property
    def time_ns(self) -> int: ...

    @property
    def machine(self) -> str: ...

    @property
    def product(self) -> str: ...


# ---- interval arithmetic (sorted, disjoint, half-open ns intervals) ------------------------------


def _merge(ivs: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(iv for iv in ivs if iv[1] > iv[0]):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _intersect(xs: Sequence[Interval], ys: Sequence[Interval]) -> list[Interval]:
    out: list[Interval] = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        a, b = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if a < b:
            out.append((a, b))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


def _subtract(xs: Sequence[Interval], ys: Sequence[Interval]) -> list[Interval]:
    out: list[Interval] = []
    j = 0
    for a, b in xs:
        cur = a
        while j < len(ys) and ys[j][1] <= cur:
            j += 1
        k = j
        while k < len(ys) and ys[k][0] < b:
            if ys[k][0] > cur:
                out.append((cur, ys[k][0]))
            cur = max(cur, ys[k][1])
            k += 1
        if cur < b:
            out.append((cur, b))
    return out


def _inside_ns(ivs: Sequence[Interval], starts: Sequence[int], a: int, b: int) -> int:
    """Nanoseconds of ``ivs`` (sorted, disjoint; ``starts`` their starts) inside ``[a, b)``: a
    bisection to the first candidate, so a timeline of n stretches costs O(n log m), not O(n m)."""
    total = 0
    i = max(0, bisect_right(starts, a) - 1)
    while i < len(ivs) and ivs[i][0] < b:
        lo, hi = max(ivs[i][0], a), min(ivs[i][1], b)
        if hi > lo:
            total += hi - lo
        i += 1
    return total


def _total(ivs: Iterable[Interval]) -> int:
    return sum(b - a for a, b in ivs)


def _s(ns: int) -> float:
    return ns / NS


# ---- 1. state timeline ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stretch:
    """One stretch of one (state, reason) of a machine, clipped to the window (``start_ns``,
    ``end_ns``); ``since_ns``/``until_ns`` are its unclipped extent as far as the facts tell (the
    state change, possibly before the window; the next change, or the window's end)."""

    start_ns: int
    end_ns: int
    state: str
    reason: int | None
    since_ns: int
    until_ns: int

    @property
    def seconds(self) -> float:
        return _s(self.end_ns - self.start_ns)

    @property
    def length_s(self) -> float:
        return _s(self.until_ns - self.since_ns)


def state_timeline(changes: Sequence[StateChange], machine: str, start_ns: int, end_ns: int) -> list[Stretch]:
    """The machine's stretches covering ``[start_ns, end_ns)`` exactly, in time order.

    ``changes`` may hold other machines and changes outside the window (the last one before it is
    what the first seconds are in); time before the first known state is ``offline``."""
    own = sorted((c for c in changes if c.machine == machine and c.time_ns < end_ns), key=lambda c: c.time_ns)
    runs: list[tuple[int, str, int | None]] = []
    for c in own:
        if runs and (runs[-1][1], runs[-1][2]) == (c.state, c.reason):
            continue
        runs.append((c.time_ns, c.state, c.reason))
    out: list[Stretch] = []
    first = runs[0][0] if runs else end_ns
    if first > start_ns:
        out.append(Stretch(start_ns, min(first, end_ns), "offline", None, start_ns, min(first, end_ns)))
    for i, (t, state, reason) in enumerate(runs):
        until = runs[i + 1][0] if i + 1 < len(runs) else end_ns
        a, b = max(t, start_ns), min(until, end_ns)
        if a < b:
            out.append(Stretch(a, b, state, reason, t, until))
    return out


@dataclass(frozen=True, slots=True)
class StateSeconds:
    state_s: dict[str, float]  # seconds per state
    reason_s: dict[tuple[str, int | None], float]  # seconds per (state, reason)


def state_seconds(timeline: Iterable[Stretch]) -> StateSeconds:
    """Seconds per state and per (state, reason) of a timeline (exact: summed in ns)."""
    st: dict[str, int] = defaultdict(int)
    rs: dict[tuple[str, int | None], int] = defaultdict(int)
    for x in timeline:
        st[x.state] += x.end_ns - x.start_ns
        rs[(x.state, x.reason)] += x.end_ns - x.start_ns
    return StateSeconds({k: _s(v) for k, v in st.items()}, {k: _s(v) for k, v in rs.items()})


# ---- counts and products -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProductCounts:
    product: str | None  # None: no product known (the machine's ideal cycle applies)
    good: int
    scrap: int


@dataclass(frozen=True, slots=True)
class ProductSegment:
    """Counts with time in ``[start_ns, end_ns)`` were made as ``product``."""

    start_ns: int
    end_ns: int
    product: str | None


def product_segments(changes: Sequence[ProductFact], machine: str, start_ns: int,
                     end_ns: int) -> list[ProductSegment]:
    """Split ``[start_ns, end_ns)`` by product. A count at the very instant of a change belongs to
    the product before it, so a change at ``t`` starts a segment at ``t + 1`` ns."""
    own = sorted((c for c in changes if c.machine == machine), key=lambda c: c.time_ns)
    times = [c.time_ns for c in own]

    def product_before(q: int) -> str | None:
        i = bisect_left(times, q)  # own[:i] are the changes strictly before q
        return own[i - 1].product if i else None

    cuts = sorted({c.time_ns + 1 for c in own if start_ns < c.time_ns + 1 < end_ns})
    edges = [start_ns, *cuts, end_ns]
    out: list[ProductSegment] = []
    for a, b in pairwise(edges):
        p = product_before(a)
        if out and out[-1].product == p:
            out[-1] = ProductSegment(out[-1].start_ns, b, p)
        else:
            out.append(ProductSegment(a, b, p))
    return out


def good_scrap(machine: Machine, buckets: Iterable[CountBucket]) -> tuple[int, int]:
    """A machine's (good, scrap) from its count buckets: ``good``, or ``total − scrap`` for a
    machine that counts ``total`` and not ``good``."""
    sums: dict[str, int] = defaultdict(int)
    for b in buckets:
        if b.machine == machine.id:
            sums[b.signal] += b.total
    scrap = sums["scrap"]
    good = sums["good"] if "good" in machine.signals else max(0, sums["total"] - scrap)
    return good, scrap


def ideal_seconds(plant: Plant, machine: Machine, counts: Iterable[ProductCounts]) -> tuple[float, float] | None:
    """(ideal time of good + scrap, ideal time of scrap) in seconds; None when some counted part
    has no ideal cycle time (neither its product's nor the machine's)."""
    total = scrap = 0.0
    for c in counts:
        if c.good + c.scrap == 0:
            continue
        ideal = plant.ideal_cycle_s(machine, c.product)
        if ideal is None:
            return None
        total += ideal * (c.good + c.scrap)
        scrap += ideal * c.scrap
    return total, scrap


# ---- 2. a machine ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DowntimeEvent:
    machine: str
    start: datetime  # clipped to the window (UTC)
    end: datetime
    state: str
    reason: int | None
    category: str | None  # the reason's catalogue category
    seconds: float  # inside planned production time
    length_s: float  # the whole stop it is part of, as far as known (see the module docstring)
    micro_stop: bool
    starved_blocked: bool
    stop_start: datetime  # the stop's first non-running change (one stop may hold several events)


@dataclass(frozen=True, slots=True)
class ParetoRow:
    state: str
    reason: int | None
    category: str | None
    seconds: float
    count: int


@dataclass(frozen=True, slots=True)
class Losses:
    """The six big losses in seconds (see the module docstring), plus offline and starved/blocked."""

    breakdowns_s: float
    changeover_s: float
    idle_s: float
    micro_stops_s: float
    reduced_speed_s: float | None  # None without ideal cycle times
    rejects_s: float | None
    offline_s: float
    starved_blocked_s: float


@dataclass(frozen=True, slots=True)
class TimeBase:
    """The calendar side of a window for one machine (seconds)."""

    calendar_s: float
    scheduled_s: float
    breaks_s: float
    planned_s: float  # breaks ∪ planned-state time inside scheduled time
    planned_production_s: float
    production: tuple[Interval, ...]  # PPT as ns intervals


@dataclass(frozen=True, slots=True)
class MachineOee:
    machine: str
    start: datetime
    end: datetime
    time: TimeBase
    running_s: float  # inside PPT
    micro_stop_s: float
    run_s: float
    good: int
    scrap: int
    ideal_s: float | None  # Σ ideal × (good + scrap)
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    teep: float | None
    no_data: bool
    states: StateSeconds  # over the whole window (not only PPT)
    events: tuple[DowntimeEvent, ...]
    pareto: tuple[ParetoRow, ...]
    mtbf_s: float | None
    mttr_s: float | None
    losses: Losses
    products: tuple[ProductCounts, ...] = field(default=())


def _check_window(start: datetime, end: datetime) -> tuple[int, int]:
    if start.tzinfo is None or end.tzinfo is None:
        raise OeeError("window times need a UTC offset")
    s, e = to_ns(start), to_ns(end)
    if e <= s:
        raise OeeError(f"the window is empty or reversed: {start.isoformat()} – {end.isoformat()}")
    return s, e


def calendar_intervals(plant: Plant, start: datetime, end: datetime) -> tuple[list[Interval], list[Interval]]:
    """(scheduled, production) ns intervals inside the window: shift windows, and shift windows
    minus breaks."""
    s, e = _check_window(start, end)
    scheduled = _merge((max(to_ns(w.start), s), min(to_ns(w.end), e)) for w in shift_windows(plant, start, end))
    planned = _merge((to_ns(a), to_ns(b)) for a, b in planned_intervals(plant, start, end))
    return scheduled, _subtract(scheduled, planned)


def time_base(plant: Plant, start: datetime, end: datetime, timeline: Sequence[Stretch],
              horizon_ns: int | None = None) -> TimeBase:
    """The calendar side of a window for one machine. Time at or after ``horizon_ns`` (``as_of``)
    has not happened yet: it is no calendar time either (TEEP is over the time that has passed).
    ``running`` time outside every shift (after hours, a holiday) is scheduled and planned
    production time: a machine that runs when nothing was scheduled was scheduled for that time.
    A break inside a shift stays planned even when the state says ``running`` (many PLCs keep
    reporting running over a break)."""
    s, e = _check_window(start, end)
    h = e if horizon_ns is None else max(s, min(e, horizon_ns))
    scheduled, production = calendar_intervals(plant, start, end) if h > s else ([], [])
    scheduled, production = _intersect(scheduled, [(s, h)]), _intersect(production, [(s, h)])
    running = _merge((x.start_ns, min(x.end_ns, h)) for x in timeline if x.state == "running")
    extra = _subtract(running, scheduled)  # running when no shift was scheduled
    planned_state = _merge((x.start_ns, min(x.end_ns, h)) for x in timeline if x.state == "planned")
    sched = _merge([*scheduled, *extra])
    prod = _merge([*production, *extra])
    ppt = _subtract(prod, planned_state)
    sched_ns, ppt_ns = _total(sched), _total(ppt)
    return TimeBase(_s(h - s), _s(sched_ns), _s(sched_ns - _total(prod)), _s(sched_ns - ppt_ns),
                    _s(ppt_ns), tuple(ppt))


@dataclass(frozen=True, slots=True)
class Stop:
    """From a machine's first non-running state to its next ``running`` (or ``planned``) one, whatever
    states and reasons change inside. ``until_ns`` is the next such change, or the end of what was
    read (``as_of``, or the window's end plus ``micro_stop_s``) when it is still open there."""

    since_ns: int
    until_ns: int
    micro: bool

    @property
    def length_s(self) -> float:
        return _s(self.until_ns - self.since_ns)


STOP_ENDS = frozenset({"running", "planned"})


def stops_of(timeline: Sequence[Stretch], micro_ns: int) -> list[Stop | None]:
    """The stop each stretch belongs to (None for running and planned stretches). A stop is a
    micro-stop when it is shorter than ``micro_ns`` as a whole and only ``down``/``idle`` inside."""
    out: list[Stop | None] = [None] * len(timeline)
    i = 0
    while i < len(timeline):
        if timeline[i].state in STOP_ENDS:
            i += 1
            continue
        j = i
        while j + 1 < len(timeline) and timeline[j + 1].state not in STOP_ENDS:
            j += 1
        since, until = timeline[i].since_ns, timeline[j].until_ns
        micro = (until - since) < micro_ns and all(x.state in MICRO_STATES for x in timeline[i:j + 1])
        stop = Stop(since, until, micro)
        for k in range(i, j + 1):
            out[k] = stop
        i = j + 1
    return out


def read_range(plant: Plant, start_ns: int, end_ns: int, as_of_ns: int | None) -> tuple[int, int]:
    """The states to read for figures over ``[start_ns, end_ns)``: ``micro_stop_s`` either side, so a
    stop across an edge is judged by its whole length, but never after ``as_of``."""
    micro_ns = round(plant.calendar.micro_stop_s * NS)
    lo, hi = start_ns - micro_ns, end_ns + micro_ns
    if as_of_ns is not None:
        hi = min(hi, as_of_ns)
    return lo, max(hi, lo + 1)


def window_timeline(plant: Plant, machine: str, states: Sequence[StateChange], start_ns: int, end_ns: int,
                    as_of_ns: int | None = None) -> list[tuple[Stretch, Stop | None]]:
    """The machine's stretches covering ``[start_ns, end_ns)`` with the stop each belongs to, stops
    judged over :func:`read_range`. Time at or after ``as_of`` is ``offline`` (no data), never the last
    state carried into the future."""
    micro_ns = round(plant.calendar.micro_stop_s * NS)
    lo, hi = read_range(plant, start_ns, end_ns, as_of_ns)
    full = state_timeline(states, machine, lo, hi)
    stops = stops_of(full, micro_ns)
    h = end_ns if as_of_ns is None else max(start_ns, min(end_ns, as_of_ns))
    out: list[tuple[Stretch, Stop | None]] = []
    for x, stop in zip(full, stops, strict=True):
        a, b = max(x.start_ns, start_ns), min(x.end_ns, h)
        if a < b:
            out.append((Stretch(a, b, x.state, x.reason, x.since_ns, x.until_ns), stop))
    if h < end_ns:
        out.append((Stretch(h, end_ns, "offline", None, h, end_ns), None))
    return out


def _category(plant: Plant, reason: int | None) -> str | None:
    r = plant.reasons.get(reason) if reason is not None else None
    return r.category if r is not None else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def machine_oee(plant: Plant, machine: Machine, start: datetime, end: datetime,
                states: Sequence[StateChange], counts: Sequence[ProductCounts], *,
                as_of: datetime | None = None, good: int | None = None) -> MachineOee:
    """OEE and its parts for one machine over ``[start, end)``.

    ``states``: the store's state changes over :func:`read_range` (including the last one before
    it); ``counts``: good and scrap inside the window per product (:func:`counts_by_product`, or one
    ``ProductCounts(None, good, scrap)`` for a machine without products). ``as_of``: time from it on
    has not happened (no data). ``good``: the machine's good when the caller has it already clamped
    over a longer series (:func:`core.figures.clamp_good`); else Σ good, at least 0."""
    s, e = _check_window(start, end)
    as_of_ns = to_ns(as_of) if as_of is not None else None
    pairs = window_timeline(plant, machine.id, states, s, e, as_of_ns)
    timeline = [x for x, _ in pairs]
    tb = time_base(plant, start, end, timeline, as_of_ns)
    ppt = list(tb.production)
    ppt_starts = [a for a, _ in ppt]

    running_ns = micro_ns_total = 0
    own: dict[str, int] = defaultdict(int)  # non-micro seconds inside PPT per loss
    events: list[DowntimeEvent] = []
    down_stops: set[int] = set()
    for x, stop in pairs:
        inside = _inside_ns(ppt, ppt_starts, x.start_ns, x.end_ns)
        if x.state == "running":
            running_ns += inside
            continue
        if x.state == "planned" or inside == 0 or stop is None:
            continue
        cat = _category(plant, x.reason)
        micro = stop.micro
        neighbour = x.state == "idle" and cat in NEIGHBOUR_CATEGORIES
        if micro:
            micro_ns_total += inside
        elif neighbour:
            own["starved_blocked"] += inside
        else:
            own[x.state] += inside
            if x.state == "down":
                down_stops.add(stop.since_ns)
        events.append(DowntimeEvent(machine.id, from_ns(x.start_ns), from_ns(x.end_ns), x.state, x.reason, cat,
                                    _s(inside), stop.length_s, micro, neighbour and not micro,
                                    from_ns(stop.since_ns)))

    raw_good = sum(c.good for c in counts)
    good_n = max(0, raw_good) if good is None else good
    scrap = sum(c.scrap for c in counts)
    ideal = ideal_seconds(plant, machine, counts)
    run_ns = running_ns + micro_ns_total
    run_s, ppt_s = _s(run_ns), tb.planned_production_s
    no_data = good_n + scrap == 0
    a = p = q = oee = teep = None
    if not no_data:
        a = _ratio(run_s, ppt_s)
        p = _ratio(ideal[0], run_s) if ideal is not None else None
        q = good_n / (good_n + scrap)
        if a is not None and p is not None:
            oee = a * p * q
            teep = oee * ppt_s / tb.calendar_s if tb.calendar_s > 0 else None
    n_down = len(down_stops)
    down_s = _s(own["down"])
    losses = Losses(
        breakdowns_s=down_s, changeover_s=_s(own["changeover"]), idle_s=_s(own["idle"]),
        micro_stops_s=_s(micro_ns_total),
        reduced_speed_s=_s(running_ns) - ideal[0] if ideal is not None else None,
        rejects_s=ideal[1] if ideal is not None else None,
        offline_s=_s(own["offline"]), starved_blocked_s=_s(own["starved_blocked"]))
    return MachineOee(
        machine=machine.id, start=start, end=end, time=tb, running_s=_s(running_ns), micro_stop_s=_s(micro_ns_total),
        run_s=run_s, good=good_n, scrap=scrap, ideal_s=ideal[0] if ideal is not None else None,
        availability=a, performance=p, quality=q, oee=oee, teep=teep, no_data=no_data,
        states=state_seconds(timeline), events=tuple(events), pareto=pareto(events),
        mtbf_s=run_s / n_down if n_down else None,
        mttr_s=down_s / n_down if n_down else None,
        losses=losses, products=tuple(c for c in counts if c.good or c.scrap))


def pareto(events: Iterable[DowntimeEvent]) -> tuple[ParetoRow, ...]:
    """Seconds per (state, reason) of the events that are the machine's own availability losses (no
    micro-stops, no starved/blocked), largest first. A stop whose reason changed gives each reason its
    own seconds; ``count`` is the number of stops the (state, reason) occurs in."""
    acc: dict[tuple[str, int | None], float] = {}
    stops: dict[tuple[str, int | None], set[tuple[str, datetime]]] = {}
    cats: dict[tuple[str, int | None], str | None] = {}
    for ev in events:
        if ev.micro_stop or ev.starved_blocked:
            continue
        key = (ev.state, ev.reason)
        acc[key] = acc.get(key, 0.0) + ev.seconds
        stops.setdefault(key, set()).add((ev.machine, ev.stop_start))
        cats[key] = ev.category
    rows = [ParetoRow(st, r, cats[(st, r)], sec, len(stops[(st, r)])) for (st, r), sec in acc.items()]
    rows.sort(key=lambda r: (-r.seconds, -r.count, r.state, -1 if r.reason is None else r.reason))
    return tuple(rows)


# ---- 3. a line -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineOee:
    line: str
    start: datetime
    end: datetime
    output: tuple[str, ...]
    good: int
    scrap: int
    planned_production_s: float
    run_s: float
    ideal_s: float | None
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    teep: float | None
    no_data: bool
    calendar_s: float
    events: tuple[DowntimeEvent, ...]  # all stations' own downtime (no starved/blocked)
    pareto: tuple[ParetoRow, ...]
    starved_blocked_s: dict[str, float]  # per station, reported apart
    stations: tuple[MachineOee, ...]
    losses: Losses  # the output machine(s)' loss tree: it partitions the line's PPT − ideal time of good

    @property
    def outputs(self) -> tuple[MachineOee, ...]:
        return tuple(st for st in self.stations if st.machine in self.output)

    def output_sum(self, field_name: str) -> float:
        """A time of the line: its output machine(s)' (summed when several), like its PPT and run time.
        ``field_name`` is a :class:`TimeBase` field or ``running_s``/``micro_stop_s``."""
        return float(sum(getattr(o, field_name) if field_name in ("running_s", "micro_stop_s")
                         else getattr(o.time, field_name) for o in self.outputs))


def _opt_sum(vals: Iterable[float | None]) -> float | None:
    vs = list(vals)
    return None if any(v is None for v in vs) else sum(v or 0.0 for v in vs)


def sum_losses(parts: Sequence[Losses]) -> Losses:
    return Losses(
        breakdowns_s=sum(x.breakdowns_s for x in parts), changeover_s=sum(x.changeover_s for x in parts),
        idle_s=sum(x.idle_s for x in parts), micro_stops_s=sum(x.micro_stops_s for x in parts),
        reduced_speed_s=_opt_sum(x.reduced_speed_s for x in parts), rejects_s=_opt_sum(x.rejects_s for x in parts),
        offline_s=sum(x.offline_s for x in parts), starved_blocked_s=sum(x.starved_blocked_s for x in parts))


def line_oee(plant: Plant, line: Line, start: datetime, end: datetime, states: Sequence[StateChange],
             counts: Mapping[str, Sequence[ProductCounts]], *, as_of: datetime | None = None,
             good: Mapping[str, int] | None = None) -> LineOee:
    """A line's figures from its stations' state changes and per-machine product counts (``good``:
    per machine, already clamped over a longer series; see :func:`machine_oee`)."""
    _check_window(start, end)
    stations = tuple(machine_oee(plant, m, start, end, states, counts.get(m.id, ()), as_of=as_of,
                                 good=good.get(m.id) if good is not None else None) for m in line.machines)
    by_id = {st.machine: st for st in stations}
    outs = [by_id[m.id] for m in line.output_machines]
    good_n = sum(o.good for o in outs)
    scrap = sum(st.scrap for st in stations)
    ppt = sum(o.time.planned_production_s for o in outs)
    run = sum(o.run_s for o in outs)
    ideal: float | None = None if any(o.ideal_s is None for o in outs) else sum(o.ideal_s or 0.0 for o in outs)
    no_data = good_n + scrap == 0
    a = p = q = oee = teep = None
    calendar_s = outs[0].time.calendar_s
    if not no_data:
        a = _ratio(run, ppt)
        p = _ratio(ideal, run) if ideal is not None else None
        q = good_n / (good_n + scrap)
        if a is not None and p is not None:
            oee = a * p * q
            teep = oee * (ppt / len(outs)) / calendar_s if calendar_s > 0 else None
    events = tuple(sorted((ev for st in stations for ev in st.events if not ev.starved_blocked),
                          key=lambda ev: (ev.start, ev.machine)))
    return LineOee(line.id, start, end, tuple(o.machine for o in outs), good_n, scrap, ppt, run, ideal, a, p, q, oee,
                   teep, no_data, calendar_s, events, pareto(events),
                   {st.machine: st.losses.starved_blocked_s for st in stations}, stations,
                   sum_losses([o.losses for o in outs]))


# ---- 4. shift selection ----------------------------------------------------------------------------

ShiftSelector = Literal["current", "previous"] | str


def parse_day(text: str) -> date:
    """A ``YYYY-MM-DD`` date; :class:`OeeError` otherwise."""
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise OeeError(f"date {text!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-11-27") from None


def select_shift(plant: Plant, shift: ShiftSelector, as_of: datetime, day: date | str | None = None) -> ShiftWindow:
    """The shift a request means: ``current`` (running at ``as_of``), ``previous`` (the last one
    ended at or before ``as_of``), or a shift id with ``day`` (the local date it starts on).
    Raises :class:`OeeError` when there is no such shift."""
    if as_of.tzinfo is None:
        raise OeeError("as_of needs a UTC offset")
    if shift in ("current", "previous"):
        if day is not None:
            raise OeeError(f"shift={shift} is relative to as_of; leave out date")
        w = current_shift(plant, as_of) if shift == "current" else previous_shift(plant, as_of)
        if w is None:
            raise OeeError(f"there is no {shift} shift at {as_of.isoformat()}")
        return w
    ids = [s.id for s in plant.calendar.shifts]
    if shift not in ids:
        raise OeeError(f"unknown shift {shift!r}; use current, previous or one of: {', '.join(ids) or '(none)'}")
    if day is None:
        raise OeeError(f"shift={shift} needs date=YYYY-MM-DD (the local date it starts on)")
    d = parse_day(day) if isinstance(day, str) else day
    w = shift_on(plant, shift, d)
    if w is None:
        raise OeeError(f"shift {shift!r} does not run on {d.isoformat()} (not a working day for it, or a holiday)")
    return w


def shift_figure_window(w: ShiftWindow, as_of: datetime) -> tuple[datetime, datetime] | None:
    """The part of a shift to compute figures over: ``[start, min(end, as_of))``; None for a shift
    that has not begun at ``as_of``."""
    end = min(w.end, as_of)
    return (w.start, end) if end > w.start else None


# ---- store reads (thin wrappers) --------------------------------------------------------------------


class _ProductStore(Protocol):
    async def product_changes(self, machines: Sequence[str], start_ns: int,
                              end_ns: int) -> Sequence[ProductFact]: ...


async def counts_by_product(store: Store, machine: Machine, start_ns: int, end_ns: int) -> list[ProductCounts]:
    """Good and scrap of a machine in ``[start_ns, end_ns)`` per product, in order of first use (one
    store read per product segment; a machine without a product signal, or a store without product changes, is one
    segment with product None)."""
    signals = sorted(COUNTER_SIGNALS & set(machine.signals))
    if not signals:
        return []
    segments = [ProductSegment(start_ns, end_ns, None)]
    product_changes = getattr(store, "product_changes", None)
    if "product" in machine.signals and product_changes is not None:
        changes: Sequence[ProductFact] = await product_changes([machine.id], start_ns, end_ns)
        segments = product_segments(changes, machine.id, start_ns, end_ns)
    sums: dict[str | None, tuple[int, int]] = {}
    for seg in segments:
        buckets = await store.count_buckets([machine.id], signals, seg.start_ns, seg.end_ns,
                                            max(seg.end_ns - seg.start_ns, NS))
        g, sc = good_scrap(machine, buckets)
        g0, s0 = sums.get(seg.product, (0, 0))
        sums[seg.product] = (g0 + g, s0 + sc)
    return [ProductCounts(p, g, sc) for p, (g, sc) in sums.items()]


def _machine(plant: Plant, machine_id: str) -> Machine:
    m = plant.machine(machine_id)
    if m is None:
        raise OeeError(f"unknown machine {machine_id!r}")
    return m


async def machine_oee_from_store(store: Store, plant: Plant, machine_id: str, start: datetime,
                                 end: datetime, as_of: datetime | None = None) -> MachineOee:
    m = _machine(plant, machine_id)
    s, e = _check_window(start, end)
    lo, hi = read_range(plant, s, e, to_ns(as_of) if as_of is not None else None)
    states = await store.state_changes([m.id], lo, hi)
    return machine_oee(plant, m, start, end, states, await counts_by_product(store, m, s, e), as_of=as_of)


async def line_oee_from_store(store: Store, plant: Plant, line_id: str, start: datetime, end: datetime,
                              as_of: datetime | None = None) -> LineOee:
    line = plant.line(line_id)
    if line is None:
        raise OeeError(f"unknown line {line_id!r}; this plant has: {', '.join(ln.id for ln in plant.lines)}")
    s, e = _check_window(start, end)
    lo, hi = read_range(plant, s, e, to_ns(as_of) if as_of is not None else None)
    states = await store.state_changes([m.id for m in line.machines], lo, hi)
    counts = {m.id: await counts_by_product(store, m, s, e) for m in line.machines}
    return line_oee(plant, line, start, end, states, counts, as_of=as_of)
