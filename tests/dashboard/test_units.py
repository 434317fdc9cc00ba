"""Pure parts of the dashboard: the line's andon state, formats in both languages, routes, partial updates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dash import Patch

from dashboard.client import MachineStatus, Reason, State
from dashboard.data import line_state
from dashboard.figures import patch_figure
from dashboard.i18n import fmt_datetime, fmt_difference, fmt_duration, fmt_pct
from dashboard.view import Page, parse_page

T0 = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)


def ms(mid: str, state: State, minutes_ago: int, reason: Reason | None = None) -> MachineStatus:
    return MachineStatus(mid, mid.upper(), state, reason, T0 - timedelta(minutes=minutes_ago), T0)


def test_the_worst_station_sets_the_line_state() -> None:
    fault = Reason(20, "Spindle fault", "breakdown")
    assert line_state((ms("a", "running", 5), ms("b", "down", 2, fault), ms("c", "changeover", 9))) == (
        "down", ms("b", "down", 2, fault))
    assert line_state((ms("a", "running", 5), ms("c", "changeover", 9)))[0] == "changeover"
    # planned or offline only when every machine is; else running wins over idle, the longest one tells since
    assert line_state((ms("a", "planned", 5), ms("b", "running", 3)))[0] == "running"
    assert line_state((ms("a", "planned", 5), ms("b", "planned", 30))) == ("planned", ms("b", "planned", 30))
    assert line_state((ms("a", "idle", 5), ms("b", "offline", 3)))[0] == "idle"
    assert line_state((ms("a", "running", 5), ms("b", "running", 30)))[1] == ms("b", "running", 30)
    assert line_state(()) == ("offline", None)


def test_formats_in_both_languages() -> None:
    assert (fmt_duration(1010, "en"), fmt_duration(1010, "ja")) == ("16m 50s", "16分50秒")
    assert (fmt_duration(7500, "en"), fmt_duration(7500, "ja")) == ("2h 05m", "2時間05分")
    assert (fmt_difference(-40.6, "en"), fmt_difference(-40.6, "ja")) == ("behind by 41", "41 個 遅れ")
    assert (fmt_difference(1234.4, "en"), fmt_difference(0.3, "ja")) == ("ahead by 1,234", "計画どおり")
    assert (fmt_pct(0.7801), fmt_pct(None)) == ("78.0%", "—")  # no data is never 100 %
    local = datetime(2026, 11, 27, 10, 30, 5)
    assert fmt_datetime(local, "ja") == "2026年11月27日(金) 10:30:05"
    assert fmt_datetime(local, "en") == "Fri 27 Nov 2026 10:30:05"


def test_routes() -> None:
    assert parse_page("/") == Page("board") and parse_page(None) == Page("board")
    assert parse_page("/line/blade-1") == Page("line", "blade-1")
    assert parse_page("/machine/cnc-1/") == Page("machine", "cnc-1")
    assert parse_page("/line/Bad Id").kind == "unknown" and parse_page("/x/y/z").kind == "unknown"


def test_a_refresh_sends_only_the_data_arrays() -> None:
    fig = {"data": [{"type": "bar", "x": ["08:00"], "y": [5], "marker": {"color": ["#fff"]},
                     "textposition": "outside"}],
           "layout": {"font": {"size": 20}, "yaxis": {"range": [0, 6]}, "paper_bgcolor": "black"}}
    p = patch_figure(fig)
    assert isinstance(p, Patch)
    ops = p.to_plotly_json()["operations"]
    paths = {tuple(op["location"]) for op in ops}
    assert ("data", 0, "y") in paths and ("layout", "yaxis") in paths
    assert not any("textposition" in path or "font" in path or "paper_bgcolor" in path for path in paths)
