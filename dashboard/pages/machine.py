"""The machine view (``/machine/<id>``): its state now, its state timeline over the window and the
history of each gauge (mean and min–max per bucket) with its unit."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from dash import dcc, html

from dashboard.client import LineDetail, MachineDetail, MachineStatus
from dashboard.data import ANDON, Board, Window
from dashboard.figures import gantt_figure, gauge_figure
from dashboard.i18n import Lang, fmt_duration, fmt_time, state_name, t
from dashboard.pages.board import attrs

GAUGE_BUCKET = "5m"


def chart_id(machine_id: str, chart: str) -> dict[str, str]:
    return {"k": "mchart", "id": machine_id, "c": chart}


def charts_of(m: MachineDetail) -> list[str]:
    return ["states", *(f"gauge:{g.name}" for g in m.gauges)]


def machine_figures(board: Board, m: MachineDetail, w: Window, tz: ZoneInfo, lang: Lang,
                    deadline: float) -> dict[str, dict[str, Any]]:
    empty = w.end <= w.start
    st = None if empty else board.client.states(m.id, start=w.start, end=w.end, lang=lang)
    out = {"states": gantt_figure([(m.name, st)], w, tz, lang)}
    for g in m.gauges:
        board.check(deadline)
        series = None if empty else board.client.gauge(m.id, g.name, start=w.start, end=w.end, bucket=GAUGE_BUCKET)
        out[f"gauge:{g.name}"] = gauge_figure(series, g.name, series.unit if series else g.unit, w, tz, lang)
    return out


def head_children(line: LineDetail, m: MachineDetail, ms: MachineStatus | None, as_of: datetime, tz: ZoneInfo,
                  lang: Lang, query: str) -> list[Any]:
    """Name, its line (a link), its state now in andon colour, the reason and how long it has lasted."""
    state = ms.state if ms is not None else "offline"
    parts: list[Any] = [
        html.H1(m.name, className="tile-name"),
        dcc.Link(line.name, href=f"/line/{line.id}{query}", className="machine-line"),
        html.Span(state_name(state, lang), className="pill", style={"background": ANDON[state]},
                  **attrs(state=state)),
    ]
    if ms is not None and ms.since is not None:
        parts.append(html.Span(fmt_duration((as_of - ms.since).total_seconds(), lang), className="in-state"))
        detail = [ms.reason.label or f"#{ms.reason.code}"] if ms.reason is not None else []
        detail.append(t("since", lang, time=fmt_time(ms.since.astimezone(tz))))
        parts.append(html.Span(" · ".join(detail), className="state-detail"))
    return parts


def machine_page(line: LineDetail, m: MachineDetail, ms: MachineStatus | None, head: list[Any],
                 figs: dict[str, dict[str, Any]], lang: Lang) -> html.Div:
    state = ms.state if ms is not None else "offline"
    charts = charts_of(m)
    return html.Div(className="machine-page", id="machine-page", **attrs(machine=m.id), children=[
        html.Div(head, className=f"machinehead state-{state}", id={"k": "mhead", "id": m.id}),
        # one gauge takes the whole width; more share it two by two
        html.Div(className="charts machine-charts",
                 style={"gridTemplateColumns": "1fr 1fr" if len(m.gauges) > 1 else "1fr"}, children=[
            dcc.Graph(id=chart_id(m.id, c), className=f"chart chart-{c.split(':')[0]}", figure=figs[c],
                      config={"displayModeBar": False}, responsive=True,
                      style={"height": "220px" if c == "states" else "560px"})
            for c in charts
        ] + ([] if m.gauges else [html.Div(t("no_gauges", lang), className="note")])),
    ])

