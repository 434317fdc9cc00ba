"""The wall board: a tile per line in andon colours.

A tile shows the line's state (the worst of its machines) with its reason and how long it has
lasted, this shift's good against the target by now with a progress bar and "behind/ahead by N",
the rate per hour, OEE with A/P/Q, a strip of machine states and the hourly throughput.
Figures come from ``/lines/{id}/status`` (and ``/throughput`` for the chart) at the board's
``as_of``. The same blocks head the line view.

Components carry pattern-matching ids ``{"k": block, "id": line}`` so the refresh callback
updates each block in place (and the chart with a ``Patch``) without rebuilding the page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from dash import dcc, html

from dashboard.client import LineInfo, LineStatus, MachineStatus, Throughput
from dashboard.data import ANDON, GREY, Window, line_state, rate_color
from dashboard.figures import CHART_HEIGHT, tile_figure
from dashboard.i18n import (
    Lang,
    fmt_datetime,
    fmt_difference,
    fmt_duration,
    fmt_int,
    fmt_pct,
    fmt_time,
    state_name,
    t,
)


def attrs(**kw: str) -> dict[str, Any]:
    """``data-*`` attributes (for readers of the page: tests, scripts)."""
    return {f"data-{k}": v for k, v in kw.items()}


def bid(kind: str, line_id: str) -> dict[str, str]:
    return {"k": kind, "id": line_id}


def tile_class(st: LineStatus | None, variant: str) -> str:
    state = line_state(st.machines)[0] if st is not None else "offline"
    base = {"board": "tile", "single": "tile single", "line": "linehead"}.get(variant, "tile")
    return f"{base} state-{state}"


def head_children(st: LineStatus | None, tz: ZoneInfo, lang: Lang) -> list[Any]:
    """The line's andon state, why, which machine, since when and for how long."""
    if st is None:
        return [html.Span(state_name("offline", lang), className="pill", style={"background": ANDON["offline"]})]
    state, m = line_state(st.machines)
    parts: list[Any] = [html.Span(state_name(state, lang), className="pill", style={"background": ANDON[state]},
                                  **attrs(state=state))]
    detail: list[str] = []
    if m is not None and state not in ("running",):
        if m.reason is not None:
            detail.append(m.reason.label or f"#{m.reason.code}")
        detail.append(m.name)
    if m is not None and m.since is not None:
        parts.append(html.Span(fmt_duration((st.as_of - m.since).total_seconds(), lang), className="in-state",
                               title=t("since", lang, time=fmt_time(m.since.astimezone(tz)))))
        detail.append(t("since", lang, time=fmt_time(m.since.astimezone(tz))))
    parts.append(html.Span(" · ".join(detail), className="state-detail"))
    return parts


def _figure(label: str, value: str, cls: str, sub: str = "", color: str | None = None) -> html.Div:
    return html.Div(className=f"figure {cls}", children=[
        html.Div(label, className="label"),
        html.Div(value, className=f"value {cls}", style={"color": color} if color else {}),
        html.Div(sub, className=f"sub {cls}-sub"),
    ])


def figs_children(line: LineInfo, st: LineStatus | None, tp: Throughput | None, w: Window,
                  lang: Lang) -> list[Any]:
    """Good (and the plan), rate per hour against the target, OEE with A/P/Q."""
    c = st.counts if st is not None else None
    if c is not None:
        good: float = c.good
        sub = t("of_target", lang, expected=fmt_int(c.expected), shift=fmt_int(c.shift_target))
        rate = c.rate_per_hour
    else:  # no shift running: the recent window's throughput
        good = tp.total_good if tp is not None else 0
        sub = ""
        rate = good / w.hours if w.hours > 0 else None
    o = st.oee if st is not None else None
    apq = (f"{t('a_short', lang)} {fmt_pct(o.availability)}  {t('p_short', lang)} {fmt_pct(o.performance)}  "
           f"{t('q_short', lang)} {fmt_pct(o.quality)}") if o is not None else ""
    return [
        _figure(t("good", lang), fmt_int(good), "good", sub),
        _figure(t("rate", lang), fmt_int(rate), "rate", f"{t('target', lang)} {fmt_int(line.target_per_hour)}",
                rate_color(rate, line.target_per_hour) if rate is not None else GREY),
        _figure(t("oee", lang), fmt_pct(o.oee) if o is not None else "—", "oee", apq),
    ]


