from __future__ import annotations

from datetime import tzinfo

from fastapi import APIRouter

from api.deps import AsOfDep, PlantDep
from api.schemas import CurrentShift, ShiftOut
from core.calendar import ShiftWindow, current_shift

router = APIRouter(prefix="/api/v1", tags=["shifts"])


def shift_out(w: ShiftWindow, tz: tzinfo) -> ShiftOut:
    return ShiftOut(id=w.shift_id, day=w.day, start=w.start.astimezone(tz), end=w.end.astimezone(tz))


@router.get("/shifts/current", response_model=CurrentShift)
def current(plant: PlantDep, as_of: AsOfDep) -> CurrentShift:
    """The shift running at ``as_of`` (default now), or ``{"shift": null}`` when none runs."""
    tz = plant.site.tz
    w = current_shift(plant, as_of)
    return CurrentShift(as_of=as_of.astimezone(tz), shift=shift_out(w, tz) if w is not None else None)
