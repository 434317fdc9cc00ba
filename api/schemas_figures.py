"""Response bodies of the plant catalogue and the figures (OEE, downtime, states, gauges).

Times are ISO-8601 with the site's UTC offset; durations are seconds. Kept apart from
``api/schemas.py`` so the figures can grow without touching the shared module."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import ShiftOut, Site

SignalKind = Literal["counter", "state", "reason", "product", "gauge"]

# ---- GET /plant ----------------------------------------------------------------------------------


class ShiftDef(BaseModel):
    id: str
    name: str = Field(description="In the requested language; the id when the plant file gives none")
    start: str = Field(description="Local wall-clock start, HH:MM")
    end: str = Field(description="Local wall-clock end, HH:MM (before start: the shift ends the next day)")
    days: list[str]
    breaks: list[tuple[str, str]]


class CalendarOut(BaseModel):
    shifts: list[ShiftDef]
    holidays: list[date]
    micro_stop_s: float = Field(description="Stops shorter than this are a performance loss (micro-stops)")


class ReasonOut(BaseModel):
    code: int
    name: str
    category: str


class ProductOut(BaseModel):
    id: str
    name: str
    ideal_cycle_s: float


class SignalOut(BaseModel):
    name: str
    kind: SignalKind
    unit: str | None = None


class MachineDetail(BaseModel):
    id: str
    name: str
    output: bool = Field(description="Whether its good count is the line's output")
    ideal_cycle_s: float | None
    signals: list[SignalOut]


class LineDetail(BaseModel):
    id: str
    name: str
    target_per_hour: float
    machines: list[MachineDetail]


class PlantOut(BaseModel):
    site: Site
    calendar: CalendarOut
    reasons: list[ReasonOut]
    products: list[ProductOut]
    lines: list[LineDetail]


# ---- OEE -------------------------------------------------------------------------------------------


class OeeTimes(BaseModel):
    calendar_s: float = Field(description="The window's length up to as_of (time after as_of has not happened)")
    scheduled_s: float = Field(description="Shift time inside the window, plus 'running' time outside every shift "
                                           "(a machine that runs was scheduled to), up to as_of")
    breaks_s: float
    planned_s: float = Field(description="Breaks and 'planned' state time inside scheduled time, each second once")
    planned_production_s: float
    running_s: float = Field(description="'running' time inside planned production time")
    micro_stop_s: float = Field(description="Time of stops shorter than micro_stop_s as a whole (only down/idle), "
                                            "inside planned production time")
    run_s: float = Field(description="running + micro-stops")


class OeeCounts(BaseModel):
    good: int
    scrap: int
    total: int


class OeeLosses(BaseModel):
    breakdowns_s: float
    changeover_s: float
    idle_s: float
    micro_stops_s: float
    reduced_speed_s: float | None = Field(description="null without ideal cycle times")
    rejects_s: float | None
    offline_s: float
    starved_blocked_s: float = Field(description="Idle caused by a neighbour (not own downtime)")


class OeeFigures(BaseModel):
    start: datetime
    end: datetime
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    teep: float | None
    no_data: bool = Field(description="No counts in the window: every ratio is null, never 100 %")
    times: OeeTimes
    counts: OeeCounts
    losses: OeeLosses


class OeeOut(BaseModel):
    kind: Literal["line", "machine"]
    id: str
    name: str
    start: datetime
    end: datetime
    shift: ShiftOut | None = Field(description="The shift the window was chosen by, if any")
    as_of: datetime
    bucket: str | None = Field(description="With bucket: figures per bucket in points")
    figures: OeeFigures = Field(description="The whole window")
    points: list[OeeFigures] = Field(description="Per bucket (clipped to the window); empty without bucket")


# ---- downtime ----------------------------------------------------------------------------------------


class DowntimeEventOut(BaseModel):
    start: datetime = Field(description="Clipped to the window")
    end: datetime
    machine: str
    state: str
    reason: int | None
    label: str = Field(description="The reason's name, else the state's, in the requested language")
    category: str | None
    seconds: float = Field(description="Its part inside planned production time and the window")
    length_s: float = Field(description="The whole stop it is part of, as far as known (may start before "
                                        "the window or end after it)")
    micro_stop: bool = Field(description="The whole stop is shorter than micro_stop_s (and only down/idle)")
    stop_start: datetime = Field(description="When the stop this event is part of began: a stop runs from the "
                                             "first non-running state to the next running one, whatever reasons "
                                             "change inside, so several events may share it")


class ParetoRowOut(BaseModel):
    state: str
    reason: int | None
    label: str
    category: str | None
    seconds: float
    count: int
    share: float = Field(description="Of the Pareto's total seconds")
    cumulative_share: float


class DowntimeOut(BaseModel):
    line: str
    start: datetime
    end: datetime
    shift: ShiftOut | None
    as_of: datetime
    events: list[DowntimeEventOut] = Field(description="All stations' own stops (starved/blocked left out), "
                                                       "micro-stops flagged")
    pareto: list[ParetoRowOut] = Field(description="By (state, reason), seconds descending; no micro-stops")
    total_s: float


# ---- states --------------------------------------------------------------------------------------------


class StretchOut(BaseModel):
    start: datetime = Field(description="Clipped to the window: the first stretch starts at the window start")
    end: datetime
    state: str
    reason: int | None
    label: str
    seconds: float
    since: datetime = Field(description="When the state began (may precede the window)")


class StatesOut(BaseModel):
    machine: str
    start: datetime
    end: datetime
    shift: ShiftOut | None
    as_of: datetime
    timeline: list[StretchOut]
    state_seconds: dict[str, float]


# ---- gauges --------------------------------------------------------------------------------------------


class GaugePoint(BaseModel):
    start: datetime
    end: datetime
    mean: float | None = Field(description="null in an empty bucket (count 0)")
    min: float | None
    max: float | None
    count: int


class GaugeOut(BaseModel):
    model_config = ConfigDict(title="GaugeSeries")

    machine: str
    signal: str
    unit: str | None
    bucket: str
    start: datetime
    end: datetime
    shift: ShiftOut | None
    as_of: datetime
    points: list[GaugePoint]
