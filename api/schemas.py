"""Response bodies. Times are ISO-8601 with the site's UTC offset."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    store: Literal["ok", "unavailable"]


class FieldProblem(BaseModel):
    location: str = Field(description="Where, e.g. \"query parameter 'lang'\"")
    message: str


class Problem(BaseModel):
    """The body of every error answer (4xx and 5xx)."""

    detail: str = Field(description="One sentence: what is wrong and, where it can, what is allowed")
    errors: list[FieldProblem] | None = Field(default=None, description="With a 422 from parameter "
                                              "validation: each problem, where it is")


class Site(BaseModel):
    id: str
    name: str
    timezone: str
    locale: Literal["ja", "en"]


class MachineOut(BaseModel):
    id: str
    name: str


class LineOut(BaseModel):
    id: str
    name: str
    target_per_hour: float
    machines: list[MachineOut]


class ShiftOut(BaseModel):
    id: str
    name: str = Field(description="The shift's name from the plant file in the requested language; its id "
                                  "when it has none")
    day: date = Field(description="The local date the shift starts on")
    start: datetime
    end: datetime


class CurrentShift(BaseModel):
    as_of: datetime
    shift: ShiftOut | None


class Point(BaseModel):
    start: datetime = Field(description="Bucket start (aligned; the first may precede the window)")
    end: datetime
    good: int
    scrap: int
    target: float = Field(default=0.0, description="target_per_hour × the bucket's planned production seconds "
                                                   "inside the window / 3600 (breaks and off-shift time excluded)")
    cumulative_good: int = Field(default=0, description="Good from the window's start to this bucket's end")
    cumulative_target: float = Field(default=0.0, description="Target from the window's start to this bucket's end")


class Throughput(BaseModel):
    line: str
    bucket: str
    bucket_s: int = Field(description="Nominal bucket length; a local day across a DST change is 23 or 25 h")
    start: datetime | None = Field(description="Window start (inclusive); null when shift=current and no "
                                               "shift runs")
    end: datetime | None = Field(description="Window end (exclusive); with shift=current, the shift so far")
    shift: ShiftOut | None = Field(default=None, description="With shift=current: the shift running at as_of, "
                                                             "or null when none runs (then points is empty)")
    as_of: datetime | None = None
    points: list[Point]
    total_good: int
    total_scrap: int
    target_per_hour: float = Field(default=0.0, description="The line's target rate from the plant file")
    total_target: float = Field(default=0.0, description="Target over the window (planned production time only)")
