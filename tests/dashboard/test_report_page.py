"""The printable shift report page (``/report/<date>/<shift>``) served by the dashboard from a real API
over fast-forward simulator data: each line's name, good count and OEE as the API's report gives them,
in both languages; the API's refusals with their sentence; every text from the API escaped."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from typing import Any

import httpx
import pytest

from core.plant import Plant, load_plant
from dashboard.report import count, pct, render_report
from tests.conftest import DEMO_PLANT
from tests.dashboard.servers import ApiServer, api_server, dashboard_server
from tests.support.fastforward import fast_forward_db

DAY = "2026-11-27"
AS_OF = "2026-11-27T12:30:00+09:00"  # the day shift so far


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def api(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    d = tmp_path_factory.mktemp("report-page")
    db, _, _ = fast_forward_db(plant, 3, datetime.fromisoformat("2026-11-27T07:30:00+09:00"),
                               datetime.fromisoformat(AS_OF), d)
    with api_server(plant, db) as s:
        yield s


@pytest.fixture(scope="module")
def board(api: ApiServer) -> Iterator[str]:
    with dashboard_server(api.url) as url:
        yield url


def text_of(page: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", page)))


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_page_shows_each_lines_name_good_and_oee(board: str, api: ApiServer, lang: str) -> None:
    rep = httpx.get(f"{api.url}/api/v1/reports/shift",
                    params={"date": DAY, "shift": "day", "as_of": AS_OF, "lang": lang}, timeout=30).json()
    r = httpx.get(f"{board}/report/{DAY}/day", params={"lang": lang, "as_of": AS_OF}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "@page { size: A4 landscape" in page and "break-after: page" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # nothing fetched on print
    assert page.count('<section class="sheet"') == len(rep["lines"]) == 2
    words = text_of(page)
    good_word = "良品" if lang == "ja" else "Good"
    for ln in rep["lines"]:
        assert ln["counts"]["good"] > 0
        assert ln["name"] in words
        assert f"{good_word} {count(ln['counts']['good'])}" in words
        assert f"OEE {pct(ln['figures']['oee'])}" in words
    assert rep["shift"]["name"] in words and ("日勤" if lang == "ja" else "Day shift") in words
    assert ("シフト途中" if lang == "ja" else "so far, as of 12:30") in words  # complete: false


def test_refusals_keep_the_apis_sentence(board: str) -> None:
    r = httpx.get(f"{board}/report/{DAY}/late", timeout=30)
    assert r.status_code == 404 and "unknown shift &#x27;late&#x27;" in r.text
    r = httpx.get(f"{board}/report/27-11-2026/day", timeout=30)
    assert r.status_code == 422 and "YYYY-MM-DD" in r.text


def hostile_report() -> dict[str, Any]:
    evil = '<script>alert("x")</script>&'
    figs = {"availability": None, "performance": None, "quality": None, "oee": None, "teep": None, "no_data": True,
            "times": dict.fromkeys(("calendar_s", "scheduled_s", "breaks_s", "planned_s", "planned_production_s",
                                    "run_s"), 0.0),
            "losses": dict.fromkeys(("breakdowns_s", "changeover_s", "idle_s", "micro_stops_s", "reduced_speed_s",
                                     "rejects_s", "offline_s", "starved_blocked_s"), 0.0)}
    counts = {"good": 0, "scrap": 0, "target": 0.0, "shift_target": 0.0, "difference": 0.0}
    t0, t1 = "2026-11-27T08:00:00+09:00", "2026-11-27T09:00:00+09:00"
    return {"site": {"id": "s", "name": evil, "timezone": "Asia/Tokyo", "locale": "en"}, "date": DAY,
            "shift": {"id": "day", "name": evil, "day": DAY, "start": t0, "end": t1}, "start": t0, "end": t1,
            "as_of": t1, "complete": True,
            "lines": [{"id": "l<1>", "name": evil, "target_per_hour": 1, "counts": counts, "figures": figs,
                       "machines": [{"id": "m", "name": evil, "output": True, "counts": counts, "figures": figs}],
                       "hours": [], "pareto": [],
                       "top_stops": [{"machine": "m", "machine_name": evil, "start": t0, "end": t1, "stop_start": t0,
                                      "seconds": 60.0, "state": "down", "reason": 1, "label": evil,
                                      "category": None, "named_by": evil}],
                       "notes": [{"time": t0, "text": evil, "author": evil, "recorded": None}]}]}


def test_every_text_from_the_api_is_escaped() -> None:
    page = render_report(hostile_report(), "en", datetime(2026, 11, 27, tzinfo=UTC))
    assert "<script" not in page and "l<1>" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;") >= 8
    assert "OEE —" in text_of(page)  # no data is never 100 %

