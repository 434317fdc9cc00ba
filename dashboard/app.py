"""The wall board: one tile per line (good this shift, rate per hour, target) and its throughput.

The board reads the API only, over HTTP (:mod:`dashboard.client`). URL parameters:

- ``?lang=ja|en``: language (default: the plant's locale, from the API);
- ``?as_of=2026-11-27T10:30:00+09:00``: show the board as it was at that instant (replay);
- ``?lines=a,b``: only these lines, in this order (unknown ids are left out);
- ``?kiosk=1``: wall-screen mode: no pointer, no scroll bars, nothing to click;
- ``?rotate=30``: one line at a time, enlarged with a taller chart, the next one every 30 s.

A wall screen is set up by its URL alone, e.g. ``/?kiosk=1&lines=blade-1,press-2&lang=ja&rotate=30``.

Without a running shift the tiles show the last ``recent_hours`` hours. Each refresh does one
``/shifts/current`` call and one ``/throughput`` call per line, under a time budget well inside
the refresh interval (a Dash callback slower than its interval never updates the page). When
the API cannot be reached the board keeps the last figures, dims them and shows a banner.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import dash
from dash import Input, Output, dcc, html

from dashboard.client import ApiClient, ApiError, ApiUnavailable, ApiUnreachable, LineInfo, ShiftInfo, Site, Throughput
from dashboard.i18n import Lang, both, t

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
CACHE_TTL_S = 60.0
_MANGLED_PLUS = re.compile(r"^(.*\d) (\d{2}:?\d{2})$")

# andon colours
GREEN, AMBER, RED, GREY = "#2ecc71", "#ffb300", "#ff4d4d", "#607080"
MIN_ROTATE_S = 2
CHART_HEIGHT = 280  # px; a single-line view's chart fills the rest of the screen instead


@dataclass(frozen=True, slots=True)
class View:
    """What the URL asks of the board."""

    lang: Lang | None = None
    as_of: datetime | None = None
    lines: tuple[str, ...] | None = None
    kiosk: bool = False
    rotate_s: int | None = None


def _first(q: dict[str, list[str]], key: str) -> str | None:
    return next(iter(q.get(key, [])), None)


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
    return View(lang, _parse_as_of(_first(q, "as_of")), picked or None, kiosk, rotate)


def pick_lines(lines: list[LineInfo], wanted: tuple[str, ...] | None) -> list[LineInfo]:
    """The lines ``wanted`` names, in its order; all lines when it names none."""
    if not wanted:
        return lines
    by_id = {line.id: line for line in lines}
    return [by_id[i] for i in wanted if i in by_id]


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime
    shift: ShiftInfo | None

    @property
    def hours(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0) / 3600


class _TooSlow(ApiUnreachable):
    pass


def _parse_as_of(text: str | None) -> datetime | None:
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


def rate_color(actual: float, target: float) -> str:
    if target <= 0:
        return GREY
    if actual >= target:
        return GREEN
    return AMBER if actual >= 0.85 * target else RED


class Board:
    """What one dashboard process knows: an API client and the plant data that rarely changes."""

    def __init__(self, client: ApiClient, *, budget_s: float, recent_hours: float = 8.0) -> None:
        self.client = client
        self.budget_s = budget_s
        self.recent_hours = recent_hours
        self._lock = threading.Lock()
        self._site: dict[Lang | None, tuple[float, Site]] = {}
        self._lines: dict[Lang, tuple[float, list[LineInfo]]] = {}

    def site(self, lang: Lang | None = None) -> Site:
        """The site, its name in ``lang`` (None: in the site's own locale)."""
        with self._lock:
            cached = self._site.get(lang)
        if cached is not None and time.monotonic() - cached[0] < CACHE_TTL_S:
            return cached[1]
        site = self.client.site(lang)
        with self._lock:
            self._site[lang] = (time.monotonic(), site)
        return site

    def lines(self, lang: Lang) -> list[LineInfo]:
        with self._lock:
            cached = self._lines.get(lang)
        if cached is not None and time.monotonic() - cached[0] < CACHE_TTL_S:
            return cached[1]
        lines = self.client.lines(lang)
        with self._lock:
            self._lines[lang] = (time.monotonic(), lines)
        return lines

    def window(self, as_of: datetime) -> Window:
        shift = self.client.current_shift(as_of)
        if shift is not None:
            return Window(shift.start, min(as_of, shift.end), shift)
        return Window(as_of - timedelta(hours=self.recent_hours), as_of, None)

    def throughputs(self, lines: list[LineInfo], w: Window, deadline: float) -> dict[str, Throughput | None]:
        out: dict[str, Throughput | None] = {}
        for line in lines:
            if time.monotonic() > deadline:
                raise _TooSlow(f"the API answered too slowly for a {self.budget_s:.1f} s refresh budget")
            # an empty window (the shift's first instant) is no data yet, not a request to make
            out[line.id] = (self.client.throughput(line.id, start=w.start, end=w.end, bucket="1h")
                            if w.end > w.start else None)
        return out


def _hour_slots(w: Window) -> list[datetime]:
    """Hour starts (UTC-aligned, like the API's 1h buckets) to show: the whole shift, or the window."""
    a, b = (w.shift.start, w.shift.end) if w.shift is not None else (w.start, w.end)
    t = a.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    out: list[datetime] = []
    while t < b and len(out) < 48:
        out.append(t)
        t += timedelta(hours=1)
    return out


def _figure(tp: Throughput | None, line: LineInfo, w: Window, tz: ZoneInfo, lang: Lang,
            height: int | None = CHART_HEIGHT) -> dict[str, Any]:
    """Hourly bars over the whole shift (hours to come stay empty), target as a dashed line."""
    by_start = {p.start.astimezone(UTC): p for p in tp.points} if tp is not None else {}
    xs: list[str] = []
    ys: list[int | None] = []
    colors: list[str] = []
    for slot in _hour_slots(w):
        # a category axis of wall-clock labels: plotly.js knows no time zones
        xs.append(slot.astimezone(tz).strftime("%H:%M"))
        p = by_start.get(slot)
        if p is None:
            ys.append(None)
            colors.append(GREY)
            continue
        ys.append(p.good)
        inside_s = (min(p.end, w.end) - max(p.start, w.start)).total_seconds()
        # the API's bucket target leaves out breaks, so an hour with a break is not painted red for it
        target = p.target if p.target is not None else line.target_per_hour * inside_s / 3600
        colors.append(rate_color(p.good, target) if inside_s > 0 else GREY)
    top = max([y for y in ys if y is not None] + [line.target_per_hour, 1])
    shapes = []
    if line.target_per_hour > 0:
        shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": line.target_per_hour,
                       "y1": line.target_per_hour, "line": {"color": "#ffd54a", "width": 3, "dash": "dash"}})
    layout: dict[str, Any] = {
        "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
        "font": {"size": 20, "color": "#e8eaed"}, "margin": {"l": 70, "r": 16, "t": 16, "b": 50},
        "showlegend": False, "bargap": 0.15, "shapes": shapes,
        "xaxis": {"type": "category", "categoryorder": "array", "categoryarray": xs, "linecolor": "#3a404a"},
        "yaxis": {"gridcolor": "#2a2f38", "range": [0, top * 1.2], "zerolinecolor": "#3a404a"},
    }
    if height is not None:
        layout["height"] = height
    else:  # sized by its container
        layout["autosize"] = True
        layout["font"]["size"] = 28
    return {
        "data": [{"type": "bar", "x": xs, "y": ys, "marker": {"color": colors}, "name": t("good", lang),
                  "text": [f"{y:,}" if y else "" for y in ys], "textposition": "outside",
                  "cliponaxis": False, "hoverinfo": "skip"}],
        "layout": layout,
    }


