"""Operator input: name a stop's reason (and split it), book scrap found later, write notes; read the
stops and notes of a window and the audit of every entry.

Writes need role ``operator``, the audit ``admin``. Every write is checked before anything is stored
(422 naming the problem; nothing stored then), recorded with the token's name as author, and drops the
API's kept answers (:class:`api.cache.Generation`), so the next read sees it. What an entry does to the
figures is :mod:`core.operator`'s (docs/architecture.md, "Operator input")."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, time, timedelta, tzinfo
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response

from api.auth import Caller, require_role
from api.cache import Generation
from api.deps import LangDep, LineDep, StoreDep, parse_time
from api.figure_params import FiguresDep, MachineDep, WantsCsv, WindowDep, csv_response, stop_label
from api.schemas import Problem
from api.schemas_operator import (
    AuditEntryOut,
    AuditOut,
    NoteIn,
    NoteOut,
    NotesOut,
    ReasonIn,
    ReasonOut,
    ScrapIn,
    StopOut,
    StopsOut,
)
from api.work import OffloadedRoute, check_span
from core import oee
from core import operator as op
from core.calendar import current_shift
from core.model import COUNTER_SIGNALS, from_ns, to_ns
from core.plant import Line, Machine, Plant
from core.readside import Figures, Window
from core.store.base import OperatorEntry, OperatorLog, Store

router = APIRouter(prefix="/api/v1", tags=["operator"], route_class=OffloadedRoute)

NS = 1_000_000_000
AUDIT_DEFAULT = timedelta(days=7)
AUDIT_MAX = timedelta(days=400)
NEAREST = 5  # stop starts named in a 422
AUDIT_PATH = "/api/v1/audit"

Operator = Annotated[Caller, Depends(require_role("operator"))]
Admin = Annotated[Caller, Depends(require_role("admin"))]
Reader = Annotated[Caller, Depends(require_role("read"))]

_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not JSON"},
    401: {"model": Problem, "description": "No valid bearer token"},
    403: {"model": Problem, "description": "The token's role is below operator"},
    404: {"model": Problem, "description": "Unknown machine or line"},
    422: {"model": Problem, "description": "Bad input; the detail names the problem (nothing was stored)"},
    503: {"model": Problem, "description": "Store unreachable; see Retry-After"}}


def _now_ns(request: Request) -> int:
    return int(request.app.state.refresh.clock() * NS)


_RECORD_LOCK = threading.Lock()


def _record_ns(request: Request) -> int:
    """When an entry is recorded: the clock, but always after this app's previous entry, so entries take
    effect in the order they were written even when the clock does not move between two of them."""
    with _RECORD_LOCK:  # the routes run on several worker threads
        state = request.app.state
        t = max(_now_ns(request), getattr(state, "operator_last_ns", 0) + 1)
        state.operator_last_ns = t
        return t


def _log(store: Store) -> OperatorLog:
    if not isinstance(store, OperatorLog):
        raise HTTPException(503, "this store keeps no operator input")
    return store


def _author(caller: Caller) -> str:
    if caller.name is None:  # require_role("operator") never lets an anonymous caller through
        raise HTTPException(401, "writing needs a bearer token with role 'operator' or above")
    return caller.name


def _t(ns: int, tz: tzinfo) -> datetime:
    return from_ns(ns).astimezone(tz)


def _json(d: dict[str, Any]) -> str:
    return json.dumps(d, ensure_ascii=False, separators=(", ", ": "))


def entry_out(e: OperatorEntry, tz: tzinfo) -> AuditEntryOut:
    return AuditEntryOut(id=e.id, recorded=_t(e.recorded_ns, tz), author=e.author,
                         action=e.action,  # type: ignore[arg-type]  # stores hold only OPERATOR_ACTIONS
                         line=e.line, machine=e.machine, time=_t(e.time_ns, tz), old=e.old, new=e.new,
                         why=e.text if e.action != "note" else None)


def _check_reason(plant: Plant, code: int | None, what: str = "reason") -> None:
    if code is not None and code not in plant.reasons:
        known = ", ".join(str(c) for c in sorted(plant.reasons)) or "(none: the plant file has no reason catalogue)"
        raise HTTPException(422, f"unknown {what} code {code}; the plant's catalogue has: {known}")


def _check_note(text: str | None, what: str = "note") -> None:
    if text is not None and len(text) > op.MAX_NOTE_CHARS:
        raise HTTPException(422, f"the {what} has {len(text)} characters; at most {op.MAX_NOTE_CHARS} are allowed")


async def _store_entry(request: Request, store: Store, entry: OperatorEntry) -> None:
    await _log(store).add_entry(entry)
    gen: Generation = request.app.state.generation
    gen.bump()
    request.app.state.metrics.operator_writes.labels(entry.action).inc()


# ---- PUT a stop's reason -----------------------------------------------------------------------------


@router.put("/machines/{machine_id}/stops/{start}/reason", response_model=ReasonOut, responses=_WRITE_ERRORS)
async def name_stop(request: Request, machine: MachineDep, fig: FiguresDep, store: StoreDep, caller: Operator,
                    body: ReasonIn, start: Annotated[str, Path(description="The start of the stop (or stop "
                                                               "part), ISO-8601 with offset, URL-encoded")]
                    ) -> ReasonOut:
    """Name (or correct) the reason of a stop (part) from ``start`` to the next split point or the stop's
    end; with ``until`` split it there first. The machine's state stays; only the reason changes."""
    plant = fig.plant
    tz = plant.site.tz
    author = _author(caller)
    t = to_ns(parse_time("start", start))
    _check_reason(plant, body.reason)
    _check_note(body.note)
    now = _now_ns(request)
    parts = await fig.stop_parts_near(machine, t, now)
    part = next((p for p in parts if p.start_ns == t), None)
    if part is None:
        near = sorted(parts, key=lambda p: abs(p.start_ns - t))[:NEAREST]
        starts = ", ".join(_t(p.start_ns, tz).isoformat() for p in sorted(near, key=lambda p: p.start_ns))
        raise HTTPException(422, f"machine '{machine.id}' has no stop (part) starting at {start}; "
                                 f"the nearest stop starts are: {starts or '(none in the day before it until now)'}")
    until: int | None = None
    if body.until is not None:
        until = to_ns(parse_time("until", body.until))
        if until <= t:
            raise HTTPException(422, f"until {body.until} is not after the stop's start {start}; give a time "
                                     "inside the stop")
        if until > now:
            raise HTTPException(422, f"until {body.until} is in the future; split a stop only where it has "
                                     "happened")
        if part.stop_until_ns is not None and until >= part.stop_until_ns:
            raise HTTPException(422, f"until {body.until} is not inside the stop, which ended at "
                                     f"{_t(part.stop_until_ns, tz).isoformat()}; give a time before that")
    end = until if until is not None else part.end_ns
    old = {"reason": part.reason}
    new: dict[str, Any] = {"reason": body.reason}
    if until is not None:
        new["until"] = _t(until, tz).isoformat()
    line = plant.line_of(machine.id)
    assert line is not None
    entry = OperatorEntry(uuid.uuid4().hex, _record_ns(request), author, "stop_reason", line.id, machine.id, t,
                          until, body.reason, None, body.note, _json(old), _json(new))
    await _store_entry(request, store, entry)
    return ReasonOut(machine=machine.id, start=_t(t, tz), end=_t(end, tz) if end is not None else None,
                     until=_t(until, tz) if until is not None else None, reason=body.reason,
                     previous_reason=part.reason, entry=entry_out(entry, tz))


