"""The operator page (``/operator/<line>``): a tablet at the line, used by touch alone.

It names stops, books scrap found later and keeps the shift's notes, through the API's operator
routes (``PUT /machines/{id}/stops/{start}/reason``, ``POST /machines/{id}/scrap``,
``POST /lines/{id}/notes``) with the dashboard's operator token, which stays on the server: the
browser only sends taps to the Dash callbacks. Without an operator token the page says how to
start the dashboard with one and shows no buttons.

Every target is at least 48 px (most are far bigger), nothing depends on hover, and the only
keyboard is the tablet's own for the note's text area: quantities come from an on-screen pad.
Selections live in the page's ``dcc.Store``s; the lists refresh with the dashboard's refresh
period and at once after a write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import dash
from dash import ALL, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from dashboard.client import (
    ApiError,
    ApiResponseError,
    LineDetail,
    Note,
    OperatorClient,
    ReasonInfo,
    StopPart,
)
from dashboard.data import ON_COLOR, Board, category_color
from dashboard.i18n import Lang, fmt_duration, fmt_time, state_name, t
from dashboard.pages.board import attrs

log = logging.getLogger(__name__)

MAX_STOPS = 8  # open stops first, then the most recent unnamed ones: a tablet screen's worth
KEYS = ("7", "8", "9", "4", "5", "6", "1", "2", "3", "C", "0", "BS")
MAX_QTY_DIGITS = 6
NOTE_MAX = 2000

PAD_JS = f"""function(machineClicks, keyClicks, reasonClicks, data) {{
    const cc = window.dash_clientside.callback_context;
    const nu = window.dash_clientside.no_update;
    const fired = cc.triggered.filter(x => x.value);
    if (!fired.length) {{ return [nu, nu, nu, nu]; }}
    const id = JSON.parse(fired[0].prop_id.slice(0, fired[0].prop_id.lastIndexOf('.')));
    const s = Object.assign({{machine: null, qty: '', reason: null}}, data || {{}});
    s.qty = String(s.qty || '');
    if (id.k === 'opmachine') {{ s.machine = id.id; }}
    else if (id.k === 'opsreason') {{ s.reason = (s.reason === id.code) ? null : id.code; }}
    else if (id.k === 'opkey') {{
        if (id.key === 'C') {{ s.qty = ''; }}
        else if (id.key === 'BS') {{ s.qty = s.qty.slice(0, -1); }}
        else if (s.qty.length < {MAX_QTY_DIGITS}) {{ s.qty = (s.qty + id.key).replace(/^0+/, ''); }}
    }}
    const machines = cc.inputs_list[0].map(x => 'op-machine' + (x.id.id === s.machine ? ' selected' : ''));
    const reasons = cc.inputs_list[2].map(x => 'op-reason' + (x.id.code === s.reason ? ' selected' : ''));
    return [s, s.qty || '0', machines, reasons];
}}"""

Context = Callable[[str | None], tuple[Any, Lang, ZoneInfo, datetime]]


def stop_key(s: StopPart) -> str:
    return f"{s.machine}|{s.start}"


def stops_to_show(stops: tuple[StopPart, ...]) -> list[StopPart]:
    """The open stops (the line stands because of them), then the shift's stops nobody has named
    yet, most recent first; at most :data:`MAX_STOPS`. Stretches with no data (``offline``) are
    left out: they say the link is down, not that the machine stopped, and nobody at the line can
    name them."""
    stops = tuple(s for s in stops if s.state != "offline")
    open_ = [s for s in stops if s.open]
    unnamed = sorted((s for s in stops if not s.open and s.reason is None), key=lambda s: s.started, reverse=True)
    return (open_ + unnamed)[:MAX_STOPS]


def default_selection(shown: list[StopPart], selected: str | None) -> str | None:
    """Keep the operator's pick while it is listed; otherwise the open stop (or the latest one)."""
    keys = [stop_key(s) for s in shown]
    if selected in keys:
        return selected
    return keys[0] if keys else None


def stop_buttons(shown: list[StopPart], selected: str | None, names: dict[str, str], now: datetime, tz: ZoneInfo,
                 lang: Lang) -> list[Any]:
    if not shown:
        return [html.Div(t("no_stops", lang), className="op-empty")]
    out: list[Any] = []
    for s in shown:
        key = stop_key(s)
        seconds = (now - s.started).total_seconds() if s.open else s.seconds
        color = category_color(s.category) if s.reason is not None else None
        out.append(html.Button(
            id={"k": "opstop", "key": key}, n_clicks=0,
            className="op-stop" + (" selected" if key == selected else "") + (" open" if s.open else ""),
            **attrs(machine=s.machine, start=s.start, reason="" if s.reason is None else str(s.reason),
                    selected="1" if key == selected else "0"),
            children=[
                html.Span(names.get(s.machine, s.machine), className="op-stop-machine"),
                html.Span(t("since", lang, time=fmt_time(s.started.astimezone(tz))), className="op-stop-since"),
                html.Span(fmt_duration(seconds, lang), className="op-stop-duration"),
                html.Span(s.label if s.reason is not None else state_name(s.state, lang), className="op-stop-reason",
                          style={"background": color, "color": ON_COLOR} if color else {}),
                *([html.Span(t("open_stop", lang), className="op-stop-open")] if s.open else []),
            ]))
    return out


