from __future__ import annotations

from fastapi import APIRouter

from api.deps import LangDep, PlantDep
from api.schemas import LineOut, MachineOut, Site
from core.plant import label

router = APIRouter(prefix="/api/v1", tags=["plant"])


@router.get("/plant/site", response_model=Site)
def site(plant: PlantDep, lang: LangDep) -> Site:
    s = plant.site
    return Site(id=s.id, name=label(s.name, lang, s.id), timezone=s.timezone, locale=s.locale)


@router.get("/lines", response_model=list[LineOut])
def lines(plant: PlantDep, lang: LangDep) -> list[LineOut]:
    """The plant's lines with their machines in flow order, names in the requested language."""
    return [
        LineOut(id=ln.id, name=label(ln.name, lang, ln.id), target_per_hour=ln.target_per_hour,
                machines=[MachineOut(id=m.id, name=label(m.name, lang, m.id)) for m in ln.machines])
        for ln in plant.lines
    ]
