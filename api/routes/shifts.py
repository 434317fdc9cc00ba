from __future__ import annotations

from fastapi import APIRouter

from api.deps import AsOfDep, LangDep, PlantDep
from api.schemas import CurrentShift, ShiftOut
from core.calendar import ShiftWindow, current_shift
from core.plant import Plant

router = APIRouter(prefix="/api/v1", tags=["shifts"])


def shift_out(w: ShiftWindow, plant: Plant, lang: str) -> ShiftOut:
    """A shift window as every answer shows it: id, name in ``lang``, local date, times in plant time."""
    tz = plant.site.tz
    return ShiftOut(id=w.shift_id, name=plant.shift_name(w.shift_id, lang), day=w.day, start=w.start.astimezone(tz),
                    end=w.end.astimezone(tz))


@router.get("/shifts/current", response_model=CurrentShift)
def current(plant: PlantDep, as_of: AsOfDep, lang: LangDep) -> CurrentShift:
    """The shift running at ``as_of`` (default now), or ``{"shift": null}`` when none runs."""
    w = current_shift(plant, as_of)
    return CurrentShift(as_of=as_of.astimezone(plant.site.tz),
                        shift=shift_out(w, plant, lang) if w is not None else None)