def notes_children(notes: tuple[Note, ...], tz: ZoneInfo, lang: Lang) -> list[Any]:
    if not notes:
        return [html.Div(t("no_notes", lang), className="op-empty")]
    return [html.Div(className="op-note", children=[
        html.Span(fmt_time(n.time.astimezone(tz)), className="op-note-time"),
        html.Span(n.author, className="op-note-author"),
        html.Div(n.text, className="op-note-text"),
    ]) for n in sorted(notes, key=lambda n: n.time, reverse=True)]


def reason_button(r: ReasonInfo, kind: str, selected: bool = False) -> html.Button:
    return html.Button(
        r.name, id={"k": kind, "code": r.code}, n_clicks=0, className="op-reason" + (" selected" if selected else ""),
        style={"background": category_color(r.category), "color": ON_COLOR},
        **attrs(code=str(r.code), category=r.category))


def result(text: str, ok: bool) -> tuple[str, str]:
    return text, "op-result ok" if ok else "op-result error"


def error_text(e: ApiError, lang: Lang) -> str:
    """The API's own ``detail`` for a refused write (it names the problem), else what went wrong."""
    if isinstance(e, ApiResponseError):
        return f"{t('refused', lang)} ({e.status}): {e.detail}"
    return f"{t('api_unreachable', lang)}: {e}"


def qty_text(qty: str) -> str:
    return qty if qty else "0"


def scrap_state(data: Any) -> dict[str, Any]:
    d = data if isinstance(data, dict) else {}
    return {"machine": d.get("machine"), "qty": str(d.get("qty") or ""), "reason": d.get("reason")}


def operator_page(line: LineDetail, catalogue: tuple[ReasonInfo, ...], can_write: bool, stops: list[Any],
                  notes: list[Any], selected: str | None, lang: Lang) -> html.Div:
    """The page's structure; the stop list and the notes are refreshed in place by the callbacks."""
    lid = line.id
    if not can_write:
        return html.Div(className="op-page", id="op-page", **attrs(line=lid), children=[
            html.H1(line.name, className="op-title"),
            html.Div(t("no_operator_token", lang), className="op-no-token", id="op-no-token", role="alert"),
        ])
    machines = [m for m in line.machines]
    first = machines[-1].id if machines else None  # the line's end, where found scrap is usually booked
    return html.Div(className="op-page", id="op-page", **attrs(line=lid), children=[
        dcc.Store(id="op-selected", data=selected),
        dcc.Store(id="op-written", data=0),
        dcc.Store(id="op-scrap", data={"machine": first, "qty": "", "reason": None}),
        html.H1(line.name, className="op-title"),
        html.Section(className="op-section op-stops-section", children=[
            html.H2(t("stops_to_name", lang)),
            html.Div(stops, id="op-stops", className="op-stops"),
            html.H2(t("reason_for", lang)),
            html.Div([reason_button(r, "opreason") for r in catalogue], className="op-reasons", id="op-reasons"),
            html.Div("", id="op-result", className="op-result", role="status"),
        ]),
        html.Section(className="op-section op-scrap-section", children=[
            html.H2(t("scrap_entry", lang)),
            html.Div([html.Button(m.name, id={"k": "opmachine", "id": m.id}, n_clicks=0,
                                  className="op-machine" + (" selected" if m.id == first else ""),
                                  **attrs(machine=m.id)) for m in machines], className="op-machines"),
            html.Div(className="op-qty-row", children=[
                html.Span(t("quantity", lang), className="op-qty-label"),
                html.Span("0", id="op-qty", className="op-qty"),
            ]),
            html.Div([html.Button("⌫" if k == "BS" else t("clear", lang) if k == "C" else k,
                                  id={"k": "opkey", "key": k}, n_clicks=0, className=f"op-key key-{k}",
                                  **attrs(key=k)) for k in KEYS], className="op-pad"),
            html.H3(t("scrap_reason", lang)),
            html.Div([reason_button(r, "opsreason") for r in catalogue], className="op-reasons op-scrap-reasons"),
            html.Button(t("book", lang), id="op-book", n_clicks=0, className="op-action"),
            html.Div("", id="op-scrap-result", className="op-result", role="status"),
        ]),
        html.Section(className="op-section op-notes-section", children=[
            html.H2(t("shift_notes", lang)),
            html.Div(notes, id="op-notes", className="op-notes"),
            dcc.Textarea(id="op-note-text", className="op-note-input", maxLength=NOTE_MAX, value=""),
            html.Button(t("save", lang), id="op-note-save", n_clicks=0, className="op-action"),
            html.Div("", id="op-note-result", className="op-result", role="status"),
        ]),
    ])


