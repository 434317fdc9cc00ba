"""OEE, downtime, state timelines and gauge series of lines and machines over one window.

The math is :mod:`core.oee`'s; these routes pick the window (``api.figure_params``), call it, and
shape the answer (JSON, or CSV for the tabular part)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, tzinfo
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from api.deps import LangDep, LineDep
from api.figure_params import (
    FiguresDep,
    MachineDep,
    WantsCsv,
    WindowDep,
    csv_doc,
    csv_response,
    stop_label,
)
from api.routes.shifts import shift_out
from api.schemas import Problem
from api.schemas_figures import (
    DowntimeEventOut,
    DowntimeOut,
    GaugeOut,
    GaugePoint,
    OeeCounts,
    OeeFigures,
    OeeLosses,
    OeeOut,
    OeeTimes,
    ParetoRowOut,
    StatesOut,
    StretchOut,
)
from api.work import OffloadedRoute
from core import figures, oee
from core.model import from_ns
from core.plant import Line, Machine, label
from core.readside import Figures, Window

router = APIRouter(prefix="/api/v1", tags=["figures"], route_class=OffloadedRoute)

MAX_OEE_POINTS = 500  # points are computed in memory from one read, but each is a full figure set
NS = 1_000_000_000


def _errors(not_found: str) -> dict[int | str, dict[str, Any]]:
    return {404: {"model": Problem, "description": not_found},
            422: {"model": Problem, "description": "Bad time, window, shift, date or bucket; the detail says "
                                                   "what is allowed"},
            503: {"model": Problem, "description": "Store unreachable; see Retry-After"}}


def _t(d: datetime, tz: tzinfo) -> datetime:
    return d.astimezone(tz)


# ---- OEE ---------------------------------------------------------------------------------------------

_FIGS_EXAMPLE: dict[str, Any] = {
    "start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T10:30:00+09:00",
    "availability": 0.86, "performance": 0.93, "quality": 0.98, "oee": 0.784, "teep": 0.728, "no_data": False,
    "times": {"calendar_s": 9000.0, "scheduled_s": 9000.0, "breaks_s": 600.0, "planned_s": 600.0,
              "planned_production_s": 8400.0, "running_s": 7100.0, "micro_stop_s": 124.0, "run_s": 7224.0},
    "counts": {"good": 236, "scrap": 4, "total": 240},
    "losses": {"breakdowns_s": 610.0, "changeover_s": 240.0, "idle_s": 0.0, "micro_stops_s": 124.0,
               "reduced_speed_s": 380.0, "rejects_s": 112.0, "offline_s": 0.0, "starved_blocked_s": 326.0},
}
_OEE_EXAMPLE: dict[str, Any] = {"kind": "line", "id": "blade-1", "name": "Turbine blade line 1",
                "start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T10:30:00+09:00",
                "shift": {"id": "day", "name": "Day shift", "day": "2026-11-27", "start": "2026-11-27T08:00:00+09:00",
                          "end": "2026-11-27T17:00:00+09:00"},
                "as_of": "2026-11-27T10:30:00+09:00", "bucket": None, "figures": _FIGS_EXAMPLE, "points": []}
_OEE_COLUMNS = ["start", "end", "availability", "performance", "quality", "oee", "teep", "no_data",
                "good", "scrap", "total", *OeeTimes.model_fields, *OeeLosses.model_fields]
_OEE_CSV = ("start,end,availability,performance,quality,oee,teep,no_data,good,scrap,total,calendar_s,...\r\n"
            "2026-11-27T08:00:00+09:00,2026-11-27T09:00:00+09:00,0.9,0.95,0.98,0.838,0.838,false,110,2,112,3600,...")
_OEE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": _OEE_EXAMPLE}, **csv_doc(_OEE_CSV)},
                        "description": "Figures over the window; with bucket, also per bucket. CSV: one row per "
                                       "point (or one row for the window without bucket)"}}


def machine_figures(m: oee.MachineOee, tz: tzinfo) -> OeeFigures:
    t = m.time
    return OeeFigures(
        start=_t(m.start, tz), end=_t(m.end, tz), availability=m.availability, performance=m.performance,
        quality=m.quality, oee=m.oee, teep=m.teep, no_data=m.no_data,
        times=OeeTimes(calendar_s=t.calendar_s, scheduled_s=t.scheduled_s, breaks_s=t.breaks_s,
                       planned_s=t.planned_s, planned_production_s=t.planned_production_s, running_s=m.running_s,
                       micro_stop_s=m.micro_stop_s, run_s=m.run_s),
        counts=OeeCounts(good=m.good, scrap=m.scrap, total=m.good + m.scrap),
        losses=OeeLosses(**asdict(m.losses)))


def line_figures(lo: oee.LineOee, tz: tzinfo) -> OeeFigures:
    """A line's times and losses are its output machine(s)' (core.oee.LineOee)."""
    return OeeFigures(
        start=_t(lo.start, tz), end=_t(lo.end, tz), availability=lo.availability, performance=lo.performance,
        quality=lo.quality, oee=lo.oee, teep=lo.teep, no_data=lo.no_data,
        times=OeeTimes(calendar_s=lo.calendar_s, scheduled_s=lo.output_sum("scheduled_s"),
                       breaks_s=lo.output_sum("breaks_s"), planned_s=lo.output_sum("planned_s"),
                       planned_production_s=lo.planned_production_s, running_s=lo.output_sum("running_s"),
                       micro_stop_s=lo.output_sum("micro_stop_s"), run_s=lo.run_s),
        counts=OeeCounts(good=lo.good, scrap=lo.scrap, total=lo.good + lo.scrap),
        losses=OeeLosses(**asdict(lo.losses)))


def _out(r: oee.LineOee | oee.MachineOee, tz: tzinfo) -> OeeFigures:
    return line_figures(r, tz) if isinstance(r, oee.LineOee) else machine_figures(r, tz)


async def _oee(kind: Literal["line", "machine"], target: Line | Machine, fig: Figures, lang: str,
               window: tuple[Window, datetime], bucket: str | None, wants_csv: bool) -> OeeOut | Response:
    w, as_of = window
    plant = fig.plant
    tz = plant.site.tz
    whole, pts = await fig.oee(target, w, bucket, MAX_OEE_POINTS)
    points = [_out(p, tz) for p in pts]
    figs = _out(whole, tz)
    if wants_csv:
        rows = [{**f.model_dump(exclude={"times", "counts", "losses"}), **f.times.model_dump(),
                 **f.counts.model_dump(), **f.losses.model_dump()} for f in (points or [figs])]
        return csv_response(_OEE_COLUMNS, rows, f"oee-{target.id}")
    return OeeOut(kind=kind, id=target.id, name=label(target.name, lang, target.id), start=_t(w.start, tz),
                  end=_t(w.end, tz), shift=shift_out(w.shift, plant, lang) if w.shift else None,
                  as_of=_t(as_of, tz),
                  bucket=figures.bucket_of(bucket).text if bucket is not None else None, figures=figs, points=points)


BucketQuery = Annotated[str | None, Query(
    description=f"Also give figures per bucket ({figures.BUCKET_FORMS}); at most {MAX_OEE_POINTS} buckets",
    examples=["1h"])]


@router.get("/lines/{line_id}/oee", response_model=OeeOut, responses={**_errors("Unknown line"), **_OEE_RESPONSES})
async def line_oee(line: LineDep, fig: FiguresDep, lang: LangDep, window: WindowDep,
                   wants_csv: WantsCsv, bucket: BucketQuery = None) -> OeeOut | Response:
    """Availability, performance, quality, OEE and TEEP of a line (its output machine(s)' times and good,
    all machines' scrap) with times, counts and losses; ``no_data`` and null ratios when nothing was counted."""
    return await _oee("line", line, fig, lang, window, bucket, wants_csv)


@router.get("/machines/{machine_id}/oee", response_model=OeeOut,
            responses={**_errors("Unknown machine"), **_OEE_RESPONSES})
async def machine_oee(machine: MachineDep, fig: FiguresDep, lang: LangDep, window: WindowDep,
                      wants_csv: WantsCsv, bucket: BucketQuery = None) -> OeeOut | Response:
    """OEE and its parts for one machine over the window (or per bucket)."""
    return await _oee("machine", machine, fig, lang, window, bucket, wants_csv)


# ---- downtime ------------------------------------------------------------------------------------------

_DOWNTIME_EXAMPLE = {
    "line": "blade-1", "start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T10:30:00+09:00", "shift": None,
    "as_of": "2026-11-27T10:30:00+09:00",
    "events": [{"start": "2026-11-27T08:41:12.250000+09:00", "end": "2026-11-27T08:43:40+09:00", "machine": "cnc-1",
                "state": "down", "reason": 20, "label": "Spindle fault", "category": "breakdown",
                "seconds": 147.75, "length_s": 147.75, "micro_stop": False}],
    "pareto": [{"state": "down", "reason": 20, "label": "Spindle fault", "category": "breakdown",
                "seconds": 147.75, "count": 1, "share": 1.0, "cumulative_share": 1.0}],
    "total_s": 147.75}
_EVENT_COLUMNS = list(DowntimeEventOut.model_fields)
_PARETO_COLUMNS = list(ParetoRowOut.model_fields)


@router.get("/lines/{line_id}/downtime", response_model=DowntimeOut, responses={
    **_errors("Unknown line"),
    200: {"content": {"application/json": {"example": _DOWNTIME_EXAMPLE}, **csv_doc(
        ",".join(_EVENT_COLUMNS) + "\r\n2026-11-27T08:41:12.250000+09:00,2026-11-27T08:43:40+09:00,cnc-1,down,20,"
        "Spindle fault,breakdown,147.75,147.75,false")},
          "description": "Stops and their Pareto; CSV: the events (or the Pareto with table=pareto)"}})
async def downtime(line: LineDep, fig: FiguresDep, lang: LangDep, window: WindowDep, wants_csv: WantsCsv,
                   table: Annotated[Literal["events", "pareto"], Query(
                       description="Which table a CSV answer holds")] = "events") -> DowntimeOut | Response:
    """Every station's own stops inside planned production time (starved/blocked idle left out, micro-stops
    flagged), clipped to the window, and a Pareto by (state, reason) without micro-stops. A stop is one
    stop from its first non-running state to the next running one: each reason inside it is its own event
    (same ``stop_start``) and gets its own seconds in the Pareto."""
    w, as_of = window
    plant = fig.plant
    tz = plant.site.tz
    dt = await fig.downtime(line, w)
    events = [DowntimeEventOut(start=_t(ev.start, tz), end=_t(ev.end, tz), machine=ev.machine, state=ev.state,
                               reason=ev.reason, label=stop_label(plant, ev.state, ev.reason, lang),
                               category=ev.category, seconds=ev.seconds, length_s=ev.length_s,
                               micro_stop=ev.micro_stop, stop_start=_t(ev.stop_start, tz)) for ev in dt.line.events]
    pareto = [ParetoRowOut(state=p.row.state, reason=p.row.reason,
                           label=stop_label(plant, p.row.state, p.row.reason, lang), category=p.row.category,
                           seconds=p.row.seconds, count=p.row.count, share=p.share,
                           cumulative_share=p.cumulative_share) for p in dt.pareto]
    if wants_csv:
        if table == "pareto":
            return csv_response(_PARETO_COLUMNS, (p.model_dump() for p in pareto), f"pareto-{line.id}")
        return csv_response(_EVENT_COLUMNS, (e.model_dump() for e in events), f"downtime-{line.id}")
    return DowntimeOut(line=line.id, start=_t(w.start, tz), end=_t(w.end, tz),
                       shift=shift_out(w.shift, plant, lang) if w.shift else None, as_of=_t(as_of, tz),
                       events=events, pareto=pareto, total_s=dt.total_s)


# ---- states --------------------------------------------------------------------------------------------

_STATES_EXAMPLE = {
    "machine": "cnc-1", "start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T09:00:00+09:00", "shift": None,
    "as_of": "2026-11-27T10:30:00+09:00",
    "timeline": [{"start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T08:41:12.250000+09:00",
                  "state": "running", "reason": None, "label": "Running", "seconds": 2472.25,
                  "since": "2026-11-27T07:58:03+09:00"},
                 {"start": "2026-11-27T08:41:12.250000+09:00", "end": "2026-11-27T09:00:00+09:00",
                  "state": "down", "reason": 20, "label": "Spindle fault", "seconds": 1127.75,
                  "since": "2026-11-27T08:41:12.250000+09:00"}],
    "state_seconds": {"running": 2472.25, "down": 1127.75}}
_STRETCH_COLUMNS = list(StretchOut.model_fields)


@router.get("/machines/{machine_id}/states", response_model=StatesOut, responses={
    **_errors("Unknown machine"),
    200: {"content": {"application/json": {"example": _STATES_EXAMPLE}, **csv_doc(
        ",".join(_STRETCH_COLUMNS) + "\r\n2026-11-27T08:00:00+09:00,2026-11-27T08:41:12.250000+09:00,running,,"
        "Running,2472.25,2026-11-27T07:58:03+09:00")},
          "description": "The timeline; CSV: one row per stretch"}})
async def states(machine: MachineDep, fig: FiguresDep, lang: LangDep, window: WindowDep,
                 wants_csv: WantsCsv) -> StatesOut | Response:
    """The machine's state timeline covering the window exactly: a state that began before the window
    starts the timeline at the window start (``since`` says when it began); no data is ``offline``, and so
    is everything from ``as_of`` on (it has not happened yet)."""
    w, as_of = window
    plant = fig.plant
    tz = plant.site.tz
    timeline = await fig.states(machine, w)
    rows = [StretchOut(start=_t(from_ns(x.start_ns), tz), end=_t(from_ns(x.end_ns), tz), state=x.state,
                       reason=x.reason, label=stop_label(plant, x.state, x.reason, lang), seconds=x.seconds,
                       since=_t(from_ns(x.since_ns), tz)) for x in timeline]
    if wants_csv:
        return csv_response(_STRETCH_COLUMNS, (r.model_dump() for r in rows), f"states-{machine.id}")
    return StatesOut(machine=machine.id, start=_t(w.start, tz), end=_t(w.end, tz),
                     shift=shift_out(w.shift, plant, lang) if w.shift else None, as_of=_t(as_of, tz), timeline=rows,
                     state_seconds=oee.state_seconds(timeline).state_s)


# ---- gauges --------------------------------------------------------------------------------------------

_GAUGE_EXAMPLE = {
    "machine": "cnc-1", "signal": "spindle_temp", "unit": "°C", "bucket": "5m",
    "start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T08:10:00+09:00", "shift": None,
    "as_of": "2026-11-27T10:30:00+09:00",
    "points": [{"start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T08:05:00+09:00", "mean": 41.2,
                "min": 40.1, "max": 42.5, "count": 300},
               {"start": "2026-11-27T08:05:00+09:00", "end": "2026-11-27T08:10:00+09:00", "mean": None,
                "min": None, "max": None, "count": 0}]}
_GAUGE_COLUMNS = list(GaugePoint.model_fields)


@router.get("/machines/{machine_id}/signals/{signal}", response_model=GaugeOut, responses={
    **_errors("Unknown machine, or a signal the machine does not have (the detail names its gauges)"),
    422: {"model": Problem, "description": "A counter, state, reason or product signal (not a gauge), or a bad "
                                           "time, window, shift or bucket"},
    200: {"content": {"application/json": {"example": _GAUGE_EXAMPLE}, **csv_doc(
        "start,end,mean,min,max,count\r\n2026-11-27T08:00:00+09:00,2026-11-27T08:05:00+09:00,41.2,40.1,42.5,300")},
          "description": "The gauge per bucket; CSV: one row per bucket"}})
async def gauge(machine: MachineDep, fig: FiguresDep, lang: LangDep, window: WindowDep, wants_csv: WantsCsv,
                signal: Annotated[str, Path(description="A gauge signal of the machine, e.g. spindle_temp")],
                bucket: Annotated[str, Query(description=f"Bucket: {figures.BUCKET_FORMS}")] = "5m",
                ) -> GaugeOut | Response:
    """Mean, min, max and count of a gauge per bucket; empty buckets have count 0 and null values."""
    w, as_of = window
    plant = fig.plant
    tz = plant.site.tz
    series = await fig.gauge(machine, signal, w, bucket)
    points = [GaugePoint(start=_t(p.start, tz), end=_t(p.end, tz), mean=p.mean, min=p.min, max=p.max,
                         count=p.count) for p in series.points]
    if wants_csv:
        return csv_response(_GAUGE_COLUMNS, (p.model_dump() for p in points), f"{machine.id}-{signal}")
    return GaugeOut(machine=machine.id, signal=signal, unit=machine.signals[signal].unit, bucket=series.bucket.text,
                    start=_t(w.start, tz), end=_t(w.end, tz),
                    shift=shift_out(w.shift, plant, lang) if w.shift else None, as_of=_t(as_of, tz), points=points)
