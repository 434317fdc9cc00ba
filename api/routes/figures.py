"""OEE, downtime, state timelines and gauge series of lines and machines over one window.

The math is :mod:`core.oee`'s; these routes pick the window (``api.figure_params``), call it, and
shape the answer (JSON, or CSV for the tabular part)."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import asdict
from datetime import datetime, tzinfo
from itertools import pairwise
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response

from api.deps import LangDep, LineDep, PlantDep, StoreDep
from api.figure_params import (
    MachineDep,
    WantsCsv,
    Window,
    WindowDep,
    csv_doc,
    csv_response,
    edges_of,
    gauges_of,
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
from core.model import from_ns, signal_kind, to_ns
from core.plant import Line, Machine, Plant, label
from core.store.base import Store

router = APIRouter(prefix="/api/v1", tags=["figures"], route_class=OffloadedRoute)

MAX_OEE_POINTS = 500  # each OEE point is its own store read
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
                "shift": {"id": "day", "day": "2026-11-27", "start": "2026-11-27T08:00:00+09:00",
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
    """A line's times are its output machine(s)'; its stop losses are all stations' own stops."""
    outs = [st for st in lo.stations if st.machine in lo.output]

    def out_sum(f: str) -> float:
        return float(sum(getattr(o.time, f) for o in outs))

    def opt_sum(vals: list[float | None]) -> float | None:
        return None if any(v is None for v in vals) else sum(v or 0.0 for v in vals)

    by_state: dict[str, float] = {}
    micro = 0.0
    for ev in lo.events:
        if ev.micro_stop:
            micro += ev.seconds
        else:
            by_state[ev.state] = by_state.get(ev.state, 0.0) + ev.seconds
    return OeeFigures(
        start=_t(lo.start, tz), end=_t(lo.end, tz), availability=lo.availability, performance=lo.performance,
        quality=lo.quality, oee=lo.oee, teep=lo.teep, no_data=lo.no_data,
        times=OeeTimes(calendar_s=lo.calendar_s, scheduled_s=out_sum("scheduled_s"), breaks_s=out_sum("breaks_s"),
                       planned_s=out_sum("planned_s"), planned_production_s=lo.planned_production_s,
                       running_s=sum(o.running_s for o in outs), micro_stop_s=sum(o.micro_stop_s for o in outs),
                       run_s=lo.run_s),
        counts=OeeCounts(good=lo.good, scrap=lo.scrap, total=lo.good + lo.scrap),
        losses=OeeLosses(breakdowns_s=by_state.get("down", 0.0), changeover_s=by_state.get("changeover", 0.0),
                         idle_s=by_state.get("idle", 0.0), micro_stops_s=micro,
                         reduced_speed_s=opt_sum([o.losses.reduced_speed_s for o in outs]),
                         rejects_s=opt_sum([o.losses.rejects_s for o in outs]),
                         offline_s=by_state.get("offline", 0.0),
                         starved_blocked_s=sum(lo.starved_blocked_s.values())))


async def _figures(store: Store, plant: Plant, target: Line | Machine, start: datetime, end: datetime) -> OeeFigures:
    tz = plant.site.tz
    try:
        if isinstance(target, Line):
            return line_figures(await oee.line_oee_from_store(store, plant, target.id, start, end), tz)
        return machine_figures(await oee.machine_oee_from_store(store, plant, target.id, start, end), tz)
    except oee.OeeError as e:
        raise HTTPException(422, str(e)) from None