def _clicked() -> bool:
    """A real tap: the triggering n_clicks is positive (a list re-rendered sends 0 or None)."""
    return any(bool(x.get("value")) for x in ctx.triggered) if ctx.triggered else False


class OperatorPage:
    """The operator page's data and callbacks, for one Dash app."""

    def __init__(self, board: Board, operator: OperatorClient | None, context: Context, budget_s: float) -> None:
        self.board = board
        self.operator = operator
        self.context = context
        self.budget_s = budget_s

    def line(self, line_id: str, lang: Lang) -> LineDetail | None:
        return next((ln for ln in self.board.plant(lang).lines if ln.id == line_id), None)

    def stop_list(self, line: LineDetail, as_of: datetime, selected: str | None, tz: ZoneInfo,
                  lang: Lang) -> tuple[list[Any], str | None]:
        w = self.board.window(as_of)
        stops = self.board.client.stops(line.id, start=w.start, end=w.end, lang=lang) if w.end > w.start else ()
        shown = stops_to_show(stops)
        sel = default_selection(shown, selected)
        names = {m.id: m.name for m in line.machines}
        return stop_buttons(shown, sel, names, datetime.now(UTC), tz, lang), sel

    def note_list(self, line: LineDetail, as_of: datetime, tz: ZoneInfo, lang: Lang) -> list[Any]:
        w = self.board.window(as_of)
        notes = self.board.client.notes(line.id, start=w.start, end=w.end) if w.end > w.start else ()
        return notes_children(notes, tz, lang)

    def build(self, line_id: str, lang: Lang, tz: ZoneInfo, as_of: datetime) -> Any:
        line = self.line(line_id, lang)
        if line is None:
            return html.Div(t("unknown_line", lang, id=line_id), className="note")
        catalogue = self.board.plant(lang).catalogue
        if self.operator is None:
            return operator_page(line, catalogue, False, [], [], None, lang)
        stops, sel = self.stop_list(line, as_of, None, tz, lang)
        return operator_page(line, catalogue, True, stops, self.note_list(line, as_of, tz, lang), sel, lang)

    def page_line(self, pathname: str | None) -> str:
        parts = [p for p in (pathname or "").split("/") if p]
        if len(parts) != 2 or parts[0] != "operator":
            raise PreventUpdate
        return parts[1]

    def register(self, app: dash.Dash) -> None:
        @app.callback(
            Output("op-stops", "children"), Output("op-selected", "data"),
            Input("tick", "n_intervals"), Input({"k": "opstop", "key": ALL}, "n_clicks"),
            Input("op-written", "data"),
            State("op-selected", "data"), State("url", "search"), State("url", "pathname"),
            prevent_initial_call=True,
        )
        def stops(_n: int | None, _clicks: list[int | None], _w: int | None, selected: str | None,
                  search: str | None, pathname: str | None) -> tuple[Any, Any]:
            lid = self.page_line(pathname)
            trig = ctx.triggered_id
            if isinstance(trig, dict) and trig.get("k") == "opstop":
                if not _clicked():
                    raise PreventUpdate
                selected = str(trig["key"])
            try:
                _view, lang, tz, as_of = self.context(search)
                line = self.line(lid, lang)
                if line is None:
                    raise PreventUpdate
                return self.stop_list(line, as_of, selected, tz, lang)
            except ApiError as e:
                log.warning("operator stops refresh failed: %s", e)
                raise PreventUpdate from None

        @app.callback(
            Output("op-notes", "children"),
            Input("tick", "n_intervals"), Input("op-written", "data"),
            State("url", "search"), State("url", "pathname"),
            prevent_initial_call=True,
        )
        def notes(_n: int | None, _w: int | None, search: str | None, pathname: str | None) -> Any:
            lid = self.page_line(pathname)
            try:
                _view, lang, tz, as_of = self.context(search)
                line = self.line(lid, lang)
                if line is None:
                    raise PreventUpdate
                return self.note_list(line, as_of, tz, lang)
            except ApiError as e:
                log.warning("operator notes refresh failed: %s", e)
                raise PreventUpdate from None

        @app.callback(
            Output("op-result", "children"), Output("op-result", "className"),
            Output("op-written", "data", allow_duplicate=True),
            Input({"k": "opreason", "code": ALL}, "n_clicks"),
            State("op-selected", "data"), State("op-written", "data"), State("url", "search"),
            State("url", "pathname"),
            prevent_initial_call=True,
        )
        def name_stop(_clicks: list[int | None], selected: str | None, written: int | None, search: str | None,
                      pathname: str | None) -> tuple[Any, ...]:
            lid = self.page_line(pathname)
            trig = ctx.triggered_id
            if not isinstance(trig, dict) or not _clicked() or self.operator is None:
                raise PreventUpdate
            _view, lang, tz, _as_of = self.context(search)
            if not selected or "|" not in selected:
                return (*result(t("select_stop_first", lang), False), dash.no_update)
            machine, start = selected.split("|", 1)
            code = int(trig["code"])
            try:
                self.operator.name_stop(machine, start, code)
            except ApiError as e:
                log.info("naming the stop of %s at %s refused: %s", machine, start, e)
                return (*result(error_text(e, lang), False), dash.no_update)
            line = self.line(lid, lang)
            names = {m.id: m.name for m in line.machines} if line is not None else {}
            reason = next((r.name for r in self.board.plant(lang).catalogue if r.code == code), f"#{code}")
            text = t("named", lang, machine=names.get(machine, machine),
                     time=fmt_time(datetime.fromisoformat(start).astimezone(tz)), reason=reason)
            return (*result(text, True), (written or 0) + 1)

        # the pad, the machine and the reason chips run in the browser: taps as fast as fingers go
        # never lose a digit to a round trip (each tap sees the state the last one left)
        app.clientside_callback(  # type: ignore[no-untyped-call]
            PAD_JS,
            Output("op-scrap", "data"), Output("op-qty", "children"),
            Output({"k": "opmachine", "id": ALL}, "className"), Output({"k": "opsreason", "code": ALL}, "className"),
            Input({"k": "opmachine", "id": ALL}, "n_clicks"), Input({"k": "opkey", "key": ALL}, "n_clicks"),
            Input({"k": "opsreason", "code": ALL}, "n_clicks"),
            State("op-scrap", "data"),
            prevent_initial_call=True,
        )

        @app.callback(
            Output("op-scrap", "data", allow_duplicate=True), Output("op-qty", "children", allow_duplicate=True),
            Output({"k": "opsreason", "code": ALL}, "className", allow_duplicate=True),
            Output("op-scrap-result", "children"), Output("op-scrap-result", "className"),
            Output("op-written", "data", allow_duplicate=True),
            Input("op-book", "n_clicks"),
            State("op-scrap", "data"), State("op-written", "data"), State("url", "search"),
            prevent_initial_call=True,
        )
        def book(n: int | None, data: Any, written: int | None, search: str | None) -> tuple[Any, ...]:
            if not n or self.operator is None:
                raise PreventUpdate
            _view, lang, _tz, _as_of = self.context(search)
            s = scrap_state(data)
            qty = int(s["qty"] or 0)
            nu = dash.no_update
            reasons = [nu for _ in ctx.outputs_list[2]]
            if not s["machine"]:
                return (nu, nu, reasons, *result(t("select_machine", lang), False), nu)
            if qty <= 0:
                return (nu, nu, reasons, *result(t("enter_quantity", lang), False), nu)
            try:
                self.operator.book_scrap(str(s["machine"]), datetime.now(UTC), qty, s["reason"])
            except ApiError as e:
                log.info("booking scrap on %s refused: %s", s["machine"], e)
                return (nu, nu, reasons, *result(error_text(e, lang), False), nu)
            name = next((m.name for ln in self.board.plant(lang).lines for m in ln.machines
                         if m.id == s["machine"]), str(s["machine"]))
            s["qty"], s["reason"] = "", None
            return (s, qty_text(""), ["op-reason" for _ in ctx.outputs_list[2]],
                    *result(t("booked", lang, machine=name, n=f"{qty:,}"), True), (written or 0) + 1)

        @app.callback(
            Output("op-note-result", "children"), Output("op-note-result", "className"),
            Output("op-note-text", "value"), Output("op-written", "data", allow_duplicate=True),
            Input("op-note-save", "n_clicks"),
            State("op-note-text", "value"), State("op-written", "data"), State("url", "search"),
            State("url", "pathname"),
            prevent_initial_call=True,
        )
        def save_note(n: int | None, text: str | None, written: int | None, search: str | None,
                      pathname: str | None) -> tuple[Any, ...]:
            lid = self.page_line(pathname)
            if not n or self.operator is None:
                raise PreventUpdate
            _view, lang, _tz, _as_of = self.context(search)
            body = (text or "").strip()
            if not body:
                return (*result(t("note_empty", lang), False), dash.no_update, dash.no_update)
            try:
                self.operator.add_note(lid, body)
            except ApiError as e:
                log.info("saving a note on %s refused: %s", lid, e)
                return (*result(error_text(e, lang), False), dash.no_update, dash.no_update)
            return (*result(t("note_saved", lang), True), "", (written or 0) + 1)

