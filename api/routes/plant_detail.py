from __future__ import annotations

from fastapi import APIRouter

from api.deps import LangDep, PlantDep
from api.schemas import Problem, Site
from api.schemas_figures import (
    CalendarOut,
    LineDetail,
    MachineDetail,
    PlantOut,
    ProductOut,
    ReasonOut,
    ShiftDef,
    SignalOut,
)
from core.model import signal_kind
from core.plant import label

router = APIRouter(prefix="/api/v1", tags=["plant"])

EXAMPLE = {
    "site": {"id": "ashikaga-1", "name": "Ashikaga Plant 1", "timezone": "Asia/Tokyo", "locale": "ja"},
    "calendar": {"shifts": [{"id": "day", "name": "Day shift", "start": "08:00", "end": "17:00",
                             "days": ["mon", "tue", "wed", "thu", "fri"],
                             "breaks": [["10:00", "10:10"], ["12:00", "12:45"]]}],
                 "holidays": ["2026-12-31"], "micro_stop_s": 120},
    "reasons": [{"code": 10, "name": "Tool change", "category": "changeover"}],
    "products": [{"id": "TB-100", "name": "Turbine blade 100", "ideal_cycle_s": 28}],
    "lines": [{"id": "blade-1", "name": "Turbine blade line 1", "target_per_hour": 110, "machines": [
        {"id": "cnc-1", "name": "5-axis CNC 1", "output": False, "ideal_cycle_s": 28, "signals": [
            {"name": "good", "kind": "counter", "unit": None},
            {"name": "state", "kind": "state", "unit": None},
            {"name": "spindle_temp", "kind": "gauge", "unit": "°C"}]}]}],
}


@router.get("/plant", response_model=PlantOut,
            responses={200: {"content": {"application/json": {"example": EXAMPLE}}},
                       422: {"model": Problem, "description": "Unknown language"}})
def plant_detail(plant: PlantDep, lang: LangDep) -> PlantOut:
    """The plant file as clients need it: site, calendar, stop reasons, products, and lines with their
    machines (output flag, signals with kind and unit), names in the requested language."""
    s = plant.site
    cal = plant.calendar
    return PlantOut(
        site=Site(id=s.id, name=label(s.name, lang, s.id), timezone=s.timezone, locale=s.locale),
        calendar=CalendarOut(
            shifts=[ShiftDef(id=sh.id, name=label(sh.name, lang, sh.id), start=sh.start, end=sh.end,
                             days=list(sh.days), breaks=list(sh.breaks)) for sh in cal.shifts],
            holidays=list(cal.holidays), micro_stop_s=cal.micro_stop_s),
        reasons=[ReasonOut(code=code, name=label(r.name, lang, str(code)), category=r.category)
                 for code, r in sorted(plant.reasons.items())],
        products=[ProductOut(id=pid, name=label(p.name, lang, pid), ideal_cycle_s=p.ideal_cycle_s)
                  for pid, p in plant.products.items()],
        lines=[LineDetail(
            id=ln.id, name=label(ln.name, lang, ln.id), target_per_hour=ln.target_per_hour,
            machines=[MachineDetail(
                id=m.id, name=label(m.name, lang, m.id), output=m.id in {o.id for o in ln.output_machines},
                ideal_cycle_s=m.ideal_cycle_s,
                signals=[SignalOut(name=n, kind=signal_kind(n), unit=sig.unit) for n, sig in m.signals.items()])
                for m in ln.machines])
            for ln in plant.lines],
    )
