"""Production figures from facts: the backend-agnostic math the API serves.

Everything here works on what the :class:`~core.store.base.Store` protocol returns, so one
implementation serves SQLite and InfluxDB alike. Windows are ``[start, end)``; times are aware
datetimes at the edges and UTC epoch nanoseconds inside.

Buckets are written ``30s``, ``5m``, ``1h``, ``1d`` (N followed by s, m, h or d):

- ``s``/``m``/``h`` buckets have a fixed length and align to UTC epoch multiples of it;
- ``d`` buckets are local calendar days in the site's time zone, starting at local midnight (a
  day across a DST change is 23 or 25 hours long); ``Nd`` groups N days whose count since
  1970-01-01 is a multiple of N.

Every bucket overlapping the window is returned, empty ones with zeros; the first and last may
be partial (only facts inside the window count).
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from core.calendar import ShiftWindow, current_shift
from core.model import from_ns, to_ns
from core.plant import Line, Plant
from core.store.base import CountBucket, Store

NS = 1_000_000_000
MAX_BUCKETS = 10_000
BUCKET_FORMS = "N followed by s, m, h or d, e.g. 30s, 5m, 1h, 1d"
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_BUCKET_RE = re.compile(r"^([1-9][0-9]{0,8})([smhd])$")
MAX_BUCKET_S = 366 * 86_400
_EPOCH_DAY = date(1970, 1, 1)
# Stores keep signed 64-bit epoch nanoseconds (InfluxDB's limit too); a day of margin both ways
# keeps local-midnight arithmetic inside the range.
_EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
_LATEST = datetime(2262, 4, 10, tzinfo=UTC)
# Local midnights in every current time zone fall on UTC quarter hours; the real grid is
# computed per window (gcd with the edges), so odd historical offsets stay exact too.
_DAY_GRID_S = 900


class FigureError(ValueError):
    """A figure cannot be computed for the request as asked; ``str()`` says what is allowed."""


class BucketError(FigureError):
    """A bucket that is not written as N followed by s, m, h or d."""


class WindowError(FigureError):
    """A window without offsets, empty, reversed, or cut into too many buckets."""


class NotFound(FigureError):
    """A line, machine or signal the plant file does not declare (HTTP 404; other figure errors 422)."""


class UnknownLine(NotFound):
    """A line id the plant file does not declare."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """A parsed bucket: ``seconds`` is its nominal length; ``days`` > 0 for local-day buckets."""

    text: str
    seconds: int
    days: int = 0

    @property
    def is_calendar(self) -> bool:
        return self.days > 0


def parse_bucket(text: str) -> int:
    """Seconds of a bucket written ``30s``, ``5m``, ``1h``, ``1d``; raises :class:`BucketError`."""
    return bucket_of(text).seconds


def bucket_of(text: str | Bucket) -> Bucket:
    """The :class:`Bucket` of ``text``; raises :class:`BucketError` saying which forms are allowed."""
    if isinstance(text, Bucket):
        return text
    m = _BUCKET_RE.match(text.strip())
    if not m:
        raise BucketError(f"bucket '{text}' is not allowed; write {BUCKET_FORMS}")
    n, unit = int(m.group(1)), m.group(2)
    if n * _UNIT_S[unit] > MAX_BUCKET_S:
        raise BucketError(f"bucket '{text}' is longer than the longest allowed, 366d; write {BUCKET_FORMS}")
    return Bucket(f"{n}{unit}", n * _UNIT_S[unit], n if unit == "d" else 0)


def check_time(name: str, t: datetime) -> datetime:
    """``t`` if it has an offset and lies in the range stores can hold; else :class:`WindowError`."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise WindowError(f"{name} {t.isoformat()} has no UTC offset; write it like "
                          "2026-11-27T08:00:00+09:00 or 2026-11-26T23:00:00Z")
    if not _EARLIEST <= t <= _LATEST:
        raise WindowError(f"{name} {t.isoformat()} is out of range; times must lie between "
                          f"{_EARLIEST.date()} and {_LATEST.date()}")
    return t


def check_day(name: str, d: date) -> date:
    """``d`` if its shifts lie in the range stores can hold; else :class:`WindowError` (a date in year 1
    would overflow before any time could be checked)."""
    if not _EARLIEST.date() < d < _LATEST.date():
        raise WindowError(f"{name} {d.isoformat()} is out of range; dates must lie between "
                          f"{_EARLIEST.date() + timedelta(days=1)} and {_LATEST.date() - timedelta(days=1)}")
    return d


def _check_window(start: datetime, end: datetime) -> tuple[int, int]:
    check_time("start", start)
    check_time("end", end)
    if end <= start:
        raise WindowError(f"the window is empty or reversed: start {start.isoformat()} is not before "
                          f"end {end.isoformat()}")
    return to_ns(start), to_ns(end)


def _local_midnight_ns(day: date, tz: tzinfo) -> int:
    return to_ns(datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC))


