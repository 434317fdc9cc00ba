"""Wall-screen mode, set up by the URL alone: ``?kiosk=1&lines=..&lang=..&rotate=S``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.ui import WebDriverWait

from core.plant import Plant, load_plant
from dashboard.app import View, parse_view, pick_lines
from dashboard.client import LineInfo
from tests.api.support import shift_facts, write_facts
from tests.conftest import DEMO_PLANT
from tests.dashboard.servers import ApiServer, api_server, dashboard_server
from tests.dashboard.test_wallboard import REPLAY, wait_tiles

JA_NAMES = {"blade-1": "タービンブレード1号ライン", "press-2": "プレス2号ライン"}
ROTATE_WAIT_S = 60  # a 5 s rotation, with room for a slow CI machine


def test_parse_view() -> None:
    assert parse_view(None) == View()
    v = parse_view("?kiosk=1&lines=press-2, blade-1,press-2&lang=ja&rotate=30")
    assert (v.kiosk, v.lines, v.lang, v.rotate_s) == (True, ("press-2", "blade-1"), "ja", 30)
    assert parse_view("?kiosk=0&rotate=x&lang=fr&lines=") == View()
    assert parse_view("?rotate=1").rotate_s == 2  # floored: a page cannot be read in less
    assert parse_view("?as_of=2026-11-27T10:30:00+09:00").as_of == datetime(2026, 11, 27, 1, 30, tzinfo=UTC)


def test_pick_lines_keeps_the_asked_order() -> None:
    lines = [LineInfo(i, i.upper(), 10, ()) for i in ("a", "b", "c")]
    assert [x.id for x in pick_lines(lines, ("c", "nope", "a"))] == ["c", "a"]
    assert pick_lines(lines, None) == lines


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def api(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    path = tmp_path_factory.mktemp("kiosk") / "mieruka.db"
    write_facts(path, shift_facts(plant))
    with api_server(plant, path) as s:
        yield s


@pytest.fixture(scope="module")
def board(api: ApiServer) -> Iterator[str]:
    with dashboard_server(api.url, refresh_ms=1000) as url:
        yield url


# the visible tiles, read in one script so a refresh cannot replace them between two reads
READ_SHOWN = """
return Array.from(document.querySelectorAll('.tile')).filter(t => t.offsetParent !== null).map(t => ({
  line: t.dataset.line, cls: t.className, text: t.innerText, width: t.getBoundingClientRect().width,
  bottom: t.getBoundingClientRect().bottom, screen: window.innerHeight,
  chart: t.querySelector('.chart').getBoundingClientRect().height,
  name: t.querySelector('.tile-name').textContent, good: t.querySelector('.value.good').textContent,
}));
"""


def test_kiosk_picks_lines_in_the_asked_order(browser: webdriver.Chrome, board: str) -> None:
    browser.get(f"{board}/?kiosk=1&lines=press-2,blade-1&lang=en&as_of={REPLAY}")
    ts = wait_tiles(browser, lambda ts: [t["line"] for t in ts] == ["press-2", "blade-1"] and ts[0]["shown"] == "7")
    assert [t["name"] for t in ts] == ["Press line 2", "Turbine blade line 1"]
    assert "kiosk" in (browser.find_element("id", "board").get_attribute("class") or "").split()
    assert browser.execute_script("return getComputedStyle(document.getElementById('board')).cursor") == "none"
    # nothing to scroll on a wall screen
    assert browser.execute_script(
        "return document.documentElement.scrollHeight <= window.innerHeight + 1")

    browser.get(f"{board}/?kiosk=1&lines=blade-1&lang=en&as_of={REPLAY}")
    wait_tiles(browser, lambda ts: [t["line"] for t in ts] == ["blade-1"] and ts[0]["shown"] == "35")


def test_rotate_cycles_the_line_views_in_japanese_without_input(browser: webdriver.Chrome, board: str) -> None:
    browser.get(f"{board}/?kiosk=1&rotate=5&lang=ja&as_of={REPLAY}")
    seen: list[Any] = []

    def showing(name: str) -> Callable[[webdriver.Chrome], dict[str, Any] | Literal[False]]:
        def cond(d: webdriver.Chrome) -> dict[str, Any] | Literal[False]:
            shown: list[dict[str, Any]] = d.execute_script(READ_SHOWN)
            seen.append([t["name"] for t in shown])
            return shown[0] if [t["name"] for t in shown] == [name] else False
        return cond

    # the plant's order, then round again to the first: each line alone, enlarged, in Japanese
    for line, good in (("blade-1", "35"), ("press-2", "7"), ("blade-1", "35")):
        try:
            tile = WebDriverWait(browser, ROTATE_WAIT_S, poll_frequency=0.2).until(showing(JA_NAMES[line]))
        except TimeoutException:
            pytest.fail(f"the board never showed {line} alone; last seen: {seen[-1] if seen else None}")
        assert tile["line"] == line and "single" in tile["cls"].split()
        assert "良品数" in tile["text"] and tile["good"] == good
        assert tile["width"] > 1500  # the whole width of a 1920 px screen
        assert tile["bottom"] <= tile["screen"] + 1 and tile["chart"] > 150  # fits the screen, chart included


def test_kiosk_line_view_shows_the_banner_when_the_api_stops(browser: webdriver.Chrome, plant: Plant,
                                                            tmp_path: Path) -> None:
    db = tmp_path / "mieruka.db"
    write_facts(db, shift_facts(plant))
    with api_server(plant, db) as own_api, dashboard_server(own_api.url, refresh_ms=500) as url:
        browser.get(f"{url}/?kiosk=1&rotate=30&lines=press-2&lang=ja&as_of={REPLAY}")
        wait_tiles(browser, lambda ts: [t["line"] for t in ts] == ["press-2"] and ts[0]["shown"] == "7")
        own_api.stop()
        banner = WebDriverWait(browser, ROTATE_WAIT_S, poll_frequency=0.1).until(
            lambda d: (b := d.find_element("id", "banner")).is_displayed() and b)
        assert "APIに接続できません" in banner.text
        # the last line view stays, dimmed and still alone on the screen
        assert "single" in (browser.find_element("id", "tiles").get_attribute("class") or "").split()
        assert "stale" in (browser.find_element("id", "page").get_attribute("class") or "").split()
        shown = browser.execute_script(READ_SHOWN)
        assert [(t["line"], t["good"]) for t in shown] == [("press-2", "7")]
