from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from api.deps import AsOfDep, LineDep, PlantDep, StoreDep, parse_time
from api.routes.shifts import shift_out
from api.schemas import Point, Problem, Throughput
from api.work import OffloadedRoute, check_span
from core import figures
from core.model import to_ns
from core.oee import calendar_intervals
from core.plant import Line, Plant

router = APIRouter(prefix="/api/v1", tags=["figures"], route_class=OffloadedRoute)

WINDOW_HELP = "give start and end (ISO-8601 with offset), or shift=current"
NS_PER_H = 3_600_000_000_000


def production_ns(plant: Plant, start: datetime, end: datetime) -> list[tuple[int, int]]:
    """Planned production time of ``[start, end)`` from the calendar (shifts minus breaks) as ns intervals."""
    if end <= start:
        return []
    return calendar_intervals(plant, start, end)[1]


def production_ns_in(intervals: Sequence[tuple[int, int]], a: int, b: int,
                     starts: Sequence[int] | None = None) -> int:
    """Nanoseconds of ``intervals`` (sorted, disjoint) inside ``[a, b)``; with their ``starts`` the
    first candidate is found by bisection (10 000 buckets over 400 days: 0.1 s instead of 6 s)."""
    i = 0
    if starts is not None:
        i = max(0, bisect_right(starts, a) - 1)
    total = 0
    for x, y in intervals[i:] if i else intervals:
        if x >= b:
            break
        total += max(0, min(y, b) - max(x, a))
    return total


def target_of(line: Line, ns: int) -> float:
    """The line's target for ``ns`` nanoseconds of planned production time."""
    return line.target_per_hour * ns / NS_PER_H


def with_targets(line: Line, plant: Plant, result: figures.Throughput) -> tuple[list[Point], float]:
    """Points with each bucket's target (its planned production time inside the window) and the
    cumulative actual and target; and the window's total target. Cumulative targets come from the
    cumulative nanoseconds, so they carry no summed rounding."""
    ppt = production_ns(plant, result.start, result.end)
    starts = [x for x, _ in ppt]
    w0, w1 = to_ns(result.start), to_ns(result.end)
    points: list[Point] = []
    cum_good = cum_ns = 0
    for p in result.points:
        ns = production_ns_in(ppt, max(to_ns(p.start), w0), min(to_ns(p.end), w1), starts)
        cum_good += p.good
        cum_ns += ns
        points.append(Point(start=p.start, end=p.end, good=p.good, scrap=p.scrap, target=target_of(line, ns),
                            cumulative_good=cum_good, cumulative_target=target_of(line, cum_ns)))
    return points, target_of(line, cum_ns)


@router.get(
    "/lines/{line_id}/throughput",
    response_model=Throughput,
    responses={404: {"model": Problem, "description": "Unknown line"},
               422: {"model": Problem, "description": "Bad time, window or bucket"},
               503: {"model": Problem, "description": "Store unreachable; see Retry-After"}},
)
async def throughput(
    line: LineDep,
    plant: PlantDep,
    store: StoreDep,
    as_of: AsOfDep,
    start: Annotated[str | None, Query(description="Window start, inclusive, ISO-8601 with offset",
                                       examples=["2026-11-27T08:00:00+09:00"])] = None,
    end: Annotated[str | None, Query(description="Window end, exclusive, ISO-8601 with offset",
                                     examples=["2026-11-27T17:00:00+09:00"])] = None,
    bucket: Annotated[str, Query(description=f"Bucket: {figures.BUCKET_FORMS}. Buckets shorter than a day "
                                 "align to UTC epoch multiples, 'd' buckets to local midnight")] = "1h",
    shift: Annotated[Literal["current"] | None, Query(
        description="'current': the window is the shift running at as_of, from its start to as_of "
                    "(or its end). When no shift runs the answer is 200 with shift null and no points.")] = None,
) -> Throughput:
    """Good (the line's output machines) and scrap (all its machines) per bucket; empty buckets are zeros.

    Each point also carries its target (``target_per_hour`` × the bucket's planned production
    seconds inside the window / 3600: breaks and time outside shifts count nothing) and the
    cumulative good and target from the window's start to the bucket's end."""
    try:
        b = figures.bucket_of(bucket)
    except figures.BucketError as e:
        raise HTTPException(422, str(e)) from None
    tz = plant.site.tz
    tph = line.target_per_hour
    if shift is not None:
        if start is not None or end is not None:
            raise HTTPException(422, f"use either shift=current or start and end, not both; {WINDOW_HELP}")
        so_far = figures.shift_so_far(plant, as_of)
        if so_far is None:
            return Throughput(line=line.id, bucket=b.text, bucket_s=b.seconds, start=None, end=None, shift=None,
                              as_of=as_of.astimezone(tz), points=[], total_good=0, total_scrap=0,
                              target_per_hour=tph)
        w_start, w_end = so_far.window.start, so_far.end_so_far
        shift_info = shift_out(so_far.window, tz)
        if w_end <= w_start:  # as_of is the shift's first instant: nothing has happened yet
            return Throughput(line=line.id, bucket=b.text, bucket_s=b.seconds, start=w_start.astimezone(tz),
                              end=w_end.astimezone(tz), shift=shift_info, as_of=as_of.astimezone(tz), points=[],
                              total_good=0, total_scrap=0, target_per_hour=tph)
    else:
        if start is None or end is None:
            missing = " and ".join(n for n, v in (("start", start), ("end", end)) if v is None)
            raise HTTPException(422, f"{missing} missing; {WINDOW_HELP}")
        w_start, w_end = parse_time("start", start), parse_time("end", end)
        if w_end > w_start:
            check_span(w_start, w_end)
        shift_info = None
    result = await figures.line_throughput(store, plant, line.id, w_start, w_end, b)
    points, total_target = with_targets(line, plant, result)
    return Throughput(
        line=result.line, bucket=b.text, bucket_s=b.seconds, start=result.start, end=result.end, shift=shift_info,
        as_of=as_of.astimezone(tz) if shift is not None else None, points=points,
        total_good=result.total_good, total_scrap=result.total_scrap, target_per_hour=tph, total_target=total_target,
    )
