"""The board's refresh stays inside its time budget (a Dash callback slower than its interval never lands)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from dashboard.app import Board, Window
from dashboard.client import ApiClient, ApiUnreachable, LineInfo


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