def progress_children(st: LineStatus | None, lang: Lang) -> list[Any]:
    """A bar of good against the shift's target, a mark where the target is by now, behind/ahead by N."""
    c = st.counts if st is not None else None
    if c is None or c.shift_target <= 0:
        return [html.Div(t("no_shift", lang, hours="—") if c is None else "", className="standing none")]
    done = min(c.good / c.shift_target, 1.0)
    due = min(c.expected / c.shift_target, 1.0)
    color = rate_color(c.good, c.expected) if c.expected > 0 else GREY
    cls = "ahead" if round(c.difference) > 0 else "behind" if round(c.difference) < 0 else "on"
    return [
        html.Div(className="bar", children=[
            html.Div(className="done", style={"width": f"{done * 100:.2f}%", "background": color}),
            html.Div(className="due", style={"left": f"{due * 100:.2f}%"}),
        ]),
        html.Div(fmt_difference(c.difference, lang), className=f"standing {cls}", style={"color": color}),
    ]


def stale_text(m: MachineStatus, tz: ZoneInfo, lang: Lang) -> str:
    """Why a machine's cell is marked: since when the store has no data from it."""
    if m.last_data is None:
        return t("stale_never", lang)
    return t("stale", lang, time=fmt_time(m.last_data.astimezone(tz)))


def strip_children(st: LineStatus | None, lang: Lang, query: str, tz: ZoneInfo) -> list[Any]:
    """One cell per machine in flow order, in its state's colour; each links to its machine view. A
    machine whose data is older than its ``stale_after_s`` gets a marker: the state shown may be
    out of date (the collector or its link stopped)."""
    if st is None:
        return []
    return [dcc.Link(href=f"/machine/{m.id}{query}", className="cell-link",
                     title=state_name(m.state, lang) + (f" · {stale_text(m, tz, lang)}" if m.stale else ""),
                     children=html.Div(className=f"cell state-{m.state}" + (" stale" if m.stale else ""),
                                       style={"background": ANDON[m.state]},
                                       **attrs(machine=m.id, state=m.state, stale="1" if m.stale else "0"), children=[
                         html.Span(m.name, className="cell-name"),
                         html.Span(m.reason.label or f"#{m.reason.code}" if m.reason is not None
                                   else state_name(m.state, lang), className="cell-state"),
                         *([html.Span("⚠ " + stale_text(m, tz, lang), className="cell-stale")] if m.stale else []),
                     ]))
            for m in st.machines]


def tile(line: LineInfo, st: LineStatus | None, tp: Throughput | None, w: Window, tz: ZoneInfo, lang: Lang,
         single: bool, query: str) -> html.Div:
    lid = line.id
    variant = "single" if single else "board"
    return html.Div(className=tile_class(st, variant), id={"k": "tile", "id": lid, "v": variant},
                    **attrs(line=lid), children=[
        html.Div(className="tile-top", children=[
            dcc.Link(line.name, href=f"/line/{lid}{query}", className="tile-name"),
            html.Div(head_children(st, tz, lang), className="tile-head", id=bid("head", lid)),
        ]),
        html.Div(figs_children(line, st, tp, w, lang), className="figures", id=bid("figs", lid)),
        html.Div(progress_children(st, lang), className="progress", id=bid("prog", lid)),
        html.Div(strip_children(st, lang, query, tz), className="strip", id=bid("strip", lid)),
        dcc.Graph(id=bid("chart", lid), className="chart",
                  figure=tile_figure(tp, line, w, tz, lang, None if single else CHART_HEIGHT),
                  config={"displayModeBar": False, "staticPlot": True},
                  responsive=True if single else "auto", style={"height": "100%"} if single else {}),
    ])


def clock_text(as_of: datetime, replay: bool, tz: ZoneInfo, lang: Lang) -> str:
    return f"{t('replay', lang) if replay else t('updated', lang)} {fmt_datetime(as_of.astimezone(tz), lang)}"
