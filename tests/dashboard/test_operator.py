"""The operator page (``/operator/<line>``) in a real headless Chromium, against a real API with token auth.

The API refuses reads without a token; the dashboard reads with a ``read`` token and writes with an
``operator`` token of its own. The store holds a shift (the demo calendar moved to now) in which cnc-1
has been down for a few minutes with no reason from the PLC: the page must offer that open stop, a
tap on a reason must name it in the API (by the dashboard's token name) and on the wall board's line
view within one refresh, and scrap typed on the pad must reach the line's counts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait

from api.auth import Auth
from api.cache import DEFAULT_REFRESH_PERIOD_S
from api.tokens import TokenFile, create_token
from core.model import Fact, to_ns
from core.plant import Plant, load_plant
from dashboard.client import TokenSource
from dashboard.data import CATEGORY_COLORS, ON_COLOR
from mieruka.demo import move_calendar_to_now
from tests.api.support import write_facts
from tests.conftest import DEMO_PLANT
from tests.dashboard.servers import ApiServer, api_server, dashboard_server
from tests.support.browser import chromium

REFRESH_MS = 1000
WAIT_S = 20
LINE = "blade-1"
DOWN = "cnc-1"
NAMED = 21  # Hydraulic fault: a reason the PLC never sent in this store, so only the tap can bring it


@dataclass(frozen=True)
class Setup:
    plant: Plant
    api: ApiServer
    tokens: dict[str, str]  # name -> token
    down_since: datetime
    tmp: Path

    def get(self, path: str, token: str = "board", **params: str) -> Any:
        r = httpx.get(f"{self.api.url}/api/v1/{path}", params=params, timeout=10,
                      headers={"Authorization": f"Bearer {self.tokens[token]}"})
        assert r.status_code == 200, r.text
        return r.json()


def facts(plant: Plant, now: datetime) -> list[Fact]:
    line = plant.line(LINE)
    assert line is not None
    shift_start = now - timedelta(minutes=80)
    out = [Fact("state", to_ns(shift_start + timedelta(seconds=10 + i)), LINE, m.id, "state", "running")
           for i, m in enumerate(line.machines)]
    out.append(Fact("count", to_ns(now - timedelta(minutes=40)), LINE, "inspect-1", "good", 40))
    out.append(Fact("state", to_ns(now - timedelta(minutes=4)), LINE, DOWN, "state", "down", None))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("operator")
    now = datetime.now(UTC).replace(microsecond=0)
    plant = move_calendar_to_now(load_plant(DEMO_PLANT), now)  # a shift running now, every day
    db = tmp / "op.db"
    write_facts(db, facts(plant, now))
    token_file = tmp / "tokens.json"
    tokens = {name: create_token(token_file, name, role)  # type: ignore[arg-type]
              for name, role in (("board", "read"), ("tablet-1", "operator"), ("viewer", "read"))}
    with api_server(plant, db, Auth(TokenFile(token_file), anonymous_read=False)) as api:
        yield Setup(plant, api, tokens, now - timedelta(minutes=4), tmp)


@pytest.fixture(scope="module")
def dash_url(setup: Setup) -> Iterator[str]:
    """The dashboard reading with the ``read`` token, writing with the operator token from a file."""
    f = setup.tmp / "operator.token"
    f.write_text(setup.tokens["tablet-1"] + "\n", encoding="utf-8")
    with dashboard_server(setup.api.url, REFRESH_MS, token=setup.tokens["board"],
                          operator_token=TokenSource(f)) as url:
        yield url


def wait(driver: webdriver.Chrome, script: str, ok: Any, what: str, timeout: float = WAIT_S) -> Any:
    seen: list[Any] = []

    def cond(d: webdriver.Chrome) -> Any:
        v = d.execute_script(script)
        seen.append(v)
        return v if ok(v) else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(cond)
    except Exception:
        pytest.fail(f"{what}; last seen: {seen[-1] if seen else None}")


READ_PAGE = """
const q = s => Array.from(document.querySelectorAll(s));
const box = e => e.getBoundingClientRect();
const said = id => {
  const e = document.getElementById(id); return e === null ? '|' : e.className + '|' + e.innerText;
};
return {
  stops: q('.op-stop').map(e => ({machine: e.dataset.machine, start: e.dataset.start, reason: e.dataset.reason,
                                   selected: e.dataset.selected === '1', text: e.innerText})),
  reasons: q('#op-reasons .op-reason').map(e => ({code: Number(e.dataset.code), text: e.innerText,
      category: e.dataset.category, bg: getComputedStyle(e).backgroundColor, fg: getComputedStyle(e).color,
      w: box(e).width, h: box(e).height})),
  keys: q('.op-key').map(e => ({key: e.dataset.key, w: box(e).width, h: box(e).height})),
  headings: q('.op-section h2').map(e => e.innerText),
  result: said('op-result'),
  scrap: said('op-scrap-result'),
  qty: (document.getElementById('op-qty') || {}).innerText,
  no_token: (document.getElementById('op-no-token') || {}).innerText || null,
};
"""


def rgb(hex_color: str) -> str:
    h = hex_color.lstrip("#")
    return f"rgb({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)})"


def tap(driver: webdriver.Chrome, selector: str) -> None:
    el = driver.find_element("css selector", selector)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()


def test_a_tap_names_the_open_stop_in_the_api_and_on_the_wall_board(browser: webdriver.Chrome, dash_url: str,
                                                                    setup: Setup) -> None:
    catalogue = {r["code"]: r for r in setup.get("plant", lang="en")["reasons"]}
    label = catalogue[NAMED]["name"]
    with chromium() as board:  # the wall board's line view, open before the tap, refreshing by itself
        board.get(f"{dash_url}/line/{LINE}?lang=en")
        pareto = ("const g = document.querySelector('.chart-pareto .js-plotly-plot'); "
                  "return g && g.data ? g.data[0].x : null")
        before = wait(board, pareto, lambda x: x is not None and "Down" in x,
                      "the line view's Pareto never showed the stop")
        assert label not in before

        browser.get(f"{dash_url}/operator/{LINE}?lang=en")
        page = wait(browser, READ_PAGE, lambda p: any(s["machine"] == DOWN for s in p["stops"]) and p["reasons"],
                    "the operator page never listed the open stop")
        selected = [s for s in page["stops"] if s["selected"]]
        assert [s["machine"] for s in selected] == [DOWN], "the open stop is not the one selected by default"
        assert datetime.fromisoformat(selected[0]["start"]) == setup.down_since
        tap(browser, f'#op-reasons .op-reason[data-code="{NAMED}"]')
        tapped = time.monotonic()
        done = wait(browser, READ_PAGE, lambda p: "ok" in p["result"] or "error" in p["result"],
                    "no confirmation after the tap")
        assert "op-result ok" in done["result"] and label in done["result"], done["result"]

        # (a) the API: the stop is named with that reason by the dashboard's operator token
        stops = setup.get(f"lines/{LINE}/stops", shift="current", lang="en")["stops"]
        named = [s for s in stops if s["machine"] == DOWN and datetime.fromisoformat(s["start"]) == setup.down_since]
        assert len(named) == 1 and named[0]["open"], stops
        assert (named[0]["reason"], named[0]["named_by"], named[0]["label"]) == (NAMED, "tablet-1", label)
        # (b) the wall board's line view shows it in its Pareto within one refresh (plus the callback's time)
        wait(board, pareto, lambda x: x is not None and label in x,
             "the line view's Pareto did not show the reason", timeout=REFRESH_MS / 1000 + 4)
        assert time.monotonic() - tapped < REFRESH_MS / 1000 + 6
        # the page shows the stop's new reason too (it stays listed: it is still open)
        wait(browser, READ_PAGE, lambda p: any(s["machine"] == DOWN and s["reason"] == str(NAMED) for s in p["stops"]),
             "the operator page did not show the stop's new reason")


def test_scrap_typed_on_the_pad_reaches_the_line_counts(browser: webdriver.Chrome, dash_url: str,
                                                       setup: Setup) -> None:
    before = setup.get(f"lines/{LINE}/status")["counts"]
    browser.get(f"{dash_url}/operator/{LINE}?lang=en")
    wait(browser, READ_PAGE, lambda p: p["keys"] and p["qty"] == "0", "the number pad never showed")
    tap(browser, '.op-machine[data-machine="inspect-1"]')
    # taps in a burst, as fast as selenium clicks: no digit may be lost to a round trip
    for keys, shown in ((("1", "2", "BS", "3"), "13"), (("C",), "0"), (("0", "1", "3"), "13")):
        for key in keys:
            tap(browser, f'.op-key[data-key="{key}"]')
        wait(browser, READ_PAGE, lambda p, s=shown: p["qty"] == s, f"the pad did not show {shown} after {keys}")
    tap(browser, "#op-book")
    done = wait(browser, READ_PAGE, lambda p: "ok" in p["scrap"] or "error" in p["scrap"], "no confirmation")
    assert "op-result ok" in done["scrap"] and "13" in done["scrap"], done["scrap"]
    assert done["qty"] == "0"
    # the booking is dated now; the API's "now" is its refresh period's start, so it counts from the next one
    end = time.monotonic() + DEFAULT_REFRESH_PERIOD_S + 5
    while (after := setup.get(f"lines/{LINE}/status")["counts"])["scrap"] == before["scrap"]:
        assert time.monotonic() < end, "the booked scrap never reached the line's counts"
        time.sleep(0.2)
    assert (after["scrap"] - before["scrap"], before["good"] - after["good"]) == (13, 13)
    # more than the machine made this shift: the API's 422 detail shows, nothing is booked
    for key in (*str(after["good"] + 1),):
        tap(browser, f'.op-key[data-key="{key}"]')
    tap(browser, "#op-book")
    refused = wait(browser, READ_PAGE, lambda p: "error" in p["scrap"], "no refusal shown")
    assert "422" in refused["scrap"]
    assert setup.get(f"lines/{LINE}/status")["counts"]["scrap"] == after["scrap"]


def test_a_shift_note_is_saved_by_the_operator_token_and_listed(browser: webdriver.Chrome, dash_url: str,
                                                                 setup: Setup) -> None:
    text = f"coolant topped up {time.time_ns()}"
    browser.get(f"{dash_url}/operator/{LINE}?lang=en")
    wait(browser, "return document.getElementById('op-note-text') !== null", bool, "no note area")
    browser.find_element("id", "op-note-text").send_keys(text)
    tap(browser, "#op-note-save")
    said = "const e = document.getElementById('op-note-result'); return e.className + '|' + e.innerText"
    done = wait(browser, said, lambda v: "ok" in v or "error" in v, "no confirmation for the note")
    assert "op-result ok" in done, done
    # dated now: the API lists it from its next refresh period on (its "now" is the period's start)
    end = time.monotonic() + DEFAULT_REFRESH_PERIOD_S + 5
    while not (mine := [(n["text"], n["author"]) for n in setup.get(f"lines/{LINE}/notes", shift="current")["notes"]
                        if n["text"] == text]):
        assert time.monotonic() < end, "the note never reached the API's list"
        time.sleep(0.2)
    assert mine == [(text, "tablet-1")]
    wait(browser, "return document.getElementById('op-notes').innerText", lambda v: text in v,
         "the saved note is not listed on the page", timeout=REFRESH_MS / 1000 + 5)
    assert browser.find_element("id", "op-note-text").get_attribute("value") == ""


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_labels_colours_and_touch_targets(browser: webdriver.Chrome, dash_url: str, setup: Setup, lang: str) -> None:
    reasons = setup.get("plant", lang=lang)["reasons"]
    browser.get(f"{dash_url}/operator/{LINE}?lang={lang}")
    page = wait(browser, READ_PAGE, lambda p: len(p["reasons"]) == len(reasons) and p["headings"],
                "the reason buttons never showed")
    assert [(r["code"], r["text"]) for r in page["reasons"]] == [(r["code"], r["name"]) for r in reasons]
    for r, want in zip(page["reasons"], reasons, strict=True):
        assert r["category"] == want["category"]
        assert r["bg"] == rgb(CATEGORY_COLORS[want["category"]]) and r["fg"] == rgb(ON_COLOR)
    assert page["headings"] == (["Stops (tap the one to name)", "Stop reason", "Book scrap", "Shift notes"]
                                if lang == "en" else
                                ["停止（理由を選ぶ停止をタップ）", "停止理由", "不良の計上", "シフトメモ"])
    header = browser.find_element("id", "header-page").text
    assert header == ("Operator input" if lang == "en" else "作業者入力")
    # touch targets: at least 48 px each way
    assert all(x["w"] >= 48 and x["h"] >= 48 for x in [*page["reasons"], *page["keys"]])


def test_without_an_operator_token_the_page_says_so_and_offers_no_buttons(browser: webdriver.Chrome,
                                                                         setup: Setup) -> None:
    with dashboard_server(setup.api.url, REFRESH_MS, token=setup.tokens["board"]) as url:
        browser.get(f"{url}/operator/{LINE}?lang=en")
        page = wait(browser, READ_PAGE, lambda p: p["no_token"], "no message about the missing operator token")
        assert "--operator-token-file" in page["no_token"] and "no operator token" in page["no_token"]
        assert page["reasons"] == [] and page["keys"] == [] and page["stops"] == []
        assert browser.find_elements("css selector", ".op-page button") == []


def test_a_read_token_as_operator_token_shows_the_apis_403(browser: webdriver.Chrome, setup: Setup) -> None:
    before = setup.get(f"lines/{LINE}/stops", shift="current")["stops"]
    stop = next(s for s in before if s["open"])
    r = httpx.put(f"{setup.api.url}/api/v1/machines/{stop['machine']}/stops/{quote(stop['start'], safe='')}/reason",
                  json={"reason": 10}, headers={"Authorization": f"Bearer {setup.tokens['viewer']}"}, timeout=10)
    assert r.status_code == 403
    detail = r.json()["detail"]
    with dashboard_server(setup.api.url, REFRESH_MS, token=setup.tokens["board"],
                          operator_token=setup.tokens["viewer"]) as url:
        browser.get(f"{url}/operator/{LINE}?lang=en")
        wait(browser, READ_PAGE, lambda p: any(s["selected"] for s in p["stops"]) and p["reasons"],
             "the page never selected a stop")
        tap(browser, '#op-reasons .op-reason[data-code="10"]')
        page = wait(browser, READ_PAGE, lambda p: "error" in p["result"], "the refusal never showed")
        assert "403" in page["result"] and detail in page["result"]
    after = setup.get(f"lines/{LINE}/stops", shift="current")["stops"]
    assert [(s["start"], s["reason"], s["named_by"]) for s in after] == \
        [(s["start"], s["reason"], s["named_by"]) for s in before], "a refused tap changed a stop"


def test_the_category_palette_reads_at_wcag_aa() -> None:
    def luminance(hex_color: str) -> float:
        def lin(c: float) -> float:
            return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
        h = hex_color.lstrip("#")
        r, g, b = (lin(int(h[i:i + 2], 16) / 255) for i in (0, 2, 4))
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    text = luminance(ON_COLOR)
    for category, color in CATEGORY_COLORS.items():
        assert (luminance(color) + 0.05) / (text + 0.05) >= 4.5, category
    assert len(set(CATEGORY_COLORS.values())) == len(CATEGORY_COLORS), "two categories share a colour"


def test_the_operator_token_file_is_re_read_when_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "op.token"
    f.write_text("mk_first\n", encoding="utf-8")
    src = TokenSource(f)
    assert src.token() == "mk_first"
    f.write_text("mk_second_token\n", encoding="utf-8")
    assert src.token() == "mk_second_token"
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "missing"))):
        TokenSource(tmp_path / "missing")


def test_the_list_offers_open_stops_first_then_unnamed_ones_and_never_offline_stretches() -> None:
    from dashboard.client import StopPart
    from dashboard.pages.operator import MAX_STOPS, default_selection, stops_to_show

    t0 = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)

    def part(minute: int, state: str = "down", reason: int | None = None, open_: bool = False) -> StopPart:
        start = t0 + timedelta(minutes=minute)
        return StopPart("cnc-1", start.isoformat(), None if open_ else start + timedelta(seconds=30), open_, 30.0,
                        state, reason, "x", None, None, False)  # type: ignore[arg-type]

    named, old, new, gone = part(1, reason=20), part(2), part(3, "idle"), part(4, "offline")
    now = part(5, open_=True)
    shown = stops_to_show((named, old, new, gone, now))
    assert shown == [now, new, old]
    assert default_selection(shown, None) == f"cnc-1|{now.start}"
    assert default_selection(shown, f"cnc-1|{old.start}") == f"cnc-1|{old.start}"  # the operator's pick stays
    assert default_selection(shown, f"cnc-1|{named.start}") == f"cnc-1|{now.start}"  # gone from the list
    assert len(stops_to_show(tuple(part(i) for i in range(MAX_STOPS + 5)))) == MAX_STOPS


@pytest.mark.parametrize("content", [None, "", "two words\n"])
def test_a_bad_operator_token_file_stops_the_dashboard_with_exit_2(tmp_path: Path, content: str | None) -> None:
    import subprocess
    import sys

    f = tmp_path / "op.token"
    if content is not None:
        f.write_text(content, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "mieruka.cli", "dashboard", "--api", "http://127.0.0.1:9",
                        "--operator-token-file", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"--operator-token-file {f}" in r.stderr and "mieruka token create --role operator" in r.stderr
