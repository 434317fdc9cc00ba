"""The shift report (日報): every line over one shift, from :meth:`core.readside.Figures.shift_report`.

JSON is the whole report (what the printable page and ``mieruka report`` render); CSV is one flat table,
a row per line and per machine with its counts, plan, ratios, time base and losses."""

from __future__ import annotations

from datetime import tzinfo
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.deps import AsOfDep, LangDep
from api.figure_params import FiguresDep, WantsCsv, csv_doc, csv_response, stop_label
from api.routes.figures import line_figures, machine_figures
from api.routes.shifts import shift_out
from api.schemas import Problem, Site
from api.schemas_figures import OeeFigures, OeeLosses, OeeTimes, ParetoRowOut
from api.schemas_report import (
    LineReport,
    MachineReport,
    ReportCounts,
    ReportHour,
    ReportNote,
    ReportStop,
    ShiftReportOut,
)
from api.work import OffloadedRoute
from core import report as rp
from core.plant import Plant, label

router = APIRouter(prefix="/api/v1", tags=["report"], route_class=OffloadedRoute)

CSV_COLUMNS = ["kind", "line", "machine", "name", "good", "scrap", "target", "shift_target", "difference",
               "availability", "performance", "quality", "oee", "teep", "no_data", *OeeTimes.model_fields,
               *OeeLosses.model_fields]
_CSV_EXAMPLE = (",".join(CSV_COLUMNS[:13]) + ",...\r\n"
                "line,blade-1,,Turbine blade line 1,812,9,853.3,853.3,-41.3,0.91,0.93,0.989,0.837,...\r\n"
                "machine,blade-1,cnc-1,5-axis CNC 1,415,3,853.3,853.3,-438.3,0.9,0.92,0.993,0.822,...")
_EXAMPLE: dict[str, Any] = {
    "site": {"id": "ashikaga-1", "name": "Ashikaga Plant 1", "timezone": "Asia/Tokyo", "locale": "ja"},
    "date": "2026-11-27",
    "shift": {"id": "day", "name": "Day shift", "day": "2026-11-27", "start": "2026-11-27T08:00:00+09:00",
              "end": "2026-11-27T17:00:00+09:00"},
    "start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T17:00:00+09:00",
    "as_of": "2026-11-27T18:00:00+09:00", "complete": True,
    "lines": [{"id": "blade-1", "name": "Turbine blade line 1", "target_per_hour": 110,
               "counts": {"good": 812, "scrap": 9, "target": 853.3, "shift_target": 853.3, "difference": -41.3},
               "figures": "(as /lines/{line_id}/oee figures)", "machines": "[...]",
               "hours": [{"start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T09:00:00+09:00", "good": 101,
                          "scrap": 1, "target": 110.0, "cumulative_good": 101, "cumulative_target": 110.0}],
               "top_stops": [{"machine": "cnc-2", "machine_name": "5-axis CNC 2",
                              "start": "2026-11-27T13:41:12+09:00", "end": "2026-11-27T13:49:02+09:00",
                              "stop_start": "2026-11-27T13:41:12+09:00", "seconds": 470.0, "state": "down",
                              "reason": 20, "label": "Spindle fault", "category": "breakdown", "named_by": None}],
               "pareto": "(as /lines/{line_id}/downtime pareto)", "notes": []}],
}


def _counts(good: int, scrap: int, target: float, shift_target: float) -> ReportCounts:
    return ReportCounts(good=good, scrap=scrap, target=target, shift_target=shift_target, difference=good - target)


