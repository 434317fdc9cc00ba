"""The board's refresh stays inside its time budget (a Dash callback slower than its interval never lands)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from dashboard.client import ApiClient, ApiUnreachable, LineInfo
from dashboard.data import Board, Window


def slow(request: httpx.Request) -> httpx.Response:
    time.sleep(0.2)
    return httpx.Response(200, json={"line": "x", "bucket": "1h", "bucket_s": 3600, "start": None, "end": None,
                                     "shift": None, "points": [], "total_good": 0, "total_scrap": 0})


def test_refresh_gives_up_when_the_api_is_too_slow_for_the_interval() -> None:
    lines = [LineInfo(f"l{i}", f"L{i}", 10, ()) for i in range(10)]
    board = Board(ApiClient("http://api", transport=httpx.MockTransport(slow)), budget_s=0.3)
    w = Window(datetime(2026, 11, 27, tzinfo=UTC), datetime(2026, 11, 27, 1, tzinfo=UTC), None)
    t0 = time.monotonic()
    with pytest.raises(ApiUnreachable, match="too slowly"):
        board.throughputs(lines, w, time.monotonic() + board.budget_s)
    assert time.monotonic() - t0 < 1.0


def test_requests_time_out() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ApiUnreachable):
        ApiClient("http://api", transport=httpx.MockTransport(hang)).lines()


def test_an_hour_with_a_break_is_judged_against_the_api_target() -> None:
    """A 30-minute break leaves half an hour of production: 55 parts against the API's bucket
    target of 55 is on target (green), not 55 against the flat 110/h (red)."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from dashboard.client import Point, Throughput
    from dashboard.data import GREEN, RED
    from dashboard.figures import tile_figure

    start = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    line = LineInfo("blade-1", "Blade", 110.0, ())
    w = Window(start, start + timedelta(hours=1), None)

    def color(target: float | None) -> str:
        p = Point(start, start + timedelta(hours=1), 55, 0, target)
        tp = Throughput("blade-1", "1h", 3600, start, start + timedelta(hours=1), None, (p,), 55, 0)
        fig = tile_figure(tp, line, w, ZoneInfo("Asia/Tokyo"), "en")
        return str(fig["data"][0]["marker"]["color"][0])

    assert color(55.0) == GREEN
    assert color(None) == RED  # an API without bucket targets: the flat rate
