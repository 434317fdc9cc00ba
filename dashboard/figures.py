"""Plotly figures of the pages, as plain dicts, and the partial updates (``dash.Patch``) that refresh them.

Each builder gives a figure whose traces are fixed for a page (same count, same order, whatever
the data), so a refresh can send only the changed arrays: :func:`patch_figure` turns a freshly
built figure into a ``Patch`` of its data arrays and axes, and the browser keeps everything else.
Arrays are bounded by the window (a shift or a few hours), so figures never grow with uptime.

Plotly.js knows no time zones: times are given as wall-clock strings in the plant's zone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from dash import Patch

from dashboard.client import (
    STATES,
    Downtime,
    Gauge,
    LineInfo,
    Oee,
    States,
    Throughput,
)
from dashboard.data import AMBER, ANDON, GREY, Window, rate_color
from dashboard.i18n import Lang, state_name, t

CHART_HEIGHT = 280  # px; a single-line view's chart fills the rest of the screen instead
FG, GRID, AXIS = "#e8eaed", "#2a2f38", "#3a404a"
TARGET = "#ffd54a"
TRACE_KEYS = ("x", "y", "base", "text", "marker", "customdata", "hovertext", "name", "width")
LAYOUT_KEYS = ("xaxis", "yaxis", "yaxis2", "shapes", "annotations", "title")
PARETO_ROWS = 10


def local(d: datetime, tz: ZoneInfo) -> str:
    return d.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def base_layout(font: int = 18, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
        "font": {"size": font, "color": FG}, "margin": {"l": 70, "r": 20, "t": 56, "b": 50},
        "showlegend": False, "autosize": True,
        "xaxis": {"linecolor": AXIS, "gridcolor": GRID}, "yaxis": {"gridcolor": GRID, "zerolinecolor": AXIS},
        "legend": {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
        "uirevision": "keep",  # a refresh keeps zoom and hidden traces
    }
    layout.update(extra)
    return layout


def titled(text: str) -> dict[str, Any]:
    return {"text": text, "x": 0.01, "xanchor": "left", "font": {"size": 22}}


def patch_figure(fig: dict[str, Any]) -> Patch:
    """A Patch that sets ``fig``'s data arrays and axes on a figure with the same traces."""
    p = Patch()
    for i, trace in enumerate(fig["data"]):
        for key in TRACE_KEYS:
            if key in trace:
                p["data"][i][key] = trace[key]
    for key in LAYOUT_KEYS:
        if key in fig["layout"]:
            p["layout"][key] = fig["layout"][key]
    return p


# ---- the wall board's tile chart -------------------------------------------------------------------


def hour_slots(w: Window) -> list[datetime]:
    """Hour starts (UTC-aligned, like the API's 1h buckets) to show: the whole shift, or the window."""
    a, b = (w.shift.start, w.shift.end) if w.shift is not None else (w.start, w.end)
    t0 = a.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    out: list[datetime] = []
    while t0 < b and len(out) < 48:
        out.append(t0)
        t0 += timedelta(hours=1)
    return out


def tile_figure(tp: Throughput | None, line: LineInfo, w: Window, tz: ZoneInfo, lang: Lang,
                height: int | None = CHART_HEIGHT) -> dict[str, Any]:
    """Hourly bars over the whole shift (hours to come stay empty), target as a dashed line."""
    by_start = {p.start.astimezone(UTC): p for p in tp.points} if tp is not None else {}
    xs: list[str] = []
    ys: list[int | None] = []
    colors: list[str] = []
    for slot in hour_slots(w):
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
                       "y1": line.target_per_hour, "line": {"color": TARGET, "width": 3, "dash": "dash"}})
    layout = base_layout(20, margin={"l": 70, "r": 16, "t": 16, "b": 50}, bargap=0.15, shapes=shapes,
                         xaxis={"type": "category", "categoryorder": "array", "categoryarray": xs,
                                "linecolor": AXIS},
                         yaxis={"gridcolor": GRID, "range": [0, top * 1.2], "zerolinecolor": AXIS})
    if height is not None:
        layout["height"] = height
        layout["autosize"] = False
    else:  # sized by its container
        layout["font"]["size"] = 28
    return {
        "data": [{"type": "bar", "x": xs, "y": ys, "marker": {"color": colors}, "name": t("good", lang),
                  "text": [f"{y:,}" if y else "" for y in ys], "textposition": "outside",
                  "cliponaxis": False, "hoverinfo": "skip"}],
        "layout": layout,
    }


# ---- line view -------------------------------------------------------------------------------------