# ---- POST scrap ----------------------------------------------------------------------------------------


async def _good_scrap(fig: Figures, machine: Machine, t: datetime, now: datetime) -> tuple[datetime, datetime, int,
                                                                                          int, int]:
    """(window start, end, good, scrap, booked scrap) of the shift holding ``t`` (else its local day)."""
    plant = fig.plant
    w = current_shift(plant, t)
    if w is not None:
        a, z = w.start, w.end
    else:
        day = t.astimezone(plant.site.tz).date()  # local midnight to local midnight (DST-safe)
        a = datetime.combine(day, time(0), tzinfo=plant.site.tz)
        z = datetime.combine(day + timedelta(days=1), time(0), tzinfo=plant.site.tz)
    window = Window(a, z, None, max(now, t + timedelta(microseconds=1)))
    result, _ = await fig.oee(machine, window)
    assert isinstance(result, oee.MachineOee)
    entries = await fig.operator_entries([machine], to_ns(a), to_ns(z), ["scrap"])
    booked = sum(q for _, _, q in op.bookings(entries, [machine.id], to_ns(a), to_ns(z)))
    return a, z, result.good, result.scrap, booked


@router.post("/machines/{machine_id}/scrap", response_model=AuditEntryOut, status_code=201,
             responses=_WRITE_ERRORS)
