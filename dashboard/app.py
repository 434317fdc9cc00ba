"""The Dash app: the wall board, the line view, the machine view and the operator page, over HTTP
to the API only.

Pages (URL pathname): ``/`` the wall board (a tile per line), ``/line/<id>`` a line view,
``/machine/<id>`` a machine view, ``/operator/<line>`` the operator page (a tablet at the line:
name stops, book scrap, shift notes; it writes with the operator token, see
:mod:`dashboard.pages.operator`; every other page only reads). URL query, on every page:

- ``?lang=ja|en``: language (default: the plant's locale, from the API);
- ``?as_of=2026-11-27T10:30:00+09:00``: show the page as it was at that instant (replay);
- ``?lines=a,b``: the board's lines, in this order (unknown ids are left out);
- ``?kiosk=1``: wall-screen mode: no pointer, no scroll bars, nothing to click;
- ``?rotate=30``: the board shows one line at a time, enlarged, the next one every 30 s.

A wall screen is set up by its URL alone, e.g. ``/?kiosk=1&lines=blade-1,press-2&lang=ja&rotate=30``.

How it stays steady for days: a page's structure is built once (when the URL or the rotation
turns), then each refresh tick updates its blocks in place and its charts with ``dash.Patch``
(only the data arrays travel). Nothing accumulates in the browser: there is one small store (the
key of the page on screen) and every figure holds one window's points. Each refresh callback
works under a time budget of a third of the interval (a Dash callback slower than its interval
never updates the page); when the API cannot be reached the page keeps its last figures, dims
them and shows a banner.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dash
import flask
from dash import ALL, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import report as report_html
from dashboard.client import (
    ApiClient,
    ApiError,
    ApiResponseError,
    ApiUnavailable,
    ApiUnreachable,
    LineInfo,
    OperatorClient,
    TokenSource,
)
from dashboard.data import AMBER, ANDON, GREEN, GREY, RED, Board, Window, line_state, rate_color
from dashboard.figures import CHART_HEIGHT, patch_figure, tile_figure
from dashboard.i18n import Lang, both, fmt_time, t
from dashboard.pages import board as board_page
from dashboard.pages import line as line_view
from dashboard.pages import machine as machine_view
from dashboard.pages.operator import OperatorPage
from dashboard.view import MIN_ROTATE_S, Page, View, link_query, parse_page, parse_view, pick_lines

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
RELOAD_AFTER_S = 12 * 3600.0
REPORT_TIMEOUT_S = 60.0

__all__ = [
    "AMBER", "ANDON", "CHART_HEIGHT", "GREEN", "GREY", "MIN_ROTATE_S", "RED", "Board", "View", "Window",
    "create_dashboard", "line_state", "parse_view", "pick_lines", "rate_color", "run_dashboard",
]


def _layout(refresh_ms: int) -> html.Div:
    return html.Div(id="board", className="board", children=[
        dcc.Location(id="url", refresh=False),
        dcc.Interval(id="tick", interval=refresh_ms, n_intervals=0),
        dcc.Interval(id="rotate-tick", interval=30_000, n_intervals=0, disabled=True),
        dcc.Store(id="page-key", data=None),
        dcc.Store(id="reload-sink", data=None),
        html.Header(className="header", children=[
            html.Div(id="header-site", className="site"),
            html.Div(id="header-page", className="page-name"),
            html.Div(id="header-shift", className="shift"),
            html.Div(id="header-clock", className="clock"),
        ]),
        html.Div(id="banner", className="banner hidden", role="alert"),
        html.Main(id="page", className="page"),
    ])


def _error_key(e: ApiError) -> str:
    return ("store_unavailable" if isinstance(e, ApiUnavailable) else
            "api_unreachable" if isinstance(e, ApiUnreachable) else "api_error")


def _ids(outputs: Any) -> list[dict[str, str]]:
    """The ids an ALL output matched when the browser sent the request."""
    return [o["id"] for o in outputs] if isinstance(outputs, list) else []


def period_start(refresh_ms: int, now: float | None = None) -> datetime:
    """"Now" as every screen refreshing every ``refresh_ms`` sees it: the start of the current refresh
    period (epoch-aligned). Screens asking within one period then ask the API the same questions,
    which it answers once per period for all of them (the API's --refresh-period, 5 s like the
    board's default refresh)."""
    t = time.time() if now is None else now
    period = max(refresh_ms, 1) / 1000
    return datetime.fromtimestamp(t - t % period, UTC)


def create_dashboard(api_url: str, *, refresh_ms: int = 5000, token: str | None = None,
                     timeout_s: float | None = None, recent_hours: float = 8.0,
                     client: ApiClient | None = None, reload_after_s: float | None = RELOAD_AFTER_S,
                     operator_token: TokenSource | str | None = None) -> dash.Dash:
    """The Dash app reading the API at ``api_url`` (``client`` replaces the HTTP client in tests).

    ``operator_token`` (a token of role ``operator``, or a :class:`TokenSource` re-reading its file)
    lets the operator page write; it is used by a client of its own, server-side only, and never
    for reads. Without it the operator page says how to give one and shows no buttons.

    Each refresh is budgeted at a third of ``refresh_ms`` (requests time out at ``timeout_s``,
    by default that budget capped at 2 s), so the callback always ends well before the next tick.

    A page reloads itself after ``reload_after_s`` (None: never), at a refresh when the API answers
    (never while the banner shows, which would trade the last figures for a blank page): Dash's
    renderer keeps every Interval tick in its undo history, a small but unbounded growth on a
    screen that runs for weeks; a reload (under a second) resets the browser side entirely.
    """
    budget_s = max(refresh_ms / 1000 / 3, 0.3)
    timeout = timeout_s if timeout_s is not None else min(budget_s, 2.0)
    api = client or ApiClient(api_url, timeout_s=timeout, token=token)
    # the printable report is one request for a whole shift, not a refresh under a budget
    report_api = None if client is not None else ApiClient(api_url, timeout_s=REPORT_TIMEOUT_S, token=token)
    board = Board(api, budget_s=budget_s, recent_hours=recent_hours)
    # writes wait for the API's answer longer than a refresh may: a tap must not be lost to a budget
    writer = OperatorClient(api_url, operator_token, timeout_s=10.0) if operator_token is not None else None

    app = dash.Dash(__name__, assets_folder=str(ASSETS), title="mieruka", update_title="",
                    serve_locally=True, suppress_callback_exceptions=True)
    app.layout = _layout(refresh_ms)

    if reload_after_s is not None:
        app.clientside_callback(  # type: ignore[no-untyped-call]
            f"""function(n, banner) {{
                if (n && n * {refresh_ms} >= {reload_after_s * 1000:.0f} && String(banner).includes('hidden')) {{
                    window.location.reload();
                }}
                return window.dash_clientside.no_update;
            }}""",
            Output("reload-sink", "data"), Input("tick", "n_intervals"), State("banner", "className"),
            prevent_initial_call=True)

    def context(search: str | None) -> tuple[View, Lang, ZoneInfo, datetime]:
        view = parse_view(search)
        site = board.site(view.lang)
        return view, view.lang or site.locale, ZoneInfo(site.timezone), view.as_of or period_start(refresh_ms)

    @app.callback(
        Output("board", "className"), Output("rotate-tick", "interval"), Output("rotate-tick", "disabled"),
        Input("url", "search"), Input("url", "pathname"),
    )
    def wall_mode(search: str | None, pathname: str | None) -> tuple[str, int, bool]:
        view = parse_view(search)
        rotating = view.rotate_s is not None and parse_page(pathname).kind == "board"
        page = parse_page(pathname).kind
        cls = " ".join(["board", f"on-{page}", *(["kiosk"] if view.kiosk else []),
                        *(["single"] if rotating else [])])
        return cls, (view.rotate_s or 30) * 1000, not rotating

    operator = OperatorPage(board, writer, context, budget_s)
    operator.register(app)

    @app.callback(
        Output("banner", "children"), Output("banner", "className"), Output("header-site", "children"),
        Output("header-shift", "children"), Output("header-clock", "children"), Output("page", "className"),
        Input("tick", "n_intervals"), Input("url", "search"), Input("url", "pathname"),
    )
    def header(_n: int | None, search: str | None, pathname: str | None) -> tuple[Any, ...]:
        """Site, shift and clock; the banner and the dimmed page when the API cannot be reached."""
        view = parse_view(search)
        lang: Lang | None = view.lang
        try:
            view, lang, tz, as_of = context(search)
            site = board.site(view.lang)
            w = board.window(as_of, lang)
        except ApiError as e:
            log.warning("dashboard refresh failed: %s", e)
            text = f"{t(_error_key(e), lang)} — {t('last_data', lang)}" if lang else both(_error_key(e))
            nu = dash.no_update
            return text, "banner", nu, nu, nu, "page stale"
        if w.shift is not None:
            s = w.shift
            span = f"{fmt_time(s.start.astimezone(tz))}–{fmt_time(s.end.astimezone(tz))}"
            shift_text = f"{t('shift', lang)} {s.label}  {span}"
        else:
            shift_text = t("no_shift", lang, hours=f"{board.recent_hours:g}")
        clock = board_page.clock_text(as_of, view.as_of is not None, tz, lang)
        home = dcc.Link(site.name, href=f"/{link_query(view)}", className="home")
        return "", "banner hidden", home, shift_text, clock, "page"

    @app.callback(
        Output("page", "children"), Output("page-key", "data"), Output("header-page", "children"),
        Input("url", "pathname"), Input("url", "search"), Input("rotate-tick", "n_intervals"),
        Input("tick", "n_intervals"), State("page-key", "data"),
    )
    def render(pathname: str | None, search: str | None, turn: int | None, _n: int | None,
               shown: str | None) -> tuple[Any, ...]:
        """Build the page's structure, with its figures, once per URL (and rotation turn).

        The tick is an input only so that a page the API could not serve yet is retried."""
        view = parse_view(search)
        page = parse_page(pathname)
        rotating = view.rotate_s is not None and page.kind == "board"
        key = f"{pathname}|{search}|{turn if rotating else ''}"
        if key == shown:
            raise PreventUpdate  # on screen already: the refresh callbacks keep it current
        deadline = time.monotonic() + budget_s
        try:
            view, lang, tz, as_of = context(search)
            children, title = build(page, view, lang, tz, as_of, turn or 0, deadline)
        except ApiError as e:
            log.warning("dashboard page %s not built: %s", pathname, e)
            raise PreventUpdate from None
        return children, key, title

    def build(page: Page, view: View, lang: Lang, tz: ZoneInfo, as_of: datetime, turn: int,
              deadline: float) -> tuple[Any, str]:
        query = link_query(view)
        if page.kind == "board":
            lines = pick_lines(board.lines(lang), view.lines)
            single = view.rotate_s is not None
            if single and lines:
                lines = [lines[turn % len(lines)]]  # one line at a time: fetch only that one
            statuses = board.statuses([ln.id for ln in lines], as_of, lang, deadline)
            w = board.window_for(statuses, as_of)
            tps = board.throughputs(lines, w, deadline)
            tiles = [board_page.tile(ln, statuses.get(ln.id), tps.get(ln.id), w, tz, lang, single, query)
                     for ln in lines]
            return html.Div(tiles, id="tiles", className="tiles single" if single else "tiles"), ""
        if page.kind == "line" and page.id is not None:
            found = [ln for ln in board.lines(lang) if ln.id == page.id]
            if not found:
                return html.Div(t("unknown_line", lang, id=page.id), className="note"), ""
            line = found[0]
            st = board.client.status(line.id, as_of=as_of, lang=lang)
            w = board.window_of(st.shift, as_of)
            figs = line_view.line_figures(board, line, w, tz, lang, deadline)
            return line_view.line_page(line, st, figs, w, tz, lang, query), t("line_view", lang)
        if page.kind == "machine" and page.id is not None:
            plant = board.plant(lang)
            hit = plant.machine(page.id)
            if hit is None:
                return html.Div(t("unknown_machine", lang, id=page.id), className="note"), ""
            line_d, m = hit
            st = board.client.status(line_d.id, as_of=as_of, lang=lang)
            w = board.window_of(st.shift, as_of)
            ms = next((x for x in st.machines if x.id == m.id), None)
            head = machine_view.head_children(line_d, m, ms, as_of, tz, lang, query)
            figs = machine_view.machine_figures(board, m, w, tz, lang, deadline)
            return machine_view.machine_page(line_d, m, ms, head, figs, lang), t("machine_view", lang)
        if page.kind == "operator" and page.id is not None:
            return operator.build(page.id, lang, tz, as_of), t("operator_view", lang)
        return html.Div("404", className="note"), ""

    @app.callback(
        Output({"k": "tile", "id": ALL, "v": ALL}, "className"),
        Output({"k": "head", "id": ALL}, "children"),
        Output({"k": "figs", "id": ALL}, "children"),
        Output({"k": "prog", "id": ALL}, "children"),
        Output({"k": "strip", "id": ALL}, "children"),
        Output({"k": "chart", "id": ALL}, "figure"),
        Input("tick", "n_intervals"), State("url", "search"),
        prevent_initial_call=True,
    )
    def tile_values(_n: int | None, search: str | None) -> tuple[list[Any], ...]:
        """The tiles' (and the line view's head) figures, block by block; the chart as a Patch."""
        outs = ctx.outputs_list
        tile_ids, head_ids, figs_ids, prog_ids, strip_ids, chart_ids = (_ids(o) for o in outs)
        wanted = list(dict.fromkeys(i["id"] for ids in (tile_ids, head_ids, figs_ids) for i in ids))
        if not wanted:
            raise PreventUpdate
        deadline = time.monotonic() + budget_s
        try:
            view, lang, tz, as_of = context(search)
            by_id: dict[str, LineInfo] = {ln.id: ln for ln in board.lines(lang)}
            statuses = board.statuses([i for i in wanted if i in by_id], as_of, lang, deadline)
            w = board.window_for(statuses, as_of)
            tps = board.throughputs([by_id[i["id"]] for i in chart_ids if i["id"] in by_id], w, deadline)
        except ApiError as e:
            log.warning("tile refresh failed: %s", e)
            raise PreventUpdate from None
        query = link_query(view)
        single = view.rotate_s is not None

        def line(i: dict[str, str]) -> LineInfo:
            return by_id.get(i["id"]) or LineInfo(i["id"], i["id"], 0.0, ())

        return (
            [board_page.tile_class(statuses.get(i["id"]), i.get("v", "board")) for i in tile_ids],
            [board_page.head_children(statuses.get(i["id"]), tz, lang) for i in head_ids],
            [board_page.figs_children(line(i), statuses.get(i["id"]), tps.get(i["id"]), w, lang) for i in figs_ids],
            [board_page.progress_children(statuses.get(i["id"]), lang) for i in prog_ids],
            [board_page.strip_children(statuses.get(i["id"]), lang, query, tz) for i in strip_ids],
            [patch_figure(tile_figure(tps.get(i["id"]), line(i), w, tz, lang, None if single else CHART_HEIGHT))
             for i in chart_ids],
        )

    @app.callback(
        Output({"k": "lchart", "id": ALL, "c": ALL}, "figure"),
        Input("tick", "n_intervals"), State("url", "search"),
        prevent_initial_call=True,
    )
    def line_charts(_n: int | None, search: str | None) -> list[Any]:
        ids = _ids(ctx.outputs_list)
        if not ids:
            raise PreventUpdate
        deadline = time.monotonic() + budget_s
        try:
            _view, lang, tz, as_of = context(search)
            lines = {ln.id: ln for ln in board.lines(lang)}
            figs: dict[str, dict[str, Any]] = {}
            for lid in dict.fromkeys(i["id"] for i in ids):
                if lid in lines:
                    w = board.window(as_of)
                    for c, fig in line_view.line_figures(board, lines[lid], w, tz, lang, deadline).items():
                        figs[f"{lid}|{c}"] = fig
        except ApiError as e:
            log.warning("line view refresh failed: %s", e)
            raise PreventUpdate from None
        return [patch_figure(figs[f"{i['id']}|{i['c']}"]) if f"{i['id']}|{i['c']}" in figs else dash.no_update
                for i in ids]

    @app.callback(
        Output({"k": "mhead", "id": ALL}, "children"),
        Output({"k": "mchart", "id": ALL, "c": ALL}, "figure"),
        Input("tick", "n_intervals"), State("url", "search"),
        prevent_initial_call=True,
    )
    def machine_values(_n: int | None, search: str | None) -> tuple[list[Any], list[Any]]:
        head_ids, chart_ids = (_ids(o) for o in ctx.outputs_list)
        if not head_ids and not chart_ids:
            raise PreventUpdate
        deadline = time.monotonic() + budget_s
        heads: dict[str, Any] = {}
        figs: dict[str, dict[str, Any]] = {}
        try:
            view, lang, tz, as_of = context(search)
            plant = board.plant(lang)
            for mid in dict.fromkeys(i["id"] for i in [*head_ids, *chart_ids]):
                hit = plant.machine(mid)
                if hit is None:
                    continue
                line_d, m = hit
                st = board.client.status(line_d.id, as_of=as_of, lang=lang)
                w = board.window_of(st.shift, as_of)
                ms = next((x for x in st.machines if x.id == m.id), None)
                heads[mid] = machine_view.head_children(line_d, m, ms, as_of, tz, lang, link_query(view))
                for c, fig in machine_view.machine_figures(board, m, w, tz, lang, deadline).items():
                    figs[f"{mid}|{c}"] = fig
        except ApiError as e:
            log.warning("machine view refresh failed: %s", e)
            raise PreventUpdate from None
        return ([heads.get(i["id"], dash.no_update) for i in head_ids],
                [patch_figure(figs[k]) if (k := f"{i['id']}|{i['c']}") in figs else dash.no_update
                 for i in chart_ids])

    install_report_route(app, report_api or api)
    install_health_route(app)
    return app


def install_health_route(app: dash.Dash) -> None:
    """``/healthz``: 200 ``{"status": "ok"}`` while this process serves, for container and Kubernetes
    probes. It does not ask the API: a dashboard whose API is down still serves its pages (with the
    banner saying so), and restarting it would not bring the API back; the API has its own probe."""

    def healthz() -> flask.Response:
        return flask.Response('{"status": "ok"}', status=200, mimetype="application/json",
                              headers={"Cache-Control": "no-store"})

    app.server.add_url_rule("/healthz", "healthz", healthz)


def install_report_route(app: dash.Dash, api: ApiClient) -> None:
    """``/report/<date>/<shift>``: the printable shift report (:mod:`dashboard.report`), a plain HTML page
    on the Dash app's Flask server (no callbacks: it is made to be printed). ``?lang=ja|en`` (default:
    the site's locale), ``?as_of=`` like every page. The API's 4xx come back with their sentence."""

    def report_page(day: str, shift: str) -> flask.Response:
        args = flask.request.args
        asked = args.get("lang")
        lang: Lang | None = "ja" if asked == "ja" else "en" if asked == "en" else None
        as_of = None
        if args.get("as_of"):
            try:
                as_of = datetime.fromisoformat(args["as_of"].replace(" ", "+"))
            except ValueError:
                return _html(422, report_html.error_page(422, f"as_of '{args['as_of']}' is not an ISO-8601 time",
                                                         lang or "en"))
        try:
            data = api.shift_report(day, shift, lang=lang, as_of=as_of)
        except ApiResponseError as e:
            status = e.status if 400 <= e.status < 500 else 503  # the API's store down, or the API failing
            return _html(status, report_html.error_page(e.status, e.detail, lang or "en"))
        except ApiError as e:
            log.warning("report %s/%s not built: %s", day, shift, e)
            return _html(503, report_html.error_page(503, t(_error_key(e), lang or "en"), lang or "en"))
        page_lang: Lang = lang or ("ja" if data["site"]["locale"] == "ja" else "en")
        return _html(200, report_html.render_report(data, page_lang, datetime.now(UTC)))

    app.server.add_url_rule("/report/<day>/<shift>", "shift_report", report_page)


def _html(status: int, text: str) -> flask.Response:
    return flask.Response(text, status=status, mimetype="text/html", headers={"Cache-Control": "no-store"})


def run_dashboard(api_url: str, host: str = "127.0.0.1", port: int = 8050, *, refresh_ms: int = 5000,
                  token: str | None = None, operator_token: TokenSource | None = None) -> None:
    """Serve the dashboard until interrupted (what ``mieruka dashboard`` calls)."""
    from werkzeug.serving import make_server

    app = create_dashboard(api_url, refresh_ms=refresh_ms, token=token, operator_token=operator_token)
    server = make_server(host, port, app.server, threaded=True)
    log.info("dashboard on http://%s:%d/ reading %s", host, port, api_url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
