"""Request dependencies: the plant, the store, the answer language, checked ids and times."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, Header, HTTPException, Path, Query, Request

from api.cache import now_of
from core import figures
from core.plant import Line, Plant
from core.store.base import Store

Lang = Literal["ja", "en"]
LANGS: tuple[Lang, ...] = ("ja", "en")

# A '+' typed into a URL arrives as a space ("...T08:00:00 09:00"): the offset is there, mangled.
_MANGLED_PLUS = re.compile(r"^(.*\d) (\d{2}:?\d{2})$")


def get_plant(request: Request) -> Plant:
    plant: Plant = request.app.state.plant
    return plant


PlantDep = Annotated[Plant, Depends(get_plant)]


async def get_store(request: Request) -> Store:
    """The app's store; opened again here if it was unreachable when the app started.

    ``Store.open`` is idempotent, so a concurrent second open is harmless; ``StoreUnavailable``
    from it becomes a 503 through the app's exception handler."""
    state = request.app.state
    store: Store = state.store_here  # callable from a figure worker's loop too (api.work.HomeLoopStore)
    if not state.store_open:
        await store.open()
        state.store_open = True
    return store


StoreDep = Annotated[Store, Depends(get_store)]


def parse_accept_language(header: str | None) -> Lang | None:
    """The best of ja/en in an Accept-Language header by q-value (None if neither is acceptable)."""
    if not header:
        return None
    best: tuple[float, int, Lang] | None = None
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGS:
            continue
        q = 1.0
        m = re.search(r"q\s*=\s*([0-9.]+)", params)
        if m:
            try:
                q = float(m.group(1))
            except ValueError:
                q = 0.0
        if q <= 0:
            continue
        lang: Lang = "ja" if primary == "ja" else "en"
        if best is None or (q, -i) > (best[0], -best[1]):
            best = (q, i, lang)
    return best[2] if best else None


def get_lang(
    plant: PlantDep,
    lang: Annotated[Lang | None, Query(description="Language of names: ja or en. Default: the "
                                       "Accept-Language header, else the site's locale.")] = None,
    accept_language: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Lang:
    return lang or parse_accept_language(accept_language) or plant.site.locale


LangDep = Annotated[Lang, Depends(get_lang)]


def get_line(plant: PlantDep, line_id: Annotated[str, Path(description="A line id from the plant file")]) -> Line:
    line = plant.line(line_id)
    if line is None:
        known = ", ".join(ln.id for ln in plant.lines)
        raise HTTPException(404, f"unknown line '{line_id}'; this plant has: {known}")
    return line


LineDep = Annotated[Line, Depends(get_line)]


def parse_time(name: str, value: str) -> datetime:
    """An ISO-8601 time with an offset; 422 naming the parameter otherwise."""
    text = value.strip()
    m = _MANGLED_PLUS.match(text)
    if m and "T" in text:
        text = f"{m.group(1)}+{m.group(2)}"
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(422, f"{name} '{value}' is not an ISO-8601 time; write it like "
                                 "2026-11-27T08:00:00+09:00 or 2026-11-26T23:00:00Z") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise HTTPException(422, f"{name} '{value}' has no UTC offset; times need one, like "
                                 "2026-11-27T08:00:00+09:00 or 2026-11-26T23:00:00Z "
                                 "(in a URL write '+' as %2B)")
    try:
        return figures.check_time(name, t)
    except figures.WindowError as e:
        raise HTTPException(422, str(e)) from None


def get_as_of(
    request: Request,
    as_of: Annotated[str | None, Query(description="The instant 'current' refers to (ISO-8601 with "
                                       "offset); default: now", examples=["2026-11-27T10:30:00+09:00"])] = None,
) -> datetime:
    # "now" is the start of the refresh period (api.cache): every screen asking within it gets one answer
    return parse_time("as_of", as_of) if as_of is not None else now_of(request)


AsOfDep = Annotated[datetime, Depends(get_as_of)]
