from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from api.deps import AsOfDep, LineDep, PlantDep, StoreDep, parse_time
from api.routes.shifts import shift_out
from api.schemas import Point, Problem, Throughput
from core import figures

router = APIRouter(prefix="/api/v1", tags=["figures"])

WINDOW_HELP = "give start and end (ISO-8601 with offset), or shift=current"


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
    """Good (the line's output machines) and scrap (all its machines) per bucket; empty buckets are zeros."""
    try:
        b = figures.bucket_of(bucket)
    except figures.BucketError as e:
        raise HTTPException(422, str(e)) from None
    tz = plant.site.tz
    if shift is not None:
        if start is not None or end is not None:
            raise HTTPException(422, f"use either shift=current or start and end, not both; {WINDOW_HELP}")
        so_far = figures.shift_so_far(plant, as_of)
        if so_far is None:
            return Throughput(line=line.id, bucket=b.text, bucket_s=b.seconds, start=None, end=None, shift=None,
                              as_of=as_of.astimezone(tz), points=[], total_good=0, total_scrap=0)
        w_start, w_end = so_far.window.start, so_far.end_so_far
        shift_info = shift_out(so_far.window, tz)
        if w_end <= w_start:  # as_of is the shift's first instant: nothing has happened yet
            return Throughput(line=line.id, bucket=b.text, bucket_s=b.seconds, start=w_start.astimezone(tz),
                              end=w_end.astimezone(tz), shift=shift_info, as_of=as_of.astimezone(tz), points=[],
                              total_good=0, total_scrap=0)
    else:
        if start is None or end is None:
            missing = " and ".join(n for n, v in (("start", start), ("end", end)) if v is None)
            raise HTTPException(422, f"{missing} missing; {WINDOW_HELP}")
        w_start, w_end = parse_time("start", start), parse_time("end", end)
        shift_info = None
    result = await figures.line_throughput(store, plant, line.id, w_start, w_end, b)
    return Throughput(
        line=result.line, bucket=b.text, bucket_s=b.seconds, start=result.start, end=result.end, shift=shift_info,
        as_of=as_of.astimezone(tz) if shift is not None else None,
        points=[Point(start=p.start, end=p.end, good=p.good, scrap=p.scrap) for p in result.points],
        total_good=result.total_good, total_scrap=result.total_scrap,
    )