def _tile(line: LineInfo, tp: Throughput | None, w: Window, tz: ZoneInfo, lang: Lang,
          single: bool = False) -> html.Div:
    good = tp.total_good if tp is not None else 0
    rate = good / w.hours if w.hours > 0 else None
    rate_text = f"{rate:,.0f}" if rate is not None else "—"
    target_text = f"{line.target_per_hour:,.0f}"
    lid = line.id
    attrs: dict[str, Any] = {
        "data-line": lid, "data-good": str(good), "data-scrap": str(tp.total_scrap if tp is not None else 0),
        "data-rate": f"{rate:.3f}" if rate is not None else "", "data-target": f"{line.target_per_hour:g}",
        "data-window-start": w.start.isoformat(), "data-window-end": w.end.isoformat(),
    }
    return html.Div(className="tile single" if single else "tile", id=f"tile-{lid}", **attrs, children=[
        html.Div(line.name, className="tile-name", id=f"tile-{lid}-name"),
        html.Div(className="figures", children=[
            html.Div(className="figure", children=[
                html.Div(t("good", lang), className="label"),
                html.Div(f"{good:,}", className="value good", id=f"tile-{lid}-good"),
            ]),
            html.Div(className="figure", children=[
                html.Div(t("rate", lang), className="label"),
                html.Div(rate_text, className="value rate", id=f"tile-{lid}-rate",
                         style={"color": rate_color(rate, line.target_per_hour) if rate is not None else GREY}),
            ]),
            html.Div(className="figure", children=[
                html.Div(t("target", lang), className="label"),
                html.Div(target_text, className="value target", id=f"tile-{lid}-target"),
            ]),
        ]),
        dcc.Graph(id=f"tile-{lid}-chart", className="chart",
                  figure=_figure(tp, line, w, tz, lang, None if single else CHART_HEIGHT),
                  config={"displayModeBar": False, "staticPlot": True},
                  responsive=True if single else "auto", style={"height": "100%"} if single else {}),
    ])


