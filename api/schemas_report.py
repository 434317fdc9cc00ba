"""Response body of the shift report (``GET /api/v1/reports/shift``).

Its figures are the same models the figure routes answer with (``OeeFigures``, ``ParetoRowOut``) over
the same window, so a report and ``/lines/{id}/oee?shift=<id>&date=<date>`` agree to the digit."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from api.schemas import ShiftOut, Site
from api.schemas_figures import OeeFigures, ParetoRowOut


class ReportCounts(BaseModel):
    good: int
    scrap: int
    target: float = Field(description="The plan for the window: target_per_hour × production time (shift minus "
                                      "breaks) up to as_of, as the throughput route's total_target")
    shift_target: float = Field(description="The plan for the whole shift")
    difference: float = Field(description="good − target: ahead (> 0) or behind (< 0) the plan")


class ReportHour(BaseModel):
    start: dt.datetime = Field(description="The hour's start (1 h buckets; the first and last may be cut by the "
                                        "shift's edges or as_of)")
    end: dt.datetime
    good: int
    scrap: int
    target: float
    cumulative_good: int
    cumulative_target: float


class ReportStop(BaseModel):
    machine: str
    machine_name: str
    start: dt.datetime = Field(description="Clipped to the shift window")
    end: dt.datetime
    stop_start: dt.datetime = Field(description="When the stop it is part of began")
    seconds: float = Field(description="Inside planned production time and the window")
    state: str
    reason: int | None
    label: str = Field(description="The reason's name, else the state's, in the requested language")
    category: str | None
    named_by: str | None = Field(description="The operator who named the reason; null: the machine's own reason, "
                                             "or not named")


class ReportNote(BaseModel):
    time: dt.datetime
    text: str
    author: str | None
    recorded: dt.datetime | None


class MachineReport(BaseModel):
    id: str
    name: str
    output: bool = Field(description="Whether its good count is the line's output")
    counts: ReportCounts = Field(description="Its own good and scrap against the line's plan (each station of a "
                                             "flow line has to make the line's rate)")
    figures: OeeFigures


class LineReport(BaseModel):
    id: str
    name: str
    target_per_hour: float
    counts: ReportCounts
    figures: OeeFigures = Field(description="As the line's OEE route for the window: ratios, time base, losses")
    machines: list[MachineReport] = Field(description="In flow order")
    hours: list[ReportHour] = Field(description="Per hour; good, scrap and target add up to counts")
    top_stops: list[ReportStop] = Field(description="The longest downtime events (no micro-stops, no "
                                                    "starved/blocked), longest first, at most 10")
    pareto: list[ParetoRowOut]
    notes: list[ReportNote] = Field(description="Operators' notes on the line in the window, in time order")


class ShiftReportOut(BaseModel):
    site: Site
    date: dt.date = Field(description="The local date the shift starts on")
    shift: ShiftOut
    start: dt.datetime
    end: dt.datetime = Field(description="The shift's end, or as_of while it runs")
    as_of: dt.datetime
    complete: bool = Field(description="false: the shift was still running at as_of; the figures are so far")
    lines: list[LineReport]