def throughput_figure(tp: Throughput | None, line: LineInfo, tz: ZoneInfo, lang: Lang) -> dict[str, Any]:
    """Good per bucket, coloured against each bucket's target (breaks excluded), target as steps."""
    pts = tp.points if tp is not None else ()
    xs = [local(p.start, tz) for p in pts]
    good = [p.good for p in pts]
    targets = [p.target if p.target is not None else 0.0 for p in pts]
    colors = [rate_color(g, tg) if tg > 0 else GREY for g, tg in zip(good, targets, strict=True)]
    bucket = tp.bucket if tp is not None else "15m"
    label = t("bucket_15m", lang) if bucket == "15m" else t("hour_bucket", lang) if bucket == "1h" else bucket
    return {
        "data": [
            {"type": "bar", "x": xs, "y": good, "marker": {"color": colors}, "name": t("good", lang),
             "hovertemplate": "%{x|%H:%M}  %{y}<extra></extra>", "xperiod": (tp.bucket_s if tp else 900) * 1000,
             "xperiodalignment": "start"},
            {"type": "scatter", "mode": "lines", "x": xs, "y": [round(x, 2) for x in targets],
             "line": {"color": TARGET, "width": 3, "shape": "hv", "dash": "dash"}, "name": t("target_line", lang),
             "hovertemplate": "%{x|%H:%M}  %{y:.1f}<extra></extra>"},
        ],
        "layout": base_layout(title=titled(t("throughput_per", lang, bucket=label)), bargap=0.1, showlegend=True,
                              xaxis={"type": "date", "tickformat": "%H:%M", "linecolor": AXIS, "gridcolor": GRID},
                              yaxis={"gridcolor": GRID, "zerolinecolor": AXIS,
                                     "title": {"text": t("pieces", lang)}}),
    }


def cumulative_figure(tp: Throughput | None, plan: Throughput | None, w: Window, tz: ZoneInfo,
                      lang: Lang) -> dict[str, Any]:
    """Cumulative good up to now against the plan across the whole shift (both from the API)."""
    xs_a: list[str] = [local(w.start, tz)]
    ys_a: list[float] = [0]
    for p in tp.points if tp is not None else ():
        xs_a.append(local(min(p.end, w.end), tz))
        ys_a.append(p.cumulative_good if p.cumulative_good is not None else 0)
    source = plan if plan is not None else tp
    plan_pts = source.points if source is not None else ()
    xs_p = [local(w.shift.start if w.shift else w.start, tz)] + [local(p.end, tz) for p in plan_pts]
    ys_p = [0.0] + [round(p.cumulative_target or 0.0, 2) for p in plan_pts]
    return {
        "data": [
            {"type": "scatter", "mode": "lines", "x": xs_p, "y": ys_p, "name": t("plan", lang),
             "line": {"color": TARGET, "width": 3, "dash": "dash"}},
            {"type": "scatter", "mode": "lines+markers", "x": xs_a, "y": ys_a, "name": t("actual", lang),
             "line": {"color": "#4fc3f7", "width": 4}, "marker": {"size": 6}},
        ],
        "layout": base_layout(title=titled(t("cumulative", lang)), showlegend=True,
                              xaxis={"type": "date", "tickformat": "%H:%M", "linecolor": AXIS, "gridcolor": GRID},
                              yaxis={"gridcolor": GRID, "zerolinecolor": AXIS, "rangemode": "tozero",
                                     "title": {"text": t("pieces", lang)}}),
    }


def gantt_figure(rows: list[tuple[str, States | None]], w: Window, tz: ZoneInfo, lang: Lang,
                 title: bool = True) -> dict[str, Any]:
    """One row per machine, one bar trace per canonical state (always all six, so refreshes can patch)."""
    names = [name for name, _ in rows]
    data: list[dict[str, Any]] = []
    for state in STATES:
        ys: list[str] = []
        base: list[str] = []
        dur: list[float] = []
        hover: list[str] = []
        for name, st in rows:
            for x in st.timeline if st is not None else ():
                if x.state != state:
                    continue
                ys.append(name)
                base.append(local(x.start, tz))
                dur.append(round((x.end - x.start).total_seconds() * 1000))
                hover.append(f"{x.label}  {x.start.astimezone(tz):%H:%M:%S}–{x.end.astimezone(tz):%H:%M:%S}")
        data.append({"type": "bar", "orientation": "h", "y": ys, "x": dur, "base": base,
                     "name": state_name(state, lang), "marker": {"color": ANDON[state]}, "hovertext": hover,
                     "hoverinfo": "text", "width": 0.7})
    span = (w.shift.start, w.shift.end) if w.shift is not None else (w.start, w.end)
    layout = base_layout(
        barmode="overlay", showlegend=True, margin={"l": 200, "r": 20, "t": 56 if title else 10, "b": 40},
        xaxis={"type": "date", "tickformat": "%H:%M", "linecolor": AXIS, "gridcolor": GRID,
               "range": [local(span[0], tz), local(span[1], tz)]},
        yaxis={"type": "category", "categoryorder": "array", "categoryarray": list(reversed(names)),
               "autorange": True, "gridcolor": GRID})
    if title:
        layout["title"] = titled(t("state_timeline", lang))
    return {"data": data, "layout": layout}