async def book_scrap(request: Request, machine: MachineDep, fig: FiguresDep, store: StoreDep, caller: Operator,
                     body: ScrapIn) -> AuditEntryOut:
    """Scrap found later: the machine's scrap at ``time`` rises by ``quantity`` and its good falls by it."""
    plant = fig.plant
    tz = plant.site.tz
    author = _author(caller)
    t = parse_time("time", body.time)
    if body.quantity == 0:
        raise HTTPException(422, "quantity is 0; book a positive number of scrapped parts, or a negative one "
                                 "to correct an earlier booking")
    _check_reason(plant, body.reason)
    _check_note(body.note)
    if not COUNTER_SIGNALS & set(machine.signals):
        raise HTTPException(422, f"machine '{machine.id}' counts no parts (no good, total or scrap signal); "
                                 "book scrap on a machine that counts")
    now_ns = _now_ns(request)
    if to_ns(t) > now_ns:
        raise HTTPException(422, f"time {body.time} is in the future; book scrap where the parts were made")
    a, z, good, scrap, booked = await _good_scrap(fig, machine, t, from_ns(now_ns))
    span = f"{a.astimezone(tz).isoformat()} – {z.astimezone(tz).isoformat()}"
    if good - body.quantity < 0:
        raise HTTPException(422, f"booking {body.quantity} scrap would make the good of machine '{machine.id}' "
                                 f"negative: it made {good} good parts in {span}")
    if booked + body.quantity < 0:
        raise HTTPException(422, f"a correction of {body.quantity} would make the booked scrap of machine "
                                 f"'{machine.id}' negative: {booked} were booked in {span}")
    line = plant.line_of(machine.id)
    assert line is not None
    new: dict[str, Any] = {"quantity": body.quantity}
    if body.reason is not None:
        new["reason"] = body.reason
    entry = OperatorEntry(uuid.uuid4().hex, _record_ns(request), author, "scrap", line.id, machine.id, to_ns(t), None,
                          body.reason, body.quantity, body.note, _json({"scrap": scrap}),
                          _json({**new, "scrap": scrap + body.quantity}))
    await _store_entry(request, store, entry)
    return entry_out(entry, tz)


# ---- notes ---------------------------------------------------------------------------------------------


@router.post("/lines/{line_id}/notes", response_model=AuditEntryOut, status_code=201, responses=_WRITE_ERRORS)
async def write_note(request: Request, line: LineDep, fig: FiguresDep, store: StoreDep, caller: Operator,
                     body: NoteIn) -> AuditEntryOut:
    """A note on the line at ``time`` (default now)."""
    tz = fig.plant.site.tz
    author = _author(caller)
    if not body.text.strip():
        raise HTTPException(422, "the note's text is empty; write 1 to 2000 characters")
    _check_note(body.text, "note's text")
    now_ns = _now_ns(request)
    t = to_ns(parse_time("time", body.time)) if body.time is not None else now_ns
    entry = OperatorEntry(uuid.uuid4().hex, _record_ns(request), author, "note", line.id, None, t, None, None,
                          None, body.text, None, _json({"text": body.text}))
    await _store_entry(request, store, entry)
    return entry_out(entry, tz)


# ---- reads ---------------------------------------------------------------------------------------------

_STOP_COLUMNS = list(StopOut.model_fields)
_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "Unknown line"},
    422: {"model": Problem, "description": "Bad time, window, shift or date"},
    503: {"model": Problem, "description": "Store unreachable; see Retry-After"}}


