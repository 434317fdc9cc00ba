"""What a URL asks of the dashboard: the page (path) and the wall-screen settings (query).

Paths: ``/`` the wall board, ``/line/<id>`` a line view, ``/machine/<id>`` a machine view,
``/operator/<line>`` the operator page.
Query: ``?lang=ja|en``, ``?as_of=ISO`` (replay), ``?lines=a,b``, ``?kiosk=1``, ``?rotate=S``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import parse_qs, urlencode

from dashboard.client import LineInfo
from dashboard.i18n import Lang

MIN_ROTATE_S = 2
_MANGLED_PLUS = re.compile(r"^(.*\d) (\d{2}:?\d{2})$")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

PageKind = Literal["board", "line", "machine", "operator", "unknown"]


@dataclass(frozen=True, slots=True)
class View:
    """What the URL's query asks of the board."""

    lang: Lang | None = None
    as_of: datetime | None = None
    lines: tuple[str, ...] | None = None
    kiosk: bool = False
    rotate_s: int | None = None


@dataclass(frozen=True, slots=True)
class Page:
    kind: PageKind
    id: str | None = None


def _first(q: dict[str, list[str]], key: str) -> str | None:
    return next(iter(q.get(key, [])), None)


def parse_as_of(text: str | None) -> datetime | None:
    if not text:
        return None
    text = text.strip()
    m = _MANGLED_PLUS.match(text)  # parse_qs reads a '+' typed into the URL as a space
    if m and "T" in text:
        text = f"{m.group(1)}+{m.group(2)}"
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def parse_view(search: str | None) -> View:
    """``?lang=..&as_of=..&lines=a,b&kiosk=1&rotate=30``; anything unreadable is left at its default."""
    q = parse_qs((search or "").lstrip("?"))
    lang_param = _first(q, "lang")
    lang: Lang | None = "ja" if lang_param == "ja" else "en" if lang_param == "en" else None
    lines_param = _first(q, "lines")
    picked = tuple(dict.fromkeys(x.strip() for x in lines_param.split(",") if x.strip())) if lines_param else ()
    kiosk = (_first(q, "kiosk") or "").strip().lower() in ("1", "true", "yes", "on")
    rotate: int | None = None
    rotate_param = (_first(q, "rotate") or "").strip()
    if rotate_param.isdigit() and int(rotate_param) > 0:
        rotate = max(int(rotate_param), MIN_ROTATE_S)
    return View(lang, parse_as_of(_first(q, "as_of")), picked or None, kiosk, rotate)


def parse_page(pathname: str | None) -> Page:
    parts = [p for p in (pathname or "/").split("/") if p]
    if not parts:
        return Page("board")
    if len(parts) == 2 and parts[0] in ("line", "machine", "operator") and _ID.match(parts[1]):
        kind: PageKind = "line" if parts[0] == "line" else "machine" if parts[0] == "machine" else "operator"
        return Page(kind, parts[1])
    return Page("unknown", "/".join(parts))


def link_query(view: View) -> str:
    """The query a link to another page keeps: the language and the replay instant."""
    q: dict[str, str] = {}
    if view.lang:
        q["lang"] = view.lang
    if view.as_of is not None:
        q["as_of"] = view.as_of.isoformat()
    if view.kiosk:
        q["kiosk"] = "1"
    return f"?{urlencode(q)}" if q else ""


def pick_lines(lines: list[LineInfo], wanted: tuple[str, ...] | None) -> list[LineInfo]:
    """The lines ``wanted`` names, in its order; all lines when it names none."""
    if not wanted:
        return lines
    by_id = {line.id: line for line in lines}
    return [by_id[i] for i in wanted if i in by_id]