def _line(plant: Plant, lr: rp.LineReport, lang: str, tz: tzinfo) -> LineReport:
    line, lo = lr.line, lr.oee
    names = {m.id: label(m.name, lang, m.id) for m in line.machines}
    outputs = {m.id for m in line.output_machines}
    return LineReport(
        id=line.id, name=label(line.name, lang, line.id), target_per_hour=line.target_per_hour,
        counts=_counts(lo.good, lo.scrap, lr.target, lr.shift_target), figures=line_figures(lo, tz),
        machines=[MachineReport(id=st.machine, name=names[st.machine], output=st.machine in outputs,
                                counts=_counts(st.good, st.scrap, lr.target, lr.shift_target),
                                figures=machine_figures(st, tz)) for st in lo.stations],
        hours=[ReportHour(start=h.start.astimezone(tz), end=h.end.astimezone(tz), good=h.good, scrap=h.scrap,
                          target=h.target, cumulative_good=h.cumulative_good, cumulative_target=h.cumulative_target)
               for h in lr.hours],
        top_stops=[ReportStop(machine=s.event.machine, machine_name=names.get(s.event.machine, s.event.machine),
                              start=s.event.start.astimezone(tz), end=s.event.end.astimezone(tz),
                              stop_start=s.event.stop_start.astimezone(tz), seconds=s.event.seconds,
                              state=s.event.state, reason=s.event.reason,
                              label=stop_label(plant, s.event.state, s.event.reason, lang),
                              category=s.event.category, named_by=s.named_by) for s in lr.top_stops],
        pareto=[ParetoRowOut(state=p.row.state, reason=p.row.reason,
                             label=stop_label(plant, p.row.state, p.row.reason, lang), category=p.row.category,
                             seconds=p.row.seconds, count=p.row.count, share=p.share,
                             cumulative_share=p.cumulative_share) for p in lr.pareto],
        notes=[ReportNote(time=n.time.astimezone(tz), text=n.text, author=n.author,
                          recorded=n.recorded.astimezone(tz) if n.recorded is not None else None) for n in lr.notes])


def _csv_row(kind: str, line: str, machine: str, name: str, c: ReportCounts, f: OeeFigures) -> dict[str, Any]:
    return {"kind": kind, "line": line, "machine": machine, "name": name, **c.model_dump(),
            **f.model_dump(include={"availability", "performance", "quality", "oee", "teep", "no_data"}),
            **f.times.model_dump(), **f.losses.model_dump()}


@router.get("/reports/shift", response_model=ShiftReportOut, responses={
    200: {"content": {"application/json": {"example": _EXAMPLE}, **csv_doc(_CSV_EXAMPLE)},
          "description": "The report; CSV: one row per line and per machine (kind line|machine)"},
    404: {"model": Problem, "description": "A shift the calendar does not have, or one that does not run that date"},
    422: {"model": Problem, "description": "A date that is not YYYY-MM-DD, a shift that has not begun at as_of, "
                                           "bad as_of or lang"},
    503: {"model": Problem, "description": "Store unreachable; see Retry-After"}})
async def shift_report(
    fig: FiguresDep, lang: LangDep, as_of: AsOfDep, wants_csv: WantsCsv,
    date: Annotated[str, Query(description="The local date the shift starts on, YYYY-MM-DD",
                               examples=["2026-11-27"])],
    shift: Annotated[str, Query(description="A shift id from the plant's calendar", examples=["day"])],
) -> ShiftReportOut | Response:
    """The shift report (日報) of every line: good and scrap against the plan, OEE with availability,
    performance, quality, its time base and the losses (six big losses, offline, starved/blocked), per
    line and per machine; the hourly table (good, scrap, target, cumulative; the hours add up to the
    line's counts and target); the longest stops with who named their reason; the operators' notes.
    The figures are the figure routes' for the same window (``shift=<id>&date=<date>``). A shift still
    running at ``as_of`` is reported so far (``complete: false``); one that has not begun is a 422."""
    plant = fig.plant
    tz = plant.site.tz
    r = await fig.shift_report(shift, date, as_of)
    lines = [_line(plant, lr, lang, tz) for lr in r.lines]
    if wants_csv:
        rows: list[dict[str, Any]] = []
        for ln in lines:
            rows.append(_csv_row("line", ln.id, "", ln.name, ln.counts, ln.figures))
            rows.extend(_csv_row("machine", ln.id, m.id, m.name, m.counts, m.figures) for m in ln.machines)
        return csv_response(CSV_COLUMNS, rows, f"report-{r.shift.day.isoformat()}-{r.shift.shift_id}")
    s = plant.site
    return ShiftReportOut(
        site=Site(id=s.id, name=label(s.name, lang, s.id), timezone=s.timezone, locale=s.locale),
        date=r.shift.day, shift=shift_out(r.shift, plant, lang), start=r.window.start.astimezone(tz),
        end=r.window.end.astimezone(tz), as_of=as_of.astimezone(tz), complete=r.complete, lines=lines)
