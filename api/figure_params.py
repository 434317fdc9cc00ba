"""What the figure routes share: machine ids, the window a request means, labels, and CSV answers.

A window is given either as ``start`` and ``end`` (ISO-8601 with offset) or as a shift relative to
``as_of`` (``shift=current|previous``, or ``shift=<id>&date=YYYY-MM-DD``); a running shift is cut at
``as_of``. Everything wrong with a request is a 422 saying what is allowed."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import Response

from api.cache import now_of
from api.deps import PlantDep, parse_time
from api.work import check_span
from core import figures, oee
from core.calendar import ShiftWindow
from core.model import signal_kind
from core.plant import Machine, Plant, label

WINDOW_HELP = ("give start and end (ISO-8601 with offset), or shift=current|previous, or shift=<id> with "
               "date=YYYY-MM-DD")

STATE_LABELS: dict[str, dict[str, str]] = {
    "running": {"ja": "稼働", "en": "Running"},
    "idle": {"ja": "待機", "en": "Idle"},
    "down": {"ja": "故障停止", "en": "Down"},
    "changeover": {"ja": "段取り", "en": "Changeover"},
    "planned": {"ja": "計画停止", "en": "Planned stop"},
    "offline": {"ja": "データなし", "en": "Offline (no data)"},
}


def get_machine(plant: PlantDep,
                machine_id: Annotated[str, Path(description="A machine id from the plant file")]) -> Machine:
    m = plant.machine(machine_id)
    if m is None:
        known = ", ".join(mm.id for _, mm in plant.machines())
        raise HTTPException(404, f"unknown machine '{machine_id}'; this plant has: {known}")
    return m


MachineDep = Annotated[Machine, Depends(get_machine)]


def gauges_of(machine: Machine) -> list[str]:
    return [n for n in machine.signals if signal_kind(n) == "gauge"]


def stop_label(plant: Plant, state: str, reason: int | None, lang: str) -> str:
    """The reason's catalogue name, else the state's name, in ``lang``."""
    r = plant.reasons.get(reason) if reason is not None else None
    if r is not None:
        return label(r.name, lang, str(reason))
    return STATE_LABELS.get(state, {}).get(lang, state)


# ---- the window ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime
    shift: ShiftWindow | None


def _window(
    request: Request,
    plant: PlantDep,
    start: Annotated[str | None, Query(description="Window start, inclusive, ISO-8601 with offset",
                                       examples=["2026-11-27T08:00:00+09:00"])] = None,
    end: Annotated[str | None, Query(description="Window end, exclusive, ISO-8601 with offset",
                                     examples=["2026-11-27T17:00:00+09:00"])] = None,
    shift: Annotated[str | None, Query(description="current or previous (relative to as_of), or a shift id "
                                       "from the calendar with date; a running shift is cut at as_of",
                                       examples=["current"])] = None,
    date: Annotated[str | None, Query(description="With shift=<id>: the local date the shift starts on, "
                                      "YYYY-MM-DD", examples=["2026-11-27"])] = None,
    as_of: Annotated[str | None, Query(description="The instant 'current', 'previous' and 'so far' refer to "
                                       "(ISO-8601 with offset); default: now",
                                       examples=["2026-11-27T10:30:00+09:00"])] = None,
) -> tuple[Window, datetime]:
    now = parse_time("as_of", as_of) if as_of is not None else now_of(request)  # aligned to the refresh period
    return resolve_window(plant, now, start, end, shift, date), now


def resolve_window(plant: Plant, as_of: datetime, start: str | None, end: str | None, shift: str | None,
                   day: str | None) -> Window:
    if shift is not None:
        if start is not None or end is not None:
            raise HTTPException(422, f"use either shift or start and end, not both; {WINDOW_HELP}")
        try:
            w = oee.select_shift(plant, shift, as_of, day)
        except oee.OeeError as e:
            raise HTTPException(422, f"{e}; {WINDOW_HELP}") from None
        cut = oee.shift_figure_window(w, as_of)
        if cut is None:
            raise HTTPException(422, f"shift {w.shift_id!r} of {w.day.isoformat()} has not begun at as_of "
                                     f"{as_of.isoformat()}; ask for a shift that has, or pass a later as_of")
        return Window(cut[0], cut[1], w)
    if day is not None:
        raise HTTPException(422, f"date needs shift=<id>; {WINDOW_HELP}")
    if start is None or end is None:
        missing = " and ".join(n for n, v in (("start", start), ("end", end)) if v is None)
        raise HTTPException(422, f"{missing} missing; {WINDOW_HELP}")
    t0, t1 = parse_time("start", start), parse_time("end", end)
    if t1 <= t0:
        raise HTTPException(422, f"the window is empty or reversed: start {t0.isoformat()} is not before end "
                                 f"{t1.isoformat()}; end must be after start")
    check_span(t0, t1)
    return Window(t0, t1, None)


WindowDep = Annotated[tuple[Window, datetime], Depends(_window)]


def edges_of(w: Window, bucket: str, plant: Plant, max_buckets: int) -> tuple[figures.Bucket, list[int]]:
    """Bucket edges over the window; 422 for an unknown bucket or one that is too small for the window."""
    try:
        b = figures.bucket_of(bucket)
        return b, figures.bucket_edges(w.start, w.end, b, plant.site.tz, max_buckets)
    except figures.FigureError as e:
        raise HTTPException(422, str(e)) from None


# ---- CSV ---------------------------------------------------------------------------------------------


def get_wants_csv(
    format: Annotated[Literal["json", "csv"] | None, Query(
        description="csv: the table (points, events, timeline or series) as CSV with a header row; "
                    "default: json, or csv when Accept asks for text/csv")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> bool:
    if format is not None:
        return format == "csv"
    return accept is not None and "text/csv" in accept.lower()


WantsCsv = Annotated[bool, Depends(get_wants_csv)]


def _cell(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def csv_response(columns: Sequence[str], rows: Iterable[Mapping[str, Any]], filename: str) -> Response:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'})


def csv_doc(example: str) -> dict[str, Any]:
    return {"text/csv": {"schema": {"type": "string"}, "example": example}}
