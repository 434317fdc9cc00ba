"""Shifts, working days, holidays and breaks as concrete, DST-safe windows.

Shift times are wall-clock times in the site's time zone. A shift's window is the elapsed real
time between its local start and end (a shift across a DST change is an hour shorter or
longer). A night shift belongs to the day it starts on; a holiday cancels the shifts starting
on that date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from core.plant import DAYS, Plant, Shift


@dataclass(frozen=True, slots=True)
class ShiftWindow:
    shift_id: str
    day: date  # the local date the shift starts on
    start: datetime  # aware, UTC
    end: datetime  # aware, UTC
    breaks: tuple[tuple[datetime, datetime], ...]  # aware, UTC, inside [start, end)

    @property
    def scheduled_s(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def break_s(self) -> float:
        return sum((b - a).total_seconds() for a, b in self.breaks)


def local_to_utc(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    """The UTC instant of ``minutes`` after local midnight of ``day`` (may pass into later days)."""
    d = day + timedelta(days=minutes // 1440)
    m = minutes % 1440
    return datetime.combine(d, time(m // 60, m % 60), tzinfo=tz).astimezone(UTC)


def is_working_day(plant: Plant, shift: Shift, day: date) -> bool:
    return DAYS[day.weekday()] in shift.days and day not in plant.calendar.holidays


def window_of(plant: Plant, shift: Shift, day: date) -> ShiftWindow:
    tz = plant.site.tz
    s, e = shift.minutes()
    breaks = tuple((local_to_utc(day, a, tz), local_to_utc(day, b, tz)) for a, b in shift.break_minutes())
    return ShiftWindow(shift.id, day, local_to_utc(day, s, tz), local_to_utc(day, e, tz), breaks)


def shift_windows(plant: Plant, start: datetime, end: datetime) -> list[ShiftWindow]:
    """Shift windows on working days that overlap ``[start, end)``, in time order."""
    tz = plant.site.tz
    first = start.astimezone(tz).date() - timedelta(days=1)  # a night shift from the day before
    last = end.astimezone(tz).date()
    out: list[ShiftWindow] = []
    day = first
    while day <= last:
        for shift in plant.calendar.shifts:
            if is_working_day(plant, shift, day):
                w = window_of(plant, shift, day)
                if w.start < end and w.end > start:
                    out.append(w)
        day += timedelta(days=1)
    out.sort(key=lambda w: w.start)
    return out


def current_shift(plant: Plant, as_of: datetime) -> ShiftWindow | None:
    """The shift running at ``as_of`` (start <= as_of < end), if any."""
    for w in shift_windows(plant, as_of, as_of + timedelta(microseconds=1)):
        if w.start <= as_of < w.end:
            return w
    return None


def previous_shift(plant: Plant, as_of: datetime, search_days: int = 31) -> ShiftWindow | None:
    """The last shift that ended at or before ``as_of``."""
    ended = [w for w in shift_windows(plant, as_of - timedelta(days=search_days), as_of) if w.end <= as_of]
    return ended[-1] if ended else None


def shift_on(plant: Plant, shift_id: str, day: date) -> ShiftWindow | None:
    """The window of shift ``shift_id`` starting on local ``day``; None if not a working day for it."""
    shift = next((s for s in plant.calendar.shifts if s.id == shift_id), None)
    if shift is None or not is_working_day(plant, shift, day):
        return None
    return window_of(plant, shift, day)


def planned_intervals(plant: Plant, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The parts of ``[start, end)`` that are not scheduled production: outside every shift, or in a
    break. What the simulators run as ``planned`` time, and figures subtract."""
    busy: list[tuple[datetime, datetime]] = []
    for w in shift_windows(plant, start, end):
        cursor = w.start
        for a, b in sorted(w.breaks):
            if a > cursor:
                busy.append((cursor, a))
            cursor = max(cursor, b)
        if cursor < w.end:
            busy.append((cursor, w.end))
    out: list[tuple[datetime, datetime]] = []
    cursor = start
    for a, b in sorted(busy):
        a, b = max(a, start), min(b, end)
        if a >= b:
            continue
        if a > cursor:
            out.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < end:
        out.append((cursor, end))
    return out
