"""A line's status now (or at ``as_of``): each machine's state, this shift's actual vs target, OEE so far."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any, Literal, cast, get_args

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import AsOfDep, Lang, LangDep, LineDep
from api.figure_params import FiguresDep
from api.routes.shifts import shift_out
from api.schemas import Problem, ShiftOut
from api.work import OffloadedRoute
from core import figures
from core.plant import Plant, label

router = APIRouter(prefix="/api/v1", tags=["figures"], route_class=OffloadedRoute)


MachineState = Literal["running", "idle", "down", "changeover", "planned", "offline"]


class ReasonOut(BaseModel):
    code: int
    label: str | None = Field(description="The reason's name in the requested language; null for a code "
                                          "the plant file's catalogue does not list")
    category: str | None


class MachineStatus(BaseModel):
    id: str
    name: str
    state: MachineState = Field(description="The state at as_of; 'offline' when the store has no state for it")
    reason: ReasonOut | None
    since: datetime | None = Field(description="When the machine entered this state: the change that began it "
                                               "(a repeat of the same state during the shift counts as one; "
                                               "before the shift, the last report is what the store tells); null "
                                               "when offline without data")
    last_data: datetime | None = Field(description="Time of the machine's newest fact of any kind in the store "
                                                   "(null: none)")
    stale: bool = Field(default=False, description="Its newest data is older than the machine's stale_after_s "
                                                   "at as_of (or there is none): what the store says may be out "
                                                   "of date, e.g. the collector stopped. Always false for a "
                                                   "machine without stale_after_s")


class ShiftCounts(BaseModel):
    good: int = Field(description="Good parts of the line's output machine(s) this shift so far")
    scrap: int = Field(description="Scrap of all the line's machines this shift so far")
    target_per_hour: float
    shift_target: float = Field(description="target_per_hour × the whole shift's planned production time "
                                            "(breaks excluded)")
    expected: float = Field(description="Target by now: target_per_hour × planned production time elapsed "
                                        "so far (breaks excluded)")
    difference: float = Field(description="good − expected: positive ahead, negative behind")
    standing: Literal["ahead", "behind", "on_target"]
    elapsed_s: float = Field(description="Seconds since the shift started")
    planned_production_elapsed_s: float = Field(description="Planned production seconds elapsed (breaks "
                                                            "excluded)")
    rate_per_hour: float | None = Field(description="Good per hour of planned production time elapsed "
                                                    "(comparable with target_per_hour); null before any")


class OeeSoFar(BaseModel):
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    no_data: bool = Field(description="No counts so far: ratios are null, never 100 %")


class LineStatus(BaseModel):
    line: str
    name: str
    as_of: datetime
    shift: ShiftOut | None = Field(description="The shift running at as_of; null when none runs")
    counts: ShiftCounts | None = Field(description="This shift so far; null when no shift runs")
    oee: OeeSoFar | None = Field(description="This shift so far (core.oee); null when no shift runs or it "
                                             "has just begun")
    machines: list[MachineStatus] = Field(description="In flow order; given whether or not a shift runs")


EXAMPLE: dict[str, Any] = {
    "line": "blade-1", "name": "Turbine blade line 1", "as_of": "2026-11-27T10:30:00+09:00",
    "shift": {"id": "day", "name": "Day shift", "day": "2026-11-27", "start": "2026-11-27T08:00:00+09:00",
              "end": "2026-11-27T17:00:00+09:00"},
    "counts": {"good": 262, "scrap": 4, "target_per_hour": 110, "shift_target": 880.0, "expected": 256.67,
               "difference": 5.33, "standing": "ahead", "elapsed_s": 9000.0,
               "planned_production_elapsed_s": 8400.0, "rate_per_hour": 112.29},
    "oee": {"availability": 0.93, "performance": 0.88, "quality": 0.985, "oee": 0.806, "no_data": False},
    "machines": [
        {"id": "cnc-1", "name": "5-axis CNC 1", "state": "running", "reason": None,
         "since": "2026-11-27T10:21:07.412000+09:00", "last_data": "2026-11-27T10:29:58.120000+09:00",
         "stale": False},
        {"id": "cnc-2", "name": "5-axis CNC 2", "state": "down",
         "reason": {"code": 20, "label": "Spindle fault", "category": "breakdown"},
         "since": "2026-11-27T10:27:45+09:00", "last_data": "2026-11-27T10:27:45+09:00", "stale": False},
    ],
}


def _reason(plant: Plant, code: int | None, lang: Lang) -> ReasonOut | None:
    if code is None:
        return None
    r = plant.reasons.get(code)
    if r is None:
        return ReasonOut(code=code, label=None, category=None)
    return ReasonOut(code=code, label=label(r.name, lang, str(code)), category=r.category)


def _standing(difference: float) -> Literal["ahead", "behind", "on_target"]:
    if abs(difference) < 1e-9:
        return "on_target"
    return "ahead" if difference > 0 else "behind"


@router.get(
    "/lines/{line_id}/status",
    response_model=LineStatus,
    responses={200: {"content": {"application/json": {"example": EXAMPLE}}},
               404: {"model": Problem, "description": "Unknown line"},
               422: {"model": Problem, "description": "Bad as_of"},
               503: {"model": Problem, "description": "Store unreachable; see Retry-After"}},
)
async def status(line: LineDep, fig: FiguresDep, as_of: AsOfDep, lang: LangDep) -> LineStatus:
    """The line at ``as_of`` (default now): each machine's state, reason and since when, and its
    newest data; this shift's good vs target so far (target counts planned production time only:
    breaks excluded), rate per hour and OEE so far. With no shift running, ``shift``, ``counts``
    and ``oee`` are null and the machines' states are still given."""
    plant = fig.plant
    tz: tzinfo = plant.site.tz
    now = await fig.status(line, as_of)
    machines: list[MachineStatus] = []
    for m, st in zip(line.machines, now.machines, strict=True):
        state = cast(MachineState, st.state if st.state in get_args(MachineState) else "offline")
        machines.append(MachineStatus(
            id=m.id, name=label(m.name, lang, m.id), state=state, reason=_reason(plant, st.reason, lang),
            since=st.since.astimezone(tz) if st.since is not None else None,
            last_data=st.last_data.astimezone(tz) if st.last_data is not None else None, stale=st.stale))
    counts = oee_out = None
    pr = now.progress
    if pr is not None:
        if pr.oee is not None:
            o = pr.oee
            oee_out = OeeSoFar(availability=o.availability, performance=o.performance, quality=o.quality,
                               oee=o.oee, no_data=o.no_data)
        diff = pr.good - pr.expected
        counts = ShiftCounts(
            good=pr.good, scrap=pr.scrap, target_per_hour=line.target_per_hour, shift_target=pr.shift_target,
            expected=pr.expected, difference=diff, standing=_standing(diff), elapsed_s=pr.elapsed_s,
            planned_production_elapsed_s=pr.planned_production_elapsed_s,
            rate_per_hour=figures.rate_per_hour(pr.good, pr.planned_production_elapsed_s))
    return LineStatus(line=line.id, name=label(line.name, lang, line.id), as_of=as_of.astimezone(tz),
                      shift=shift_out(now.shift, plant, lang) if now.shift is not None else None, counts=counts,
                      oee=oee_out,
                      machines=machines)