def pareto_figure(dt: Downtime | None, lang: Lang) -> dict[str, Any]:
    """Downtime minutes by reason, longest first, with the cumulative share (of all rows) on the right."""
    rows = dt.pareto[:PARETO_ROWS] if dt is not None else ()
    xs = [r.label for r in rows]
    minutes = [round(r.seconds / 60, 1) for r in rows]
    cum = [round(r.cumulative_share * 100, 1) for r in rows]
    colors = [ANDON.get(r.state, GREY) for r in rows]
    annotations = [] if rows else [{"text": t("no_downtime", lang), "showarrow": False, "xref": "paper",
                                    "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 28, "color": GREY}}]
    return {
        "data": [
            {"type": "bar", "x": xs, "y": minutes, "marker": {"color": colors}, "name": t("minutes", lang),
             "customdata": [r.count for r in rows],
             "hovertemplate": "%{x}: %{y} " + t("minutes", lang) + " (%{customdata})<extra></extra>"},
            {"type": "scatter", "mode": "lines+markers", "x": xs, "y": cum, "yaxis": "y2",
             "name": t("cumulative_share", lang), "line": {"color": FG, "width": 2}, "marker": {"size": 8}},
        ],
        "layout": base_layout(title=titled(t("downtime_pareto", lang)), annotations=annotations,
                              margin={"l": 70, "r": 70, "t": 56, "b": 90},
                              xaxis={"type": "category", "linecolor": AXIS, "tickangle": -20},
                              yaxis={"gridcolor": GRID, "zerolinecolor": AXIS, "title": {"text": t("minutes", lang)}},
                              yaxis2={"overlaying": "y", "side": "right", "range": [0, 105], "ticksuffix": "%",
                                      "showgrid": False}),
    }


def oee_figure(o: Oee | None, tz: ZoneInfo, lang: Lang) -> dict[str, Any]:
    """OEE per hour as bars, availability / performance / quality as lines; no data stays empty."""
    pts = o.points if o is not None else ()
    xs = [local(p.start, tz) for p in pts]

    def pct(v: float | None) -> float | None:
        return None if v is None else round(v * 100, 1)

    oee = [pct(p.ratios.oee) for p in pts]
    data: list[dict[str, Any]] = [
        {"type": "bar", "x": xs, "y": oee, "name": t("oee", lang), "marker": {"color": "#4fc3f7"},
         "text": [f"{v:.0f}%" if v is not None else "" for v in oee], "textposition": "inside",
         "xperiod": 3600000, "xperiodalignment": "start"}]
    for key, color in (("availability", ANDON["running"]), ("performance", AMBER), ("quality", "#ce93d8")):
        data.append({"type": "scatter", "mode": "lines+markers", "x": xs,
                     "y": [pct(getattr(p.ratios, key)) for p in pts], "name": t(key, lang),
                     "line": {"color": color, "width": 3}, "xperiod": 3600000, "xperiodalignment": "middle"})
    return {
        "data": data,
        "layout": base_layout(title=titled(t("oee_by_hour", lang)), showlegend=True, bargap=0.2,
                              xaxis={"type": "date", "tickformat": "%H:%M", "linecolor": AXIS, "gridcolor": GRID},
                              yaxis={"gridcolor": GRID, "range": [0, 105], "ticksuffix": "%"}),
    }


# ---- machine view ----------------------------------------------------------------------------------


def gauge_figure(g: Gauge | None, title: str, unit: str | None, w: Window, tz: ZoneInfo,
                 lang: Lang) -> dict[str, Any]:
    """Mean per bucket with its min–max band over the shift (aligned with the state timeline); the unit
    on the axis."""
    span = (w.shift.start, w.shift.end) if w.shift is not None else (w.start, w.end)
    pts = g.points if g is not None else ()
    xs = [local(p.start, tz) for p in pts]
    unit_text = f" ({unit})" if unit else ""
    return {
        "data": [
            {"type": "scatter", "mode": "lines", "x": xs, "y": [p.max for p in pts], "name": "max",
             "line": {"width": 0, "color": "#4fc3f7"}, "hoverinfo": "skip", "connectgaps": False},
            {"type": "scatter", "mode": "lines", "x": xs, "y": [p.min for p in pts], "name": t("min_max", lang),
             "fill": "tonexty", "fillcolor": "rgba(79,195,247,0.25)", "line": {"width": 0, "color": "#4fc3f7"},
             "hoverinfo": "skip", "connectgaps": False},
            {"type": "scatter", "mode": "lines", "x": xs,
             "y": [None if p.mean is None else round(p.mean, 3) for p in pts], "name": t("mean", lang),
             "line": {"color": "#4fc3f7", "width": 3}, "connectgaps": False,
             "hovertemplate": "%{x|%H:%M}  %{y:.2f}" + (f" {unit}" if unit else "") + "<extra></extra>"},
        ],
        "layout": base_layout(title=titled(t("gauge_history", lang, name=title) + unit_text),
                              xaxis={"type": "date", "tickformat": "%H:%M", "linecolor": AXIS, "gridcolor": GRID,
                                     "range": [local(span[0], tz), local(span[1], tz)]},
                              yaxis={"gridcolor": GRID, "zerolinecolor": AXIS, "title": {"text": unit or ""}}),
    }
