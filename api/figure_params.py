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
from api.deps import PlantDep, StoreDep, parse_time
from api.work import check_span
from core import readside
from core.plant import Machine, Plant, label
from core.readside import Figures, Window

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


def stop_label(plant: Plant, state: str, reason: int | None, lang: str) -> str:
    """The reason's catalogue name, else the state's name, in ``lang``."""
    r = plant.reasons.get(reason) if reason is not None else None
    if r is not None:
        return label(r.name, lang, str(reason))
    return STATE_LABELS.get(state, {}).get(lang, state)


# ---- the window ------------------------------------------------------------------------------------


def get_figures(plant: PlantDep, store: StoreDep) -> Figures:
    return Figures(plant, store)


FiguresDep = Annotated[Figures, Depends(get_figures)]

StartQuery = Annotated[str | None, Query(description="Window start, inclusive, ISO-8601 with offset",
                                         examples=["2026-11-27T08:00:00+09:00"])]
EndQuery = Annotated[str | None, Query(description="Window end, exclusive, ISO-8601 with offset",
                                       examples=["2026-11-27T17:00:00+09:00"])]
ShiftQuery = Annotated[str | None, Query(description="current or previous (relative to as_of), or a shift id "
                                         "from the calendar with date; a running shift is cut at as_of",
                                         examples=["current"])]
DateQuery = Annotated[str | None, Query(description="With shift=<id>: the local date the shift starts on, "
                                        "YYYY-MM-DD", examples=["2026-11-27"])]
AsOfQuery = Annotated[str | None, Query(description="The instant 'current', 'previous' and 'so far' refer to, "
                                        "and after which there is no data yet (ISO-8601 with offset); "
                                        "default: now", examples=["2026-11-27T10:30:00+09:00"])]


@dataclass(frozen=True, slots=True)
class WindowAsk:
    """The window parameters as given (the throughput route answers 'no shift now' itself)."""

    as_of: datetime
    start: str | None
    end: str | None
    shift: str | None
    date: str | None


def _ask(request: Request, start: StartQuery = None, end: EndQuery = None, shift: ShiftQuery = None,
         date: DateQuery = None, as_of: AsOfQuery = None) -> WindowAsk:
    # default now: the start of the refresh period, so screens asking within one period ask alike
    now = parse_time("as_of", as_of) if as_of is not None else now_of(request)
    return WindowAsk(now, start, end, shift, date)


WindowAskDep = Annotated[WindowAsk, Depends(_ask)]


def resolve(fig: Figures, ask: WindowAsk) -> Window:
    """The window (422 via :class:`core.figures.WindowError` for what is wrong; at most 400 days)."""
    return _resolve(fig.plant, ask)


def _resolve(plant: Plant, ask: WindowAsk) -> Window:
    t0 = parse_time("start", ask.start) if ask.start is not None else None
    t1 = parse_time("end", ask.end) if ask.end is not None else None
    w = readside.resolve_window(plant, ask.as_of, t0, t1, ask.shift, ask.date)
    check_span(w.start, w.end)
    return w


def resolve_window(plant: Plant, as_of: datetime, start: str | None, end: str | None, shift: str | None,
                   day: str | None) -> Window:
    """The window of a request's parameters without a store (for routes that need only the window)."""
    return _resolve(plant, WindowAsk(as_of, start, end, shift, day))


def _window(fig: FiguresDep, ask: WindowAskDep) -> tuple[Window, datetime]:
    return resolve(fig, ask), ask.as_of


WindowDep = Annotated[tuple[Window, datetime], Depends(_window)]


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