def _layout(refresh_ms: int) -> html.Div:
    return html.Div(id="board", className="board", children=[
        dcc.Location(id="url", refresh=False),
        dcc.Interval(id="tick", interval=refresh_ms, n_intervals=0),
        dcc.Interval(id="rotate-tick", interval=30_000, n_intervals=0, disabled=True),
        html.Header(className="header", children=[
            html.Div(id="header-site", className="site"),
            html.Div(id="header-shift", className="shift"),
            html.Div(id="header-clock", className="clock"),
        ]),
        html.Div(id="banner", className="banner hidden", role="alert"),
        html.Main(id="tiles", className="tiles"),
    ])


def create_dashboard(api_url: str, *, refresh_ms: int = 5000, token: str | None = None,
                     timeout_s: float | None = None, recent_hours: float = 8.0,
                     client: ApiClient | None = None) -> dash.Dash:
    """The wall-board Dash app reading the API at ``api_url`` (``client`` replaces the HTTP client in tests).

    Each refresh is budgeted at a third of ``refresh_ms`` (requests time out at ``timeout_s``,
    by default that budget capped at 2 s), so the callback always ends well before the next tick.
    """
    budget_s = max(refresh_ms / 1000 / 3, 0.3)
    timeout = timeout_s if timeout_s is not None else min(budget_s, 2.0)
    api = client or ApiClient(api_url, timeout_s=timeout, token=token)
    board = Board(api, budget_s=budget_s, recent_hours=recent_hours)

    app = dash.Dash(__name__, assets_folder=str(ASSETS), title="mieruka", update_title="",
                    serve_locally=True)
    app.layout = _layout(refresh_ms)

    @app.callback(
        Output("board", "className"), Output("rotate-tick", "interval"), Output("rotate-tick", "disabled"),
        Input("url", "search"),
    )
    def wall_mode(search: str | None) -> tuple[str, int, bool]:
        view = parse_view(search)
        cls = " ".join(["board", *(["kiosk"] if view.kiosk else []), *(["single"] if view.rotate_s else [])])
        return cls, (view.rotate_s or 30) * 1000, view.rotate_s is None

    @app.callback(
        Output("banner", "children"), Output("banner", "className"),
        Output("header-site", "children"), Output("header-shift", "children"), Output("header-clock", "children"),
        Output("tiles", "children"), Output("tiles", "className"),
        Input("tick", "n_intervals"), Input("url", "search"), Input("rotate-tick", "n_intervals"),
    )
    def refresh(_n: int | None, search: str | None, turn: int | None) -> tuple[Any, ...]:
        view = parse_view(search)
        asked, as_of_param = view.lang, view.as_of
        deadline = time.monotonic() + budget_s
        lang: Lang | None = asked
        try:
            site = board.site(asked)
            lang = asked or site.locale
            tz = ZoneInfo(site.timezone)
            lines = pick_lines(board.lines(lang), view.lines)
            if view.rotate_s is not None and lines:
                lines = [lines[(turn or 0) % len(lines)]]  # one line at a time: fetch only that one
            as_of = as_of_param or datetime.now(UTC)
            w = board.window(as_of)
            tps = board.throughputs(lines, w, deadline)
        except ApiError as e:
            key = ("store_unavailable" if isinstance(e, ApiUnavailable) else
                   "api_unreachable" if isinstance(e, ApiUnreachable) else "api_error")
            log.warning("wall board refresh failed: %s", e)
            text = (f"{t(key, lang)} — {t('last_data', lang)}" if lang else both(key))
            nu = dash.no_update
            return text, "banner", nu, nu, nu, nu, "tiles single stale" if view.rotate_s else "tiles stale"
        if w.shift is not None:
            s = w.shift
            shift_text = (f"{t('shift', lang)} {s.id}  {s.start.astimezone(tz):%H:%M}–"
                          f"{s.end.astimezone(tz):%H:%M}")
        else:
            shift_text = t("no_shift", lang, hours=f"{board.recent_hours:g}")
        clock_label = t("replay", lang) if as_of_param else t("updated", lang)
        clock = f"{clock_label} {as_of.astimezone(tz):%Y-%m-%d %H:%M:%S}"
        single = view.rotate_s is not None
        tiles = [_tile(line, tps.get(line.id), w, tz, lang, single) for line in lines]
        return "", "banner hidden", site.name, shift_text, clock, tiles, "tiles single" if single else "tiles"

    return app


def run_dashboard(api_url: str, host: str = "127.0.0.1", port: int = 8050, *, refresh_ms: int = 5000,
                  token: str | None = None) -> None:
    """Serve the wall board until interrupted (what ``mieruka dashboard`` calls)."""
    from werkzeug.serving import make_server

    app = create_dashboard(api_url, refresh_ms=refresh_ms, token=token)
    server = make_server(host, port, app.server, threaded=True)
    log.info("wall board on http://%s:%d/ reading %s", host, port, api_url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
