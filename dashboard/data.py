"""What the pages read from the API: a client with a time budget, small bounded caches, the window.

Everything here talks to the API over HTTP through :mod:`dashboard.client`; nothing imports the
API, collector or store packages.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from dashboard.client import (
    ApiClient,
    ApiUnreachable,
    LineInfo,
    LineStatus,
    MachineStatus,
    PlantDetail,
    ShiftInfo,
    Site,
    State,
    Throughput,
)
from dashboard.i18n import Lang

CACHE_TTL_S = 60.0
CACHE_MAX = 64  # entries per cache: the caches never grow with uptime

# andon colours: running green, idle yellow, down red, changeover orange, planned blue, offline grey
ANDON: dict[str, str] = {
    "running": "#2ecc71", "idle": "#ffd600", "down": "#ff3b3b", "changeover": "#ff8c1a",
    "planned": "#3d8bff", "offline": "#7a8594",
}
GREEN, AMBER, RED, GREY = "#2ecc71", "#ffb300", "#ff4d4d", "#607080"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime
    shift: ShiftInfo | None

    @property
    def hours(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0) / 3600


class TooSlow(ApiUnreachable):
    """The API answered too slowly for the refresh budget: give up this refresh, keep the last figures."""


def rate_color(actual: float, target: float) -> str:
    if target <= 0:
        return GREY
    if actual >= target:
        return GREEN
    return AMBER if actual >= 0.85 * target else RED


def line_state(machines: tuple[MachineStatus, ...]) -> tuple[State, MachineStatus | None]:
    """The line's andon state and the machine that sets it.

    A stopped station stops the line, so the worst state wins: ``down``, then ``changeover``; a
    line is ``planned`` or ``offline`` only when all its machines are; otherwise it is ``running``
    when any station runs, else ``idle``. Among the machines in the chosen state, the one in it
    longest tells since when and why.
    """
    if not machines:
        return "offline", None

    def longest(state: State) -> MachineStatus | None:
        ms = [m for m in machines if m.state == state]
        if not ms:
            return None
        return min(ms, key=lambda m: m.since.timestamp() if m.since is not None else float("inf"))

    order: tuple[State, ...] = ("down", "changeover")
    for state in order:
        m = longest(state)
        if m is not None:
            return state, m
    rest: tuple[State, ...] = ("planned", "offline")
    for state in rest:
        if all(m.state == state for m in machines):
            return state, longest(state)
    last: tuple[State, ...] = ("running", "idle")
    for state in last:
        m = longest(state)
        if m is not None:
            return state, m
    return "idle", longest("planned") or longest("offline")


class _Cache:
    """A small LRU with a time to live, shared by the callback threads."""

    def __init__(self, ttl_s: float, max_entries: int = CACHE_MAX) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._data: OrderedDict[object, tuple[float, object]] = OrderedDict()

    def get(self, key: object, load: Callable[[], T]) -> T:
        with self._lock:
            hit = self._data.get(key)
            if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
                self._data.move_to_end(key)
                return hit[1]  # type: ignore[return-value]
        value = load()
        with self._lock:
            self._data[key] = (time.monotonic(), value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)


class Board:
    """What one dashboard process knows: an API client and the plant data that rarely changes."""

    def __init__(self, client: ApiClient, *, budget_s: float, recent_hours: float = 8.0) -> None:
        self.client = client
        self.budget_s = budget_s
        self.recent_hours = recent_hours
        self._static = _Cache(CACHE_TTL_S)
        self._plans = _Cache(CACHE_TTL_S * 10)

    def site(self, lang: Lang | None = None) -> Site:
        """The site, its name in ``lang`` (None: in the site's own locale)."""
        return self._static.get(("site", lang), lambda: self.client.site(lang))

    def lines(self, lang: Lang) -> list[LineInfo]:
        return self._static.get(("lines", lang), lambda: self.client.lines(lang))

    def plant(self, lang: Lang) -> PlantDetail:
        return self._static.get(("plant", lang), lambda: self.client.plant(lang))

    def window(self, as_of: datetime, lang: Lang | None = None) -> Window:
        return self.window_of(self.client.current_shift(as_of, lang), as_of)

    def window_of(self, shift: ShiftInfo | None, as_of: datetime) -> Window:
        if shift is not None:
            return Window(shift.start, min(as_of, shift.end), shift)
        return Window(as_of - timedelta(hours=self.recent_hours), as_of, None)

    def window_for(self, statuses: dict[str, LineStatus], as_of: datetime) -> Window:
        """The window the lines' statuses were computed for: their shift so far (one calendar per plant)."""
        return self.window_of(next((s.shift for s in statuses.values() if s.shift is not None), None), as_of)

    def check(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise TooSlow(f"the API answered too slowly for a {self.budget_s:.1f} s refresh budget")

    def throughputs(self, lines: list[LineInfo], w: Window, deadline: float) -> dict[str, Throughput | None]:
        out: dict[str, Throughput | None] = {}
        for line in lines:
            self.check(deadline)
            # an empty window (the shift's first instant) is no data yet, not a request to make
            out[line.id] = (self.client.throughput(line.id, start=w.start, end=w.end, bucket="1h")
                            if w.end > w.start else None)
        return out

    def statuses(self, line_ids: list[str], as_of: datetime, lang: Lang, deadline: float) -> dict[str, LineStatus]:
        out: dict[str, LineStatus] = {}
        for lid in line_ids:
            self.check(deadline)
            out[lid] = self.client.status(lid, as_of=as_of, lang=lang)
        return out

    def shift_plan(self, line_id: str, shift: ShiftInfo, bucket: str) -> Throughput:
        """The whole shift's throughput answer, for its cumulative target (the plan does not change)."""
        return self._plans.get((line_id, shift.start, bucket),
                               lambda: self.client.throughput(line_id, start=shift.start, end=shift.end,
                                                              bucket=bucket))


# stop-reason categories (the plant file's ``category``), in the board's palette: a breakdown is
# the colour of a machine down, a changeover of changeover, a planned stop of planned; the rest
# get colours of their own. Dark text (:data:`ON_COLOR`) on each reads at WCAG AA (≥ 4.5:1).
CATEGORY_COLORS: dict[str, str] = {
    "breakdown": ANDON["down"], "changeover": ANDON["changeover"], "planned": ANDON["planned"],
    "micro_stop": ANDON["idle"], "starved": "#4fc3f7", "blocked": "#80cbc4", "quality": "#ce93d8",
    "speed": "#f48fb1", "other": ANDON["offline"],
}
ON_COLOR = "#0b0d10"


def category_color(category: str | None) -> str:
    return CATEGORY_COLORS.get(category or "other", CATEGORY_COLORS["other"])