async def _oee(kind: Literal["line", "machine"], target: Line | Machine, plant: Plant, store: Store, lang: str,
               window: tuple[Window, datetime], bucket: str | None, wants_csv: bool) -> OeeOut | Response:
    w, as_of = window
    tz = plant.site.tz
    points: list[OeeFigures] = []
    b_text = None
    if bucket is not None:
        b, edges = edges_of(w, bucket, plant, MAX_OEE_POINTS)
        b_text = b.text
        s_ns, e_ns = to_ns(w.start), to_ns(w.end)
        for a, z in pairwise(edges):
            points.append(await _figures(store, plant, target, from_ns(max(a, s_ns)), from_ns(min(z, e_ns))))
    whole = await _figures(store, plant, target, w.start, w.end)
    if wants_csv:
        rows = [{**f.model_dump(exclude={"times", "counts", "losses"}), **f.times.model_dump(),
                 **f.counts.model_dump(), **f.losses.model_dump()} for f in (points or [whole])]
        return csv_response(_OEE_COLUMNS, rows, f"oee-{target.id}")
    return OeeOut(kind=kind, id=target.id, name=label(target.name, lang, target.id), start=_t(w.start, tz),
                  end=_t(w.end, tz), shift=shift_out(w.shift, tz) if w.shift else None, as_of=_t(as_of, tz),
                  bucket=b_text, figures=whole, points=points)


BucketQuery = Annotated[str | None, Query(
    description=f"Also give figures per bucket ({figures.BUCKET_FORMS}); at most {MAX_OEE_POINTS} buckets",
    examples=["1h"])]


@router.get("/lines/{line_id}/oee", response_model=OeeOut, responses={**_errors("Unknown line"), **_OEE_RESPONSES})
async def line_oee(line: LineDep, plant: PlantDep, store: StoreDep, lang: LangDep, window: WindowDep,
                   wants_csv: WantsCsv, bucket: BucketQuery = None) -> OeeOut | Response:
    """Availability, performance, quality, OEE and TEEP of a line (its output machine(s)' times and good,
    all machines' scrap) with times, counts and losses; ``no_data`` and null ratios when nothing was counted."""
    return await _oee("line", line, plant, store, lang, window, bucket, wants_csv)


@router.get("/machines/{machine_id}/oee", response_model=OeeOut,
            responses={**_errors("Unknown machine"), **_OEE_RESPONSES})