def bucket_edges(start: datetime, end: datetime, bucket: str | Bucket, tz: tzinfo,
                 max_buckets: int = MAX_BUCKETS) -> list[int]:
    """Edges (UTC epoch ns) ``e0 < e1 < … < ek`` of the k buckets overlapping ``[start, end)``.

    ``e0 <= start`` and ``ek >= end``; bucket i is ``[e_i, e_(i+1))``. Raises :class:`WindowError`
    when the window is invalid or would need more than ``max_buckets`` buckets.
    """
    b = bucket_of(bucket)
    start_ns, end_ns = _check_window(start, end)
    if not b.is_calendar:
        step = b.seconds * NS
        first = start_ns - start_ns % step
        count = -(-(end_ns - first) // step)
        _check_count(count, start, end, b, max_buckets)
        return [first + i * step for i in range(count + 1)]
    first_day = start.astimezone(tz).date()
    last_day = end.astimezone(tz).date()
    # end may sit exactly on a local midnight: that day's bucket does not overlap the window
    first_ord = (first_day - _EPOCH_DAY).days
    first_ord -= first_ord % b.days
    last_ord = (last_day - _EPOCH_DAY).days
    count = (last_ord - first_ord) // b.days + 1
    _check_count(count, start, end, b, max_buckets)
    edges = [_local_midnight_ns(_EPOCH_DAY + timedelta(days=first_ord + i * b.days), tz)
             for i in range(count + 1)]
    while len(edges) > 2 and edges[-2] >= end_ns:
        edges.pop()
    while len(edges) > 2 and edges[1] <= start_ns:  # a DST fold can put start past the first edge
        edges.pop(0)
    return edges


def _check_count(count: int, start: datetime, end: datetime, b: Bucket, max_buckets: int) -> None:
    if count > max_buckets:
        raise WindowError(f"the window {start.isoformat()} – {end.isoformat()} in {b.text} buckets needs "
                          f"{count} buckets; at most {max_buckets} are allowed: use a larger bucket or a "
                          "shorter window")


def query_grid_ns(edges: Sequence[int], bucket: str | Bucket) -> int:
    """The store bucket (ns) to query so that every store bucket lies inside one of ``edges``' buckets.

    Fixed buckets query themselves; local-day buckets query a grid fine enough to fall on every
    local midnight of the window (15 minutes in every current time zone), then regroup.
    """
    b = bucket_of(bucket)
    if not b.is_calendar:
        return b.seconds * NS
    grid_s = math.gcd(_DAY_GRID_S, *(e // NS for e in edges))
    return max(grid_s, 1) * NS


# ---- line throughput --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineCounters:
    """Which counters of which machines make a line's good and scrap counts."""

    good_plus: tuple[tuple[str, str], ...]  # (machine, signal) added to good
    good_minus: tuple[tuple[str, str], ...]  # (machine, signal) subtracted from good (total − scrap)
    scrap: tuple[tuple[str, str], ...]  # (machine, signal) added to scrap

    @property
    def machines(self) -> list[str]:
        return sorted({m for m, _ in (*self.good_plus, *self.good_minus, *self.scrap)})

    @property
    def signals(self) -> list[str]:
        return sorted({s for _, s in (*self.good_plus, *self.good_minus, *self.scrap)})


def line_counters(line: Line) -> LineCounters:
    """A line's good is its output machine(s)' good (or total − scrap where a machine counts
    ``total`` and ``scrap`` but not ``good``); its scrap is the scrap of all its machines."""
    plus: list[tuple[str, str]] = []
    minus: list[tuple[str, str]] = []
    for m in line.output_machines:
        if "good" in m.signals:
            plus.append((m.id, "good"))
        elif "total" in m.signals:
            plus.append((m.id, "total"))
            if "scrap" in m.signals:
                minus.append((m.id, "scrap"))
    scrap = [(m.id, "scrap") for m in line.machines if "scrap" in m.signals]
    return LineCounters(tuple(plus), tuple(minus), tuple(scrap))


def clamp_good(raw: Sequence[int]) -> list[int]:
    """Good per bucket from ``total − scrap`` per bucket, never negative, summing to
    ``max(0, Σ raw)`` (the window's good as OEE counts it).

    A scrap can be counted a moment after its part's total, across a bucket edge: that bucket's
    ``total − scrap`` is then negative. The cumulative good after bucket i is the least cumulative
    ``total − scrap`` from i on (a suffix minimum), clamped at 0: it never falls, so no bucket is
    negative, and it ends at the window's clamped good. A scrap thus takes its part from the bucket
    its total was counted in (or the last one before that still has it)."""
    cum: list[int] = []
    acc = 0
    for r in raw:
        acc += r
        cum.append(acc)
    out: list[int] = [0] * len(raw)
    low = None
    floor = [0] * len(raw)
    for i in range(len(raw) - 1, -1, -1):
        low = cum[i] if low is None else min(low, cum[i])
        floor[i] = max(0, low)
    prev = 0
    for i, g in enumerate(floor):
        out[i] = g - prev
        prev = g
    return out


def regroup(counters: LineCounters, buckets: Iterable[CountBucket], edges: Sequence[int],
            booked: Iterable[tuple[str, int, int]] = ()) -> list[tuple[int, int]]:
    """(good, scrap) per bucket ``[edges[i], edges[i+1])`` from store count buckets (zeros where empty).

    ``booked``: the operator's scrap bookings (machine, time_ns, quantity) of the line's machines: each
    adds to the scrap of the bucket holding its time and, on an output machine, takes from its good.

    A machine counting ``total`` and ``scrap`` gives ``total − scrap`` per bucket through
    :func:`clamp_good`, so no bucket shows negative good and the buckets add up to the window's good."""
    n = len(edges) - 1
    per: dict[str, list[int]] = {}
    scrap = [0] * n
    plus, minus, scr = set(counters.good_plus), set(counters.good_minus), set(counters.scrap)
    for cb in buckets:
        i = bisect_right(edges, cb.start_ns) - 1
        if not 0 <= i < n:
            continue
        key = (cb.machine, cb.signal)
        if key in plus:
            per.setdefault(cb.machine, [0] * n)[i] += cb.total
        if key in minus:
            per.setdefault(cb.machine, [0] * n)[i] -= cb.total
        if key in scr:
            scrap[i] += cb.total
    outputs = {m for m, _ in counters.good_plus}
    for machine, t, q in booked:
        i = bisect_right(edges, t) - 1
        if not 0 <= i < n:
            continue
        scrap[i] += q
        if machine in outputs:
            per.setdefault(machine, [0] * n)[i] -= q
    good = [0] * n
    for series in per.values():
        for i, g in enumerate(clamp_good(series)):
            good[i] += g
    return list(zip(good, scrap, strict=True))


@dataclass(frozen=True, slots=True)
class ThroughputPoint:
    start: datetime  # the bucket's start (aligned; may precede the window's start)
    end: datetime
    good: int
    scrap: int


@dataclass(frozen=True, slots=True)
class Throughput:
    line: str
    start: datetime
    end: datetime
    bucket: Bucket
    points: tuple[ThroughputPoint, ...]

    @property
    def total_good(self) -> int:
        return sum(p.good for p in self.points)

    @property
    def total_scrap(self) -> int:
        return sum(p.scrap for p in self.points)


def throughput_from_buckets(line: Line, buckets: Iterable[CountBucket], edges: Sequence[int],
                            start: datetime, end: datetime, bucket: str | Bucket, tz: tzinfo,
                            booked: Iterable[tuple[str, int, int]] = ()) -> Throughput:
    """The pure part of :func:`line_throughput`: store buckets (already clipped to the window) →
    a zero-filled :class:`Throughput` with times in ``tz``."""
    counts = regroup(line_counters(line), buckets, edges, booked)
    points = tuple(ThroughputPoint(from_ns(edges[i]).astimezone(tz), from_ns(edges[i + 1]).astimezone(tz), g, s)
                   for i, (g, s) in enumerate(counts))
    return Throughput(line.id, start.astimezone(tz), end.astimezone(tz), bucket_of(bucket), points)


async def line_throughput(store: Store, plant: Plant, line_id: str, start: datetime, end: datetime,
                          bucket: str | Bucket, *, max_buckets: int = MAX_BUCKETS,
                          booked: Iterable[tuple[str, int, int]] = ()) -> Throughput:
    """Good and scrap of a line per bucket over ``[start, end)``; ``booked`` are the operator's scrap
    bookings (:func:`core.operator.bookings`) laid over the counters (:func:`regroup`).

    Raises :class:`UnknownLine`, :class:`BucketError`, :class:`WindowError`; store errors
    (``StoreUnavailable``) pass through.
    """
    line = plant.line(line_id)
    if line is None:
        known = ", ".join(ln.id for ln in plant.lines)
        raise UnknownLine(f"unknown line '{line_id}'; this plant has: {known}")
    b = bucket_of(bucket)
    tz = plant.site.tz
    edges = bucket_edges(start, end, b, tz, max_buckets)
    counters = line_counters(line)
    found: list[CountBucket] = []
    if counters.machines:
        found = await store.count_buckets(counters.machines, counters.signals, to_ns(start), to_ns(end),
                                          query_grid_ns(edges, b))
    return throughput_from_buckets(line, found, edges, start, end, b, tz, booked)


# ---- shifts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShiftSoFar:
    """The shift running at ``as_of`` and how much of it has passed."""

    window: ShiftWindow
    as_of: datetime

    @property
    def end_so_far(self) -> datetime:
        return min(max(self.as_of, self.window.start), self.window.end)

    @property
    def elapsed_s(self) -> float:
        return (self.end_so_far - self.window.start).total_seconds()


def shift_so_far(plant: Plant, as_of: datetime) -> ShiftSoFar | None:
    """The shift running at ``as_of`` (per :func:`core.calendar.current_shift`), or None."""
    check_time("as_of", as_of)
    w = current_shift(plant, as_of)
    return ShiftSoFar(w, as_of) if w is not None else None


def rate_per_hour(count: int, elapsed_s: float) -> float | None:
    """``count`` per hour of ``elapsed_s``; None when no time has passed (no data, not infinity)."""
    if elapsed_s <= 0:
        return None
    return count * 3600.0 / elapsed_s
