"""Every page against a real API over fast-forward simulator data, replayed at a fixed ``as_of``.

The figures are read from the DOM (text, and the Plotly figures' data) and compared with the API's
JSON for the same ``as_of``, fetched by the test: nothing here is a hard-coded number.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait

from core.plant import Plant, load_plant
from tests.conftest import DEMO_PLANT
from tests.dashboard.servers import ApiServer, api_server, dashboard_server

AS_OF = "2026-11-27T10:30:00+09:00"  # a Friday, 2.5 h into the day shift (with a 10:00–10:10 break)
Q = f"as_of={quote(AS_OF)}"
WAIT_S = 20
STATE_EN = {"running": "Running", "idle": "Idle", "down": "Down", "changeover": "Changeover",
            "planned": "Planned stop", "offline": "Offline"}
STATE_JA = {"running": "稼働", "idle": "待機", "down": "故障停止", "changeover": "段取り",
            "planned": "計画停止", "offline": "通信なし"}


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def ff_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo plant simulated 07:00–11:00 on a virtual clock, imported through normalize into SQLite."""
    d = tmp_path_factory.mktemp("ff-pages")
    samples, truth, db = d / "samples.csv", d / "truth.jsonl", d / "ff.db"
    run = [sys.executable, "-m", "mieruka.cli"]
    r = subprocess.run([*run, "simulate", "--plant", str(DEMO_PLANT), "--seed", "7",
                        "--from", "2026-11-27T07:00:00+09:00", "--to", "2026-11-27T11:00:00+09:00",
                        "--samples", str(samples), "--truth", str(truth)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*run, "import", "--plant", str(DEMO_PLANT), "--store", f"sqlite:///{db}", str(samples)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return db


@pytest.fixture(scope="module")
def api(plant: Plant, ff_db: Path) -> Iterator[ApiServer]:
    with api_server(plant, ff_db) as s:
        yield s


@pytest.fixture(scope="module")
def dash_url(api: ApiServer) -> Iterator[str]:
    with dashboard_server(api.url, refresh_ms=1000) as url:
        yield url


def get(api: ApiServer, path: str, **params: str) -> Any:
    r = httpx.get(f"{api.url}/api/v1/{path}", params={"as_of": AS_OF, **params}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_js(driver: webdriver.Chrome, script: str, ok: Any, what: str) -> Any:
    seen: list[Any] = []

    def cond(d: webdriver.Chrome) -> Any:
        v = d.execute_script(script)
        seen.append(v)
        return v if v and ok(v) else False

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(cond)
    except Exception:
        pytest.fail(f"{what}; last seen: {seen[-1] if seen else None}")


# ---- the wall board ----------------------------------------------------------------------------------

READ_TILES = """
const txt = (t, s) => { const e = t.querySelector(s); return e === null ? null : e.textContent; };
return Array.from(document.querySelectorAll('.tile')).map(t => ({
  line: t.dataset.line, cls: t.className.split(' '), name: txt(t, '.tile-name'),
  state: t.querySelector('.tile-head .pill').dataset.state, pill: txt(t, '.tile-head .pill'),
  in_state: txt(t, '.in-state'), detail: txt(t, '.state-detail'),
  good: txt(t, '.value.good'), plan: txt(t, '.sub.good-sub'), rate: txt(t, '.value.rate'),
  target: txt(t, '.sub.rate-sub'), oee: txt(t, '.value.oee'), apq: txt(t, '.sub.oee-sub'),
  standing: txt(t, '.progress .standing'), done: t.querySelector('.progress .done').style.width,
  due: t.querySelector('.progress .due').style.left,
  strip: Array.from(t.querySelectorAll('.strip .cell')).map(c => [c.dataset.machine, c.dataset.state,
                                                                  c.querySelector('.cell-state').textContent]),
  bars: (t.querySelector('.chart .js-plotly-plot') || {}).data?.[0]?.y ?? null,
}));
"""


def line_state(machines: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """The documented rule, written again here: worst of down/changeover; planned or offline only when all
    machines are; else running when any runs, else idle. The one in that state longest tells since when."""
    def longest(state: str) -> dict[str, Any] | None:
        ms = [m for m in machines if m["state"] == state]
        return min(ms, key=lambda m: datetime.fromisoformat(m["since"])) if ms else None

    for state in ("down", "changeover"):
        if (m := longest(state)) is not None:
            return state, m
    for state in ("planned", "offline"):
        if all(m["state"] == state for m in machines):
            return state, longest(state)
    for state in ("running", "idle"):
        if (m := longest(state)) is not None:
            return state, m
    return "idle", None


def duration(seconds: float, lang: str) -> str:
    s = int(seconds)
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    if lang == "ja":
        return f"{h}時間{m:02d}分" if h else f"{m}分{sec:02d}秒"
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s"


def expected_tile(api: ApiServer, line: str, lang: str) -> dict[str, Any]:
    st = get(api, f"lines/{line}/status", lang=lang)
    tp = get(api, f"lines/{line}/throughput", start=st["shift"]["start"], end=AS_OF, bucket="1h")
    c, o = st["counts"], st["oee"]
    state, m = line_state(st["machines"])
    assert m is not None
    diff = round(c["difference"])
    pct = "{:.1f}%".format
    names = STATE_EN if lang == "en" else STATE_JA
    if lang == "en":
        plan = f"plan {round(c['expected']):,} / shift {round(c['shift_target']):,}"
        standing = "on target" if diff == 0 else f"{'ahead' if diff > 0 else 'behind'} by {abs(diff):,}"
        apq = f"A {pct(o['availability'] * 100)}  P {pct(o['performance'] * 100)}  Q {pct(o['quality'] * 100)}"
        target = f"Target /h {round(c['target_per_hour']):,}"
    else:
        plan = f"計画 {round(c['expected']):,} / シフト {round(c['shift_target']):,}"
        standing = "計画どおり" if diff == 0 else f"{abs(diff):,} 個 {'先行' if diff > 0 else '遅れ'}"
        apq = f"稼 {pct(o['availability'] * 100)}  性 {pct(o['performance'] * 100)}  質 {pct(o['quality'] * 100)}"
        target = f"目標/時 {round(c['target_per_hour']):,}"
    as_of = datetime.fromisoformat(AS_OF)
    return {
        "line": line, "name": st["name"], "state": state, "pill": names[state],
        "in_state": duration((as_of - datetime.fromisoformat(m["since"])).total_seconds(), lang),
        "good": f"{c['good']:,}", "plan": plan, "rate": f"{round(c['rate_per_hour']):,}", "target": target,
        "oee": pct(o["oee"] * 100), "apq": apq, "standing": standing,
        "done": min(c["good"] / c["shift_target"], 1) * 100,
        "due": min(c["expected"] / c["shift_target"], 1) * 100,
        "strip": [[x["id"], x["state"], (x["reason"] or {}).get("label") or names[x["state"]]]
                  for x in st["machines"]],
        "reason": (m["reason"] or {}).get("label"), "machine": m["name"],
        "bars": [p["good"] for p in tp["points"]],
    }


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_wall_board_figures_equal_the_api(browser: webdriver.Chrome, dash_url: str, api: ApiServer,
                                         lang: Literal["en", "ja"]) -> None:
    lines = [x["id"] for x in get(api, "lines")]
    want = {line: expected_tile(api, line, lang) for line in lines}
    assert any(w["strip"] for w in want.values()) and all(int(w["good"].replace(",", "")) > 0 for w in want.values())
    browser.get(f"{dash_url}/?lang={lang}&{Q}")
    ts = wait_js(browser, READ_TILES, lambda ts: [t["line"] for t in ts] == lines and all(t["bars"] for t in ts),
                 "the tiles never rendered")
    for t in ts:
        w = want[t["line"]]
        for key in ("name", "state", "pill", "in_state", "good", "plan", "rate", "target", "oee", "apq", "standing",
                    "strip"):
            assert t[key] == w[key], (t["line"], key)
        # the progress bar: good against the shift's target, the mark where the target is by now
        assert float(t["done"].rstrip("%")) == pytest.approx(w["done"], abs=0.01)
        assert float(t["due"].rstrip("%")) == pytest.approx(w["due"], abs=0.01)
        assert f"state-{w['state']}" in t["cls"]
        if w["state"] != "running":  # why and where the line stands
            assert w["machine"] in t["detail"] and (w["reason"] is None or w["reason"] in t["detail"])
        assert t["bars"][: len(w["bars"])] == w["bars"]  # hourly good, as the API counts it
    assert not browser.find_element("id", "banner").is_displayed()
    clock = browser.find_element("id", "header-clock").text
    assert clock == ("Replay Fri 27 Nov 2026 10:30:00" if lang == "en" else "再生 2026年11月27日(金) 10:30:00")


def test_board_updates_blocks_in_place(browser: webdriver.Chrome, dash_url: str) -> None:
    """Refreshes patch the page: the tiles and their chart stay the same DOM nodes across ticks."""
    browser.get(f"{dash_url}/?lang=en&{Q}")
    wait_js(browser, READ_TILES, lambda ts: len(ts) == 2 and all(t["bars"] for t in ts), "the tiles never rendered")
    browser.execute_script("""
      window.__ticks = 0;
      document.querySelectorAll('.tile, .tile .js-plotly-plot').forEach(e => { e.__mark = 1; });
      const orig = window.fetch;
      window.fetch = function(url, opts) {
        if (String(url).includes('_dash-update-component') && String(opts && opts.body).includes('"tick.n_intervals"')
            && String(opts && opts.body).includes('"k":"figs"')) { window.__ticks += 1; }
        return orig.apply(this, arguments);
      };""")
    wait_js(browser, "return window.__ticks", lambda n: n >= 3, "the tiles were not refreshed three times")
    marks = browser.execute_script(
        "return Array.from(document.querySelectorAll('.tile, .tile .js-plotly-plot')).map(e => e.__mark === 1)")
    assert marks and all(marks), "a refresh rebuilt the tiles instead of patching them"


def test_a_wall_screen_reloads_itself_after_a_while(browser: webdriver.Chrome, api: ApiServer) -> None:
    """Dash's renderer records every Interval tick in its undo history; the page resets it by reloading."""
    with dashboard_server(api.url, refresh_ms=500, reload_after_s=2) as url:
        browser.get(f"{url}/?lang=en&{Q}")
        wait_js(browser, READ_TILES, lambda ts: len(ts) == 2, "the tiles never rendered")
        browser.execute_script("window.__before_reload = 1;")
        WebDriverWait(browser, WAIT_S, poll_frequency=0.2).until(
            lambda d: d.execute_script("return window.__before_reload === undefined"))
        wait_js(browser, READ_TILES, lambda ts: len(ts) == 2 and all(t["good"] for t in ts),
                "the tiles did not come back after the reload")


# ---- the line view -----------------------------------------------------------------------------------

READ_FIGS = """
const out = {};
document.querySelectorAll('.chart').forEach(g => {
  const p = g.querySelector('.js-plotly-plot');
  const kind = Array.from(g.classList).find(c => c.startsWith('chart-'));
  if (p && p.data && kind) out[kind.slice(6)] = {
    data: p.data.map(t => ({x: t.x, y: t.y, base: t.base, name: t.name})),
    title: (p.layout.title || {}).text || '', ytitle: ((p.layout.yaxis || {}).title || {}).text || ''};
});
const head = document.querySelector('.linehead, .machinehead');
out.head = head === null ? null : {text: head.innerText, state: head.querySelector('.pill').dataset.state};
return out;
"""


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_line_view_charts_equal_the_api(browser: webdriver.Chrome, dash_url: str, api: ApiServer,
                                        lang: Literal["en", "ja"]) -> None:
    line = "blade-1"
    st = get(api, f"lines/{line}/status", lang=lang)
    start = st["shift"]["start"]
    tp = get(api, f"lines/{line}/throughput", start=start, end=AS_OF, bucket="15m")
    dt = get(api, f"lines/{line}/downtime", start=start, end=AS_OF, lang=lang)
    oee = get(api, f"lines/{line}/oee", start=start, end=AS_OF, bucket="1h", lang=lang)
    machines = [m["id"] for m in st["machines"]]
    timelines = {m: get(api, f"machines/{m}/states", start=start, end=AS_OF, lang=lang)["timeline"] for m in machines}
    assert dt["pareto"] and tp["total_good"] > 0

    browser.get(f"{dash_url}/line/{line}?lang={lang}&{Q}")
    figs = wait_js(browser, READ_FIGS, lambda f: {"throughput", "cumulative", "gantt", "pareto", "oee"} <= set(f),
                   "the line view's charts never rendered")
    assert figs["head"]["state"] == line_state(st["machines"])[0] and st["name"] in figs["head"]["text"]
    assert f"{st['counts']['good']:,}" in figs["head"]["text"]
    # throughput per bucket against each bucket's target
    bars, target = figs["throughput"]["data"]
    assert bars["y"] == [p["good"] for p in tp["points"]]
    assert target["y"] == [round(p["target"], 2) for p in tp["points"]]
    # cumulative actual up to as_of; the plan runs across the whole shift
    plan, actual = figs["cumulative"]["data"]
    assert actual["y"] == [0, *(p["cumulative_good"] for p in tp["points"])]
    assert actual["y"][-1] == st["counts"]["good"]
    assert plan["y"][-1] == pytest.approx(st["counts"]["shift_target"], abs=0.01)
    # the state timeline: every stretch of every machine, once, in its state's trace
    per_state = {t["name"]: t for t in figs["gantt"]["data"]}
    names = STATE_EN if lang == "en" else STATE_JA
    for state, label in names.items():
        drawn = per_state[label]
        want = [x for m in machines for x in timelines[m] if x["state"] == state]
        assert len(drawn["x"] or []) == len(want), state
        assert drawn["x"] == [round((datetime.fromisoformat(x["end"]) - datetime.fromisoformat(x["start"]))
                                    .total_seconds() * 1000) for x in want]
    # downtime Pareto by reason, as the API ranks and names it
    minutes, cum = figs["pareto"]["data"]
    rows = dt["pareto"][:10]
    assert minutes["x"] == [r["label"] for r in rows]
    assert minutes["y"] == [round(r["seconds"] / 60, 1) for r in rows]
    assert cum["y"] == [round(r["cumulative_share"] * 100, 1) for r in rows]
    # OEE by hour with A, P, Q
    by_name = {t["name"]: t for t in figs["oee"]["data"]}
    assert [t["name"] for t in figs["oee"]["data"]] == (
        ["OEE", "Availability", "Performance", "Quality"] if lang == "en" else ["OEE", "稼働率", "性能", "良品率"])
    for trace, key in zip(by_name.values(), ("oee", "availability", "performance", "quality"), strict=True):
        assert trace["y"] == [None if p[key] is None else round(p[key] * 100, 1) for p in oee["points"]]
    titles = [figs[k]["title"] for k in ("throughput", "cumulative", "gantt", "pareto", "oee")]
    assert titles == (["Good per 15 min vs target", "Cumulative actual vs plan", "State timeline",
                       "Downtime Pareto by reason", "OEE by hour"] if lang == "en" else
                      ["良品数（15分ごと）と目標", "累計実績と計画", "稼働状態", "停止時間パレート（理由別）",
                       "時間別OEE"])


# ---- the machine view --------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_machine_view_equals_the_api(browser: webdriver.Chrome, dash_url: str, api: ApiServer,
                                     lang: Literal["en", "ja"]) -> None:
    st = get(api, "lines/blade-1/status", lang=lang)
    m = next(x for x in st["machines"] if x["id"] == "cnc-1")
    start = st["shift"]["start"]
    gauge = get(api, "machines/cnc-1/signals/spindle_temp", start=start, end=AS_OF, bucket="5m")
    timeline = get(api, "machines/cnc-1/states", start=start, end=AS_OF, lang=lang)["timeline"]
    assert gauge["unit"] == "°C" and any(p["count"] for p in gauge["points"])

    browser.get(f"{dash_url}/machine/cnc-1?lang={lang}&{Q}")
    figs = wait_js(browser, READ_FIGS, lambda f: {"states", "gauge"} <= set(f), "the machine view never rendered")
    assert figs["head"]["state"] == m["state"] and m["name"] in figs["head"]["text"]
    assert (STATE_EN if lang == "en" else STATE_JA)[m["state"]] in figs["head"]["text"]
    mx, mn, mean = figs["gauge"]["data"]
    assert mean["y"] == [None if p["mean"] is None else round(p["mean"], 3) for p in gauge["points"]]
    assert mn["y"] == [p["min"] for p in gauge["points"]] and mx["y"] == [p["max"] for p in gauge["points"]]
    assert figs["gauge"]["ytitle"] == "°C"
    assert figs["gauge"]["title"] == ("spindle_temp history (°C)" if lang == "en" else "spindle_temp の推移 (°C)")
    drawn = sum(len(t["x"] or []) for t in figs["states"]["data"])
    assert drawn == len(timeline) and drawn > 1


def test_unknown_ids_say_so(browser: webdriver.Chrome, dash_url: str) -> None:
    browser.get(f"{dash_url}/line/nope?lang=en&{Q}")
    WebDriverWait(browser, WAIT_S).until(lambda d: "No line nope" in d.find_element("id", "page").text)
    browser.get(f"{dash_url}/machine/nope?lang=ja&{Q}")
    WebDriverWait(browser, WAIT_S).until(lambda d: "設備 nope はありません" in d.find_element("id", "page").text)