async def machine_oee(machine: MachineDep, plant: PlantDep, store: StoreDep, lang: LangDep, window: WindowDep,
                      wants_csv: WantsCsv, bucket: BucketQuery = None) -> OeeOut | Response:
    """OEE and its parts for one machine over the window (or per bucket)."""
    return await _oee("machine", machine, plant, store, lang, window, bucket, wants_csv)


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
async def downtime(line: LineDep, plant: PlantDep, store: StoreDep, lang: LangDep, window: WindowDep,
                   wants_csv: WantsCsv,
                   table: Annotated[Literal["events", "pareto"], Query(
                       description="Which table a CSV answer holds")] = "events") -> DowntimeOut | Response:
    """Every station's own stops inside planned production time (starved/blocked idle left out, micro-stops
    flagged), clipped to the window, and a Pareto by (state, reason) without micro-stops."""
    w, as_of = window
    tz = plant.site.tz
    try:
        lo = await oee.line_oee_from_store(store, plant, line.id, w.start, w.end)
    except oee.OeeError as e:
        raise HTTPException(422, str(e)) from None
    events = [DowntimeEventOut(start=_t(ev.start, tz), end=_t(ev.end, tz), machine=ev.machine, state=ev.state,
                               reason=ev.reason, label=stop_label(plant, ev.state, ev.reason, lang),
                               category=ev.category, seconds=ev.seconds, length_s=ev.length_s,
                               micro_stop=ev.micro_stop) for ev in lo.events]
    total = sum(r.seconds for r in lo.pareto)
    pareto: list[ParetoRowOut] = []
    cum = 0.0
    for r in lo.pareto:
        cum += r.seconds
        pareto.append(ParetoRowOut(state=r.state, reason=r.reason, label=stop_label(plant, r.state, r.reason, lang),
                                   category=r.category, seconds=r.seconds, count=r.count,
                                   share=r.seconds / total if total else 0.0,
                                   cumulative_share=cum / total if total else 0.0))
    if wants_csv:
        if table == "pareto":
            return csv_response(_PARETO_COLUMNS, (p.model_dump() for p in pareto), f"pareto-{line.id}")
        return csv_response(_EVENT_COLUMNS, (e.model_dump() for e in events), f"downtime-{line.id}")
    return DowntimeOut(line=line.id, start=_t(w.start, tz), end=_t(w.end, tz),
                       shift=shift_out(w.shift, tz) if w.shift else None, as_of=_t(as_of, tz), events=events,
                       pareto=pareto, total_s=total)


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
async def states(machine: MachineDep, plant: PlantDep, store: StoreDep, lang: LangDep, window: WindowDep,
                 wants_csv: WantsCsv) -> StatesOut | Response:
    """The machine's state timeline covering the window exactly: a state that began before the window
    starts the timeline at the window start (``since`` says when it began); no data is ``offline``."""
    w, as_of = window
    tz = plant.site.tz
    s, e = to_ns(w.start), to_ns(w.end)
    changes = await store.state_changes([machine.id], s, e)
    timeline = oee.state_timeline(changes, machine.id, s, e)
    rows = [StretchOut(start=_t(from_ns(x.start_ns), tz), end=_t(from_ns(x.end_ns), tz), state=x.state,
                       reason=x.reason, label=stop_label(plant, x.state, x.reason, lang), seconds=x.seconds,
                       since=_t(from_ns(x.since_ns), tz)) for x in timeline]
    if wants_csv:
        return csv_response(_STRETCH_COLUMNS, (r.model_dump() for r in rows), f"states-{machine.id}")
    return StatesOut(machine=machine.id, start=_t(w.start, tz), end=_t(w.end, tz),
                     shift=shift_out(w.shift, tz) if w.shift else None, as_of=_t(as_of, tz), timeline=rows,
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
async def gauge(machine: MachineDep, plant: PlantDep, store: StoreDep, window: WindowDep, wants_csv: WantsCsv,
                signal: Annotated[str, Path(description="A gauge signal of the machine, e.g. spindle_temp")],
                bucket: Annotated[str, Query(description=f"Bucket: {figures.BUCKET_FORMS}")] = "5m",
                ) -> GaugeOut | Response:
    """Mean, min, max and count of a gauge per bucket; empty buckets have count 0 and null values."""
    gauges = gauges_of(machine)
    which = f"its gauges: {', '.join(gauges)}" if gauges else "it has no gauges"
    if signal not in machine.signals:
        raise HTTPException(404, f"machine '{machine.id}' has no signal '{signal}'; {which}")
    kind = signal_kind(signal)
    if kind != "gauge":
        raise HTTPException(422, f"'{signal}' of machine '{machine.id}' is a {kind} signal, not a gauge; {which}")
    w, as_of = window
    tz = plant.site.tz
    b, edges = edges_of(w, bucket, plant, figures.MAX_BUCKETS)
    found = await store.gauge_buckets(machine.id, signal, to_ns(w.start), to_ns(w.end),
                                      figures.query_grid_ns(edges, b))
    n = len(edges) - 1
    acc: list[list[float]] = [[0.0, 0.0, float("inf"), float("-inf")] for _ in range(n)]  # sum, count, min, max
    for g in found:
        i = bisect_right(edges, g.start_ns) - 1
        if 0 <= i < n and g.count > 0:
            a = acc[i]
            a[0] += g.mean * g.count
            a[1] += g.count
            a[2] = min(a[2], g.min)
            a[3] = max(a[3], g.max)
    points = [GaugePoint(start=_t(from_ns(edges[i]), tz), end=_t(from_ns(edges[i + 1]), tz),
                         mean=a[0] / a[1] if a[1] else None, min=a[2] if a[1] else None,
                         max=a[3] if a[1] else None, count=int(a[1])) for i, a in enumerate(acc)]
    if wants_csv:
        return csv_response(_GAUGE_COLUMNS, (p.model_dump() for p in points), f"{machine.id}-{signal}")
    return GaugeOut(machine=machine.id, signal=signal, unit=machine.signals[signal].unit, bucket=b.text,
                    start=_t(w.start, tz), end=_t(w.end, tz), shift=shift_out(w.shift, tz) if w.shift else None,
                    as_of=_t(as_of, tz), points=points)
