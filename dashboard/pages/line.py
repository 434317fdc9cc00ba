"""The line view (``/line/<id>``): the tile's figures enlarged, then throughput per bucket against
the target, cumulative actual against the plan across the shift, a state timeline per machine,
the downtime Pareto by reason and OEE by hour."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from dash import dcc, html

from dashboard.client import LineInfo, LineStatus, States, Throughput
from dashboard.data import Board, Window
from dashboard.figures import cumulative_figure, gantt_figure, oee_figure, pareto_figure, throughput_figure
from dashboard.i18n import Lang
from dashboard.pages.board import (
    attrs,
    bid,
    figs_children,
    head_children,
    progress_children,
    strip_children,
    tile_class,
)

CHARTS = ("throughput", "cumulative", "oee", "gantt", "pareto")
BUCKET = "15m"
HEIGHTS = {"gantt": 300, "throughput": 270, "cumulative": 270, "pareto": 300, "oee": 270}  # px, on 1920×1080


def chart_id(line_id: str, chart: str) -> dict[str, str]:
    return {"k": "lchart", "id": line_id, "c": chart}


def line_figures(board: Board, line: LineInfo, w: Window, tz: ZoneInfo, lang: Lang,
                 deadline: float) -> dict[str, dict[str, Any]]:
    """Every chart of the line view, each from its own API answer for the window."""
    empty = w.end <= w.start
    tp: Throughput | None = None
    plan: Throughput | None = None
    if not empty:
        tp = board.client.throughput(line.id, start=w.start, end=w.end, bucket=BUCKET)
    board.check(deadline)
    if w.shift is not None:
        plan = board.shift_plan(line.id, w.shift, BUCKET)
    rows: list[tuple[str, States | None]] = []
    for m in line.machines:
        board.check(deadline)
        rows.append((m.name, None if empty else board.client.states(m.id, start=w.start, end=w.end, lang=lang)))
    board.check(deadline)
    dt = None if empty else board.client.downtime(line.id, start=w.start, end=w.end, lang=lang)
    board.check(deadline)
    oee = None if empty else board.client.line_oee(line.id, start=w.start, end=w.end, bucket="1h", lang=lang)
    return {
        "throughput": throughput_figure(tp, line, tz, lang),
        "cumulative": cumulative_figure(tp, plan, w, tz, lang),
        "gantt": gantt_figure(rows, w, tz, lang),
        "pareto": pareto_figure(dt, lang),
        "oee": oee_figure(oee, tz, lang),
    }


def line_page(line: LineInfo, st: LineStatus | None, figs: dict[str, dict[str, Any]], w: Window, tz: ZoneInfo,
              lang: Lang, query: str) -> html.Div:
    lid = line.id
    return html.Div(className="line-page", id="line-page", **attrs(line=lid), children=[
        html.Div(className=tile_class(st, "line"), id={"k": "tile", "id": lid, "v": "line"}, children=[
            html.Div(className="tile-top", children=[
                html.H1(line.name, className="tile-name"),
                html.Div(head_children(st, tz, lang), className="tile-head", id=bid("head", lid)),
            ]),
            html.Div(figs_children(line, st, None, w, lang), className="figures", id=bid("figs", lid)),
            html.Div(progress_children(st, lang), className="progress", id=bid("prog", lid)),
            html.Div(strip_children(st, lang, query, tz), className="strip", id=bid("strip", lid)),
        ]),
        html.Div(className="charts", children=[
            dcc.Graph(id=chart_id(lid, c), className=f"chart chart-{c}", figure=figs[c],
                      config={"displayModeBar": False}, responsive=True,
                      style={"height": f"{HEIGHTS.get(c, 380)}px"})
            for c in CHARTS
        ]),
    ])