def stop_rows(fig: Figures, line: Line, rows: list[Any], lang: str) -> list[StopOut]:
    plant = fig.plant
    tz = plant.site.tz
    out: list[StopOut] = []
    for r in rows:
        p: op.StopPart = r.part
        r_cat = plant.reasons.get(p.reason) if p.reason is not None else None
        out.append(StopOut(machine=p.machine, start=_t(p.start_ns, tz),
                           end=_t(p.end_ns, tz) if p.end_ns is not None else None, open=r.open, seconds=r.seconds,
                           state=p.state, reason=p.reason, label=stop_label(plant, p.state, p.reason, lang),
                           category=r_cat.category if r_cat is not None else None,
                           named_by=p.entry.author if p.entry else None,
                           named_at=_t(p.entry.recorded_ns, tz) if p.entry else None,
                           note=p.entry.text if p.entry else None, micro_stop=p.micro_stop))
    return out


@router.get("/lines/{line_id}/stops", response_model=StopsOut, responses=_READ_ERRORS,
            dependencies=[Depends(require_role("read"))])
async def line_stops(line: LineDep, fig: FiguresDep, lang: LangDep, window: WindowDep,
                     wants_csv: WantsCsv) -> StopsOut | Response:
    """Every stop (part) of the line's machines overlapping the window, ordered by start, with the effective
    reason (the operator's if named, else the machine's) and who named it. CSV: one row per stop part."""
    w, _ = window
    tz = fig.plant.site.tz
    rows = stop_rows(fig, line, list(await fig.stop_list(line, w)), lang)
    if wants_csv:
        return csv_response(_STOP_COLUMNS, (r.model_dump() for r in rows), f"stops-{line.id}")
    return StopsOut(line=line.id, start=w.start.astimezone(tz), end=w.end.astimezone(tz), stops=rows)


@router.get("/lines/{line_id}/notes", response_model=NotesOut, responses=_READ_ERRORS,
            dependencies=[Depends(require_role("read"))])
async def line_notes(line: LineDep, fig: FiguresDep, window: WindowDep) -> NotesOut:
    """The notes written on the line with their time in the window, by time."""
    w, _ = window
    tz = fig.plant.site.tz
    notes = [NoteOut(time=_t(n.time_ns, tz), text=n.text or "", author=n.author, recorded=_t(n.recorded_ns, tz))
             for n in await fig.notes(line, w)]
    return NotesOut(line=line.id, start=w.start.astimezone(tz), end=w.end.astimezone(tz), notes=notes)


_AUDIT_COLUMNS = list(AuditEntryOut.model_fields)


@router.get(AUDIT_PATH.removeprefix("/api/v1"), response_model=AuditOut, responses={
    401: {"model": Problem, "description": "No valid bearer token"},
    403: {"model": Problem, "description": "The token's role is below admin"},
    422: {"model": Problem, "description": "Bad time or window (at most 400 days)"}})
async def audit(request: Request, fig: FiguresDep, store: StoreDep, caller: Admin, wants_csv: WantsCsv,
                start: Annotated[str | None, Query(description="Recorded at or after (ISO-8601); default end − 7 "
                                                   "days")] = None,
                end: Annotated[str | None, Query(description="Recorded before (ISO-8601); default now")] = None,
                ) -> AuditOut | Response:
    """Every operator entry recorded in ``[start, end)``, by recorded time, with author, old and new value."""
    tz = fig.plant.site.tz
    # in ns: a datetime keeps microseconds, and an entry recorded this very microsecond must be in
    e_ns = to_ns(parse_time("end", end)) if end is not None else _record_ns(request)
    s_ns = to_ns(parse_time("start", start)) if start is not None else e_ns - int(AUDIT_DEFAULT.total_seconds()) * NS
    t0, t1 = from_ns(s_ns), from_ns(e_ns)
    if e_ns <= s_ns:
        raise HTTPException(422, f"the window is empty or reversed: start {t0.isoformat()} is not before end "
                                 f"{t1.isoformat()}")
    check_span(t0, t1)
    entries = [entry_out(e, tz) for e in await _log(store).audit(s_ns, e_ns)]
    if wants_csv:
        return csv_response(_AUDIT_COLUMNS, (e.model_dump() for e in entries), "audit")
    return AuditOut(start=t0.astimezone(tz), end=t1.astimezone(tz), entries=entries)
