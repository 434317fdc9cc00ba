"""The wall board in headless Chromium, reading a real uvicorn API over a SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait

from core.plant import Plant, load_plant
from tests.api.support import count, shift_facts, write_facts
from tests.conftest import DEMO_PLANT
from tests.dashboard.servers import ApiServer, api_server, dashboard_server

REPLAY = quote("2026-11-27T10:30:00+09:00")
WAIT_S = 20

# every tile at once, read in one script so the numbers come from one render
READ_TILES = """
return Array.from(document.querySelectorAll('.tile')).map(t => ({
  line: t.dataset.line, cls: t.className,
  name: t.querySelector('.tile-name').textContent,
  shown: t.querySelector('.value.good').textContent,
  rate: t.querySelector('.value.rate').textContent,
  target: t.querySelector('.sub.rate-sub').textContent,
  text: t.innerText,
  width: t.querySelector('.tile-name').getBoundingClientRect().width,
}));
"""


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def db(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Path:
    now = datetime.now(UTC)
    live = [count(plant, now - timedelta(minutes=20), "inspect-1", "good", 3),
            count(plant, now - timedelta(hours=3), "inspect-1", "good", 4),
            count(plant, now - timedelta(minutes=40), "pack-2", "good", 6)]
    path = tmp_path_factory.mktemp("board") / "mieruka.db"
    write_facts(path, shift_facts(plant) + live)
    return path


@pytest.fixture(scope="module")
def api(plant: Plant, db: Path) -> Iterator[ApiServer]:
    with api_server(plant, db) as s:
        yield s


@pytest.fixture(scope="module")
def board(api: ApiServer) -> Iterator[str]:
    with dashboard_server(api.url, refresh_ms=1000) as url:
        yield url


def tiles(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = driver.execute_script(READ_TILES)
    return result


def wait_tiles(driver: webdriver.Chrome, ok: Any) -> list[dict[str, Any]]:
    seen: list[list[dict[str, Any]]] = []

    def cond(d: webdriver.Chrome) -> list[dict[str, Any]] | Literal[False]:
        ts = tiles(d)
        seen.append(ts)
        return ts if ts and ok(ts) else False

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(cond)
    except Exception:
        pytest.fail(f"tiles never matched; last seen: {seen[-1] if seen else None}")


def test_replayed_shift_shows_exact_counts_in_english(browser: webdriver.Chrome, board: str) -> None:
    browser.get(f"{board}/?lang=en&as_of={REPLAY}")
    ts = wait_tiles(browser, lambda ts: {t["line"]: t["shown"] for t in ts} == {"blade-1": "35", "press-2": "7"})
    by_line = {t["line"]: t for t in ts}
    assert by_line["blade-1"]["name"] == "Turbine blade line 1"
    assert by_line["press-2"]["name"] == "Press line 2"
    # 35 good in 2 h 20 min of planned production (08:00–10:30 less the 10:00–10:10 break)
    assert by_line["blade-1"]["rate"] == "15"
    assert by_line["blade-1"]["target"] == "Target /h 110"
    # no states in this store: every machine, so the line, is offline
    assert "state-offline" in by_line["blade-1"]["cls"].split() and "Offline" in by_line["blade-1"]["text"]
    assert "Shift Day shift" in browser.find_element("id", "header-shift").text  # the plant file's name
    assert not browser.find_element("id", "banner").is_displayed()


def test_japanese_names_render(browser: webdriver.Chrome, board: str) -> None:
    browser.get(f"{board}/?lang=ja&as_of={REPLAY}")
    ts = wait_tiles(browser, lambda ts: ts[0]["name"] == "タービンブレード1号ライン")
    assert [t["name"] for t in ts] == ["タービンブレード1号ライン", "プレス2号ライン"]
    assert all(t["width"] > 100 for t in ts)  # laid out with real glyphs, not collapsed
    assert browser.find_element("id", "header-site").text == "足利第一工場"
    assert "シフト 日勤" in browser.find_element("id", "header-shift").text
    assert "良品数" in ts[0]["text"] and "通信なし" in ts[0]["text"]


def test_live_tiles_match_the_api_for_their_window(browser: webdriver.Chrome, board: str, api: ApiServer) -> None:
    browser.get(f"{board}/")  # no lang: the plant's locale (ja)

    def matches_api(ts: list[dict[str, Any]]) -> bool:
        for t in ts:
            status = httpx.get(f"{api.url}/api/v1/lines/{t['line']}/status").json()
            if status["counts"] is not None:  # a shift runs: this shift so far
                good = status["counts"]["good"]
            else:  # none runs: the last 8 hours
                now = datetime.now(UTC)
                good = httpx.get(f"{api.url}/api/v1/lines/{t['line']}/throughput", params={
                    "start": (now - timedelta(hours=8)).isoformat(), "end": now.isoformat()}).json()["total_good"]
            if not (t["name"] and t["shown"] == f"{good:,}"):
                return False
        return True

    ts = wait_tiles(browser, lambda ts: len(ts) == 2 and matches_api(ts))
    assert ts[0]["name"] == "タービンブレード1号ライン"


def test_banner_when_the_api_is_stopped(browser: webdriver.Chrome, plant: Plant, db: Path) -> None:
    with api_server(plant, db) as own_api, dashboard_server(own_api.url, refresh_ms=500) as url:
        browser.get(f"{url}/?lang=en&as_of={REPLAY}")
        wait_tiles(browser, lambda ts: {t["line"]: t["shown"] for t in ts} == {"blade-1": "35", "press-2": "7"})
        own_api.stop()
        banner = WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(
            lambda d: (b := d.find_element("id", "banner")).is_displayed() and b)
        assert "API unreachable" in banner.text
        # the last figures stay, dimmed, rather than vanishing
        assert "stale" in (browser.find_element("id", "page").get_attribute("class") or "").split()
        assert {t["line"]: t["shown"] for t in tiles(browser)} == {"blade-1": "35", "press-2": "7"}
        # a board opened while the API is down says so in both languages
        browser.get(f"{url}/")
        banner = WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(
            lambda d: (b := d.find_element("id", "banner")).is_displayed() and b)
        assert "APIに接続できません" in banner.text and "API unreachable" in banner.text
