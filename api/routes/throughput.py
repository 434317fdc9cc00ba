"""Good, scrap and target of a line per bucket (the math is core.readside's)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.deps import LangDep, LineDep
from api.figure_params import FiguresDep, WantsCsv, WindowAskDep, csv_doc, csv_response, resolve
from api.routes.shifts import shift_out
from api.schemas import Point, Problem, Throughput
from api.work import OffloadedRoute
from core import figures

router = APIRouter(prefix="/api/v1", tags=["figures"], route_class=OffloadedRoute)

_COLUMNS = list(Point.model_fields)


@router.get(
    "/lines/{line_id}/throughput",
    response_model=Throughput,
    responses={404: {"model": Problem, "description": "Unknown line"},
               422: {"model": Problem, "description": "Bad time, window, shift, date or bucket"},
               503: {"model": Problem, "description": "Store unreachable; see Retry-After"},
               200: {"content": {"application/json": {}, **csv_doc(
                   ",".join(_COLUMNS) + "\r\n2026-11-27T08:00:00+09:00,2026-11-27T09:00:00+09:00,110,2,110.0,110,"
                   "110.0")}, "description": "Good, scrap and target per bucket; CSV: one row per bucket"}},
)
async def throughput(
    line: LineDep,
    fig: FiguresDep,
    ask: WindowAskDep,
    wants_csv: WantsCsv,
    lang: LangDep,
    bucket: Annotated[str, Query(description=f"Bucket: {figures.BUCKET_FORMS}. Buckets shorter than a day "
                                 "align to UTC epoch multiples, 'd' buckets to local midnight")] = "1h",
) -> Throughput | Response:
    """Good (the line's output machines) and scrap (all its machines) per bucket; empty buckets are zeros.
    The window is start and end, or ``shift=current|previous|<id>`` (with ``date``) like every figure route;
    ``shift=current`` when no shift runs is 200 with shift null and no points.

    Good per bucket is never negative and sums to the good the OEE routes count for the window (a scrap
    counted just after its part's total, across a bucket edge, takes the part from that earlier bucket).
    Each point also carries its target (``target_per_hour`` × the bucket's planned production seconds
    inside the window / 3600: breaks and time outside shifts count nothing; a ``planned`` state does not
    lower it) and the cumulative good and target from the window's start to the bucket's end."""
    b = figures.bucket_of(bucket)
    tz = fig.plant.site.tz
    tph = line.target_per_hour
    as_of = ask.as_of.astimezone(tz) if ask.shift is not None else None
    if ask.shift == "current" and ask.start is None and ask.end is None and ask.date is None:
        nothing = fig.empty_current_shift(ask.as_of)
        if nothing is not None:  # no shift runs, or it starts at as_of: 200 with no points
            sw, so_far = nothing
            empty = Throughput(line=line.id, bucket=b.text, bucket_s=b.seconds,
                               start=sw.start.astimezone(tz) if sw else None,
                               end=so_far.astimezone(tz) if so_far else None,
                               shift=shift_out(sw, fig.plant, lang) if sw else None, as_of=as_of, points=[],
                               total_good=0, total_scrap=0, target_per_hour=tph)
            return csv_response(_COLUMNS, [], f"throughput-{line.id}") if wants_csv else empty
    w = resolve(fig, ask)
    result = await fig.throughput(line, w, b)
    points = [Point(start=p.start, end=p.end, good=p.good, scrap=p.scrap, target=p.target,
                    cumulative_good=p.cumulative_good, cumulative_target=p.cumulative_target) for p in result.points]
    if wants_csv:
        return csv_response(_COLUMNS, (p.model_dump() for p in points), f"throughput-{line.id}")
    return Throughput(
        line=result.line, bucket=b.text, bucket_s=b.seconds, start=result.start, end=result.end,
        shift=shift_out(w.shift, fig.plant, lang) if w.shift else None, as_of=as_of, points=points,
        total_good=result.total_good, total_scrap=result.total_scrap, target_per_hour=tph,
        total_target=result.total_target,
    )
