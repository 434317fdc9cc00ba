"""Bodies of the operator-input routes (api.routes.operator). Times are ISO-8601 with the site's offset
in answers; in request bodies they are strings checked like query times (an offset is required)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class ReasonIn(BaseModel):
    reason: int = Field(description="A reason code from the plant's catalogue")
    until: str | None = Field(default=None, description="Split the stop here (ISO-8601 with offset): only "
                              "[start, until) gets this reason; [until, …) becomes a stop part of its own")
    note: str | None = Field(default=None, description="Why (at most 2000 characters)")


class ScrapIn(BaseModel):
    time: str = Field(description="When the scrapped parts were made (ISO-8601 with offset)")
    quantity: int = Field(description="Parts found to be scrap (≠ 0; negative corrects an earlier booking)")
    reason: int | None = Field(default=None, description="A reason code from the catalogue")
    note: str | None = Field(default=None, description="Why (at most 2000 characters)")


class NoteIn(BaseModel):
    time: str | None = Field(default=None, description="What the note is about (ISO-8601); default now")
    text: str = Field(description="1 to 2000 characters")


class AuditEntryOut(BaseModel):
    id: str
    recorded: datetime
    author: str = Field(description="The token's name")
    action: Literal["stop_reason", "scrap", "note"]
    line: str
    machine: str | None
    time: datetime = Field(description="The subject: the stop's start, the scrap's time, the note's time")
    old: str | None = Field(description="What held before, as short JSON text")
    new: str = Field(description="What holds now, as short JSON text")
    why: str | None


class ReasonOut(BaseModel):
    machine: str
    start: datetime
    end: datetime | None = Field(description="End of what was named; null: the stop is still open")
    until: datetime | None
    reason: int
    previous_reason: int | None
    entry: AuditEntryOut


class StopOut(BaseModel):
    machine: str
    start: datetime
    end: datetime | None
    open: bool
    seconds: float = Field(description="Inside the window (and before as_of)")
    state: str = Field(description="The machine's state at the part's start")
    reason: int | None = Field(description="The operator's reason if named, else the machine's")
    label: str
    category: str | None
    named_by: str | None
    named_at: datetime | None
    note: str | None
    micro_stop: bool


class StopsOut(BaseModel):
    line: str
    start: datetime
    end: datetime
    stops: list[StopOut]


class NoteOut(BaseModel):
    time: datetime
    text: str
    author: str
    recorded: datetime


class NotesOut(BaseModel):
    line: str
    start: datetime
    end: datetime
    notes: list[NoteOut]


class AuditOut(BaseModel):
    start: datetime
    end: datetime
    entries: list[AuditEntryOut]
