"""/lines/{id}/status and the throughput targets over a real SQLite store holding known facts.

The demo plant's day shift (Friday 2026-11-27, 08:00–17:00 JST) has breaks 10:00–10:10,
12:00–12:45 and 15:00–15:10; blade-1's target is 110 per hour."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.auth import Auth
from core import oee
from core.model import Fact, to_ns
from core.plant import Plant, load_plant
from core.store.sqlite import SqliteStore
from tests.api.support import jst, shift_facts, write_facts
from tests.api.test_api import serve
from tests.conftest import DEMO_PLANT

ST = "/api/v1/lines/blade-1/status"
TP = "/api/v1/lines/blade-1/throughput"
TPH = 110

OPEN = Auth.open_reads()  # these tests are about figures, not tokens (tests/api/test_auth.py is)


def state(t_ns: int, machine: str, value: str, reason: int | None = None) -> Fact:
    return Fact("state", t_ns, "blade-1", machine, "state", value, reason)


def status_facts() -> list[Fact]:
    """shift_facts (blade-1 good 10/20/5 at 08:05/09:30/10:20, scrap 2 + 1) plus states:

    cnc-1 running from 07:50, down (20, spindle fault) 10:20–10:25, running again from 10:25;
    cnc-2 idle (30, waiting for material) from 09:00, the same state written again at 09:30;
    deburr-1 nothing at all; inspect-1 running from 08:00."""
    return [
        state(to_ns(jst(2026, 11, 27, 7, 50)), "cnc-1", "running"),
        state(to_ns(jst(2026, 11, 27, 10, 20)), "cnc-1", "down", 20),
        state(to_ns(jst(2026, 11, 27, 10, 25)), "cnc-1", "running"),
        state(to_ns(jst(2026, 11, 27, 9, 0)), "cnc-2", "idle", 30),
        state(to_ns(jst(2026, 11, 27, 9, 30)), "cnc-2", "idle", 30),
        state(to_ns(jst(2026, 11, 27, 8, 0)), "inspect-1", "running"),
    ]


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def db(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("status") / "mieruka.db"
    write_facts(path, [*shift_facts(plant), *status_facts()])
    return path


@pytest.fixture
async def client(plant: Plant, db: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(plant, SqliteStore(db), auth=OPEN)) as c:
        yield c


async def get_ok(client: httpx.AsyncClient, url: str, **params: str) -> dict:  # type: ignore[type-arg]
    r = await client.get(url, params=params)
    assert r.status_code == 200, r.text
    body: dict = r.json()  # type: ignore[type-arg]
    return body


# ---- status ----------------------------------------------------------------------------------------


async def test_actual_vs_target_excludes_the_break(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, ST, as_of="2026-11-27T10:30:00+09:00")
    assert body["line"] == "blade-1" and body["as_of"] == "2026-11-27T10:30:00+09:00"
    assert body["shift"] == {"id": "day", "name": "日勤", "day": "2026-11-27", "start": "2026-11-27T08:00:00+09:00",
                             "end": "2026-11-27T17:00:00+09:00"}
    c = body["counts"]
    # 2.5 h since 08:00, of which 10:00–10:10 is a break: 8400 s of planned production time
    assert c["elapsed_s"] == 9000.0
    assert c["planned_production_elapsed_s"] == 8400.0
    assert (c["good"], c["scrap"]) == (35, 3)
    assert c["target_per_hour"] == TPH
    assert c["expected"] == pytest.approx(TPH * 8400 / 3600, abs=1e-9)
    assert c["difference"] == pytest.approx(35 - TPH * 8400 / 3600, abs=1e-9)
    assert c["standing"] == "behind"
    assert c["rate_per_hour"] == pytest.approx(35 * 3600 / 8400, abs=1e-9)
    # the whole shift: 9 h − 65 min of breaks
    assert c["shift_target"] == pytest.approx(TPH * (9 * 3600 - 65 * 60) / 3600, abs=1e-9)


async def test_during_a_break_the_target_stands_still(client: httpx.AsyncClient) -> None:
    at_break = (await get_ok(client, ST, as_of="2026-11-27T10:00:00+09:00"))["counts"]
    in_break = (await get_ok(client, ST, as_of="2026-11-27T10:07:00+09:00"))["counts"]
    assert at_break["expected"] == in_break["expected"] == pytest.approx(220.0, abs=1e-9)
    assert in_break["planned_production_elapsed_s"] == 7200.0
    assert in_break["elapsed_s"] == 7620.0


async def test_ahead_when_good_exceeds_expected(client: httpx.AsyncClient) -> None:
    # 10 parts at 08:05 against 110/h × 300.001 s ≈ 9.17 expected: ahead
    c = (await get_ok(client, ST, as_of="2026-11-27T08:05:00.001+09:00"))["counts"]
    assert c["good"] == 10
    assert c["expected"] == pytest.approx(TPH * 300.001 / 3600, abs=1e-9)
    assert c["standing"] == "ahead" and c["difference"] > 0


async def test_oee_so_far_is_core_oee_over_the_shift_so_far(client: httpx.AsyncClient, plant: Plant,
                                                           db: Path) -> None:
    body = await get_ok(client, ST, as_of="2026-11-27T10:30:00+09:00")
    store = SqliteStore(db)
    await store.open()
    try:
        want = await oee.line_oee_from_store(store, plant, "blade-1", jst(2026, 11, 27, 8), jst(2026, 11, 27, 10, 30))
    finally:
        await store.close()
    assert body["oee"] == {"availability": want.availability, "performance": want.performance,
                           "quality": want.quality, "oee": want.oee, "no_data": False}
    assert body["oee"]["quality"] == pytest.approx(35 / 38)


async def test_states_reasons_since_and_last_data(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, ST, as_of="2026-11-27T10:22:00+09:00", lang="en")
    assert body["name"] == "Turbine blade line 1"
    by = {m["id"]: m for m in body["machines"]}
    assert [m["id"] for m in body["machines"]] == ["cnc-1", "cnc-2", "deburr-1", "inspect-1"]
    assert by["cnc-1"]["name"] == "5-axis CNC 1"
    assert (by["cnc-1"]["state"], by["cnc-1"]["since"]) == ("down", "2026-11-27T10:20:00+09:00")
    assert by["cnc-1"]["reason"] == {"code": 20, "label": "Spindle fault", "category": "breakdown"}
    # the same state written twice is one stretch: since its first write
    assert (by["cnc-2"]["state"], by["cnc-2"]["since"]) == ("idle", "2026-11-27T09:00:00+09:00")
    assert by["cnc-2"]["reason"] == {"code": 30, "label": "Waiting for material", "category": "starved"}
    assert by["deburr-1"] == {"id": "deburr-1", "name": "Deburring 1", "state": "offline", "reason": None,
                              "since": None, "last_data": None, "stale": False}
    assert (by["inspect-1"]["state"], by["inspect-1"]["reason"]) == ("running", None)
    # last data: the newest fact of any kind in the store
    assert by["cnc-1"]["last_data"] == "2026-11-27T10:25:00+09:00"
    assert by["cnc-2"]["last_data"] == "2026-11-27T09:30:00+09:00"
    assert by["inspect-1"]["last_data"] == "2026-11-27T10:20:00+09:00"
    later = {m["id"]: m for m in (await get_ok(client, ST, as_of="2026-11-27T10:30:00+09:00"))["machines"]}
    assert (later["cnc-1"]["state"], later["cnc-1"]["since"], later["cnc-1"]["reason"]) == (
        "running", "2026-11-27T10:25:00+09:00", None)
    before = {m["id"]: m for m in (await get_ok(client, ST, as_of="2026-11-27T08:30:00+09:00"))["machines"]}
    assert (before["cnc-1"]["state"], before["cnc-1"]["since"]) == ("running", "2026-11-27T07:50:00+09:00")
    assert (before["cnc-2"]["state"], before["cnc-2"]["since"]) == ("offline", None)


async def test_language_from_param_header_and_site_locale(client: httpx.AsyncClient) -> None:
    q = {"as_of": "2026-11-27T10:22:00+09:00"}
    ja = (await client.get(ST, params=q)).json()  # site.locale is ja
    assert ja["name"] == "タービンブレード1号ライン"
    assert ja["machines"][0]["reason"]["label"] == "主軸異常"
    assert ja["machines"][0]["name"] == "5軸マシニング1"
    en = (await client.get(ST, params=q, headers={"Accept-Language": "en-US,en;q=0.9"})).json()
    assert en["machines"][0]["reason"]["label"] == "Spindle fault"
    assert (await client.get(ST, params={**q, "lang": "ja"}, headers={"Accept-Language": "en"})).json()[
        "machines"][1]["reason"]["label"] == "材料待ち"


async def test_no_shift_running_gives_states_but_no_counts(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, ST, as_of="2026-11-28T10:30:00+09:00", lang="en")  # Saturday
    assert (body["shift"], body["counts"], body["oee"]) == (None, None, None)
    by = {m["id"]: m for m in body["machines"]}
    assert (by["cnc-1"]["state"], by["cnc-1"]["since"]) == ("running", "2026-11-27T10:25:00+09:00")
    evening = await get_ok(client, ST, as_of="2026-11-27T18:00:00+09:00")
    assert (evening["shift"], evening["counts"]) == (None, None)


async def test_first_instant_of_a_shift_and_a_line_without_data(client: httpx.AsyncClient) -> None:
    first = await get_ok(client, ST, as_of="2026-11-27T08:00:00+09:00")
    assert first["shift"]["id"] == "day"
    c = first["counts"]
    assert (c["good"], c["expected"], c["standing"], c["rate_per_hour"]) == (0, 0.0, "on_target", None)
    assert first["oee"] is None
    press = await get_ok(client, "/api/v1/lines/press-2/status", as_of="2026-11-27T10:30:00+09:00")
    assert press["counts"]["good"] == 7
    assert {m["state"] for m in press["machines"]} == {"offline"}
    assert press["oee"]["no_data"] is False and press["oee"]["availability"] in (None, 0.0)


async def test_status_errors(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/lines/nope/status")
    assert r.status_code == 404 and "nope" in r.json()["detail"] and "blade-1" in r.json()["detail"]
    r = await client.get(ST, params={"as_of": "2026-11-27T10:30:00"})
    assert r.status_code == 422 and "no UTC offset" in r.json()["detail"]
    r = await client.get(ST, params={"as_of": "9999-12-31T23:59:59-12:00"})
    assert r.status_code == 422 and "out of range" in r.json()["detail"]
    assert (await client.get(ST, params={"lang": "fr"})).status_code == 422
    assert (await client.get(ST)).status_code == 200  # as_of defaults to now


async def test_status_in_openapi_with_an_example(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    op = doc["paths"]["/api/v1/lines/{line_id}/status"]["get"]
    assert op["responses"]["200"]["content"]["application/json"]["example"]["line"] == "blade-1"
    assert {"404", "422", "503"} <= set(op["responses"])


# ---- throughput targets ------------------------------------------------------------------------------


async def test_throughput_target_per_bucket_and_cumulative(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, TP, start="2026-11-27T08:00:00+09:00", end="2026-11-27T11:00:00+09:00", bucket="1h")
    pts = body["points"]
    assert [(p["good"], p["scrap"]) for p in pts] == [(10, 2), (20, 1), (5, 0)]  # existing fields unchanged
    assert [p["target"] for p in pts] == pytest.approx([110.0, 110.0, 110 * 50 / 60], abs=1e-9)
    assert [p["cumulative_good"] for p in pts] == [10, 30, 35]
    assert [p["cumulative_target"] for p in pts] == pytest.approx([110.0, 220.0, 110 * 170 / 60], abs=1e-9)
    assert body["target_per_hour"] == TPH
    assert body["total_target"] == pytest.approx(110 * 170 / 60, abs=1e-9)


async def test_throughput_target_only_inside_the_window_and_the_shift(client: httpx.AsyncClient) -> None:
    # partial first and last buckets: only the window's part counts (08:30–09:00, 10:00–10:30 less the break)
    body = await get_ok(client, TP, start="2026-11-27T08:30:00+09:00", end="2026-11-27T10:30:00+09:00", bucket="1h")
    assert [p["target"] for p in body["points"]] == pytest.approx([55.0, 110.0, 110 * 20 / 60], abs=1e-9)
    # the shift ends at 17:00; the night shift starts at 20:00
    evening = await get_ok(client, TP, start="2026-11-27T16:00:00+09:00", end="2026-11-27T21:00:00+09:00",
                           bucket="1h")
    assert [p["target"] for p in evening["points"]] == pytest.approx([110.0, 0.0, 0.0, 0.0, 110.0], abs=1e-9)
    # a whole local day: Thursday's night shift after its 00:00–00:45 break (00:45–05:00), the day shift
    # less its 65 min of breaks, and Friday's night shift until midnight (20:00–24:00)
    day = await get_ok(client, TP, start="2026-11-27T00:00:00+09:00", end="2026-11-28T00:00:00+09:00", bucket="1d")
    assert day["points"][0]["target"] == pytest.approx(110 * (255 + 9 * 60 - 65 + 4 * 60) / 60, abs=1e-9)
    sat = await get_ok(client, TP, start="2026-11-28T08:00:00+09:00", end="2026-11-28T17:00:00+09:00", bucket="3h")
    assert {p["target"] for p in sat["points"]} == {0.0}


async def test_throughput_current_shift_total_target_is_status_expected(client: httpx.AsyncClient) -> None:
    q = {"as_of": "2026-11-27T10:30:00+09:00"}
    tp = await get_ok(client, TP, shift="current", bucket="30m", **q)
    st = await get_ok(client, ST, **q)
    assert tp["total_target"] == pytest.approx(st["counts"]["expected"], abs=1e-9)
    assert tp["points"][-1]["cumulative_good"] == st["counts"]["good"] == tp["total_good"]
    none = await get_ok(client, TP, shift="current", as_of="2026-11-28T10:30:00+09:00")
    assert (none["points"], none["total_target"], none["target_per_hour"]) == ([], 0.0, TPH)


# ---- every window endpoint takes the same windows; tabular ones CSV (issue 11) ------------------------


async def test_throughput_takes_previous_and_named_shifts(client: httpx.AsyncClient) -> None:
    # Friday's day shift, asked three ways: the same points (it refused shift=previous before)
    prev = await get_ok(client, TP, shift="previous", as_of="2026-11-27T21:00:00+09:00", bucket="3h")
    named = await get_ok(client, TP, shift="day", date="2026-11-27", as_of="2026-11-28T09:00:00+09:00", bucket="3h")
    plain = await get_ok(client, TP, start="2026-11-27T08:00:00+09:00", end="2026-11-27T17:00:00+09:00",
                         bucket="3h")
    assert prev["shift"]["id"] == named["shift"]["id"] == "day"
    assert prev["points"] == named["points"] == plain["points"]
    assert (prev["total_good"], prev["total_scrap"]) == (35, 3)


async def test_throughput_answers_csv(client: httpx.AsyncClient) -> None:
    q = {"start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T11:00:00+09:00", "bucket": "1h"}
    for r in (await client.get(TP, params={**q, "format": "csv"}),
              await client.get(TP, params=q, headers={"Accept": "text/csv"})):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        lines = r.text.strip().split("\r\n")
        assert lines[0] == "start,end,good,scrap,target,cumulative_good,cumulative_target"
        assert [ln.split(",")[2:4] for ln in lines[1:]] == [["10", "2"], ["20", "1"], ["5", "0"]]


async def test_a_window_after_as_of_has_no_state(client: httpx.AsyncClient) -> None:
    # cnc-1 was last seen running (10:25 on 2026-11-27); a window in 2030 is no data, not 'running'
    q = {"start": "2030-01-07T08:00:00+09:00", "end": "2030-01-07T09:00:00+09:00",
         "as_of": "2026-11-28T00:00:00+09:00"}
    states = await get_ok(client, "/api/v1/machines/cnc-1/states", **q)
    assert [(x["state"], x["seconds"]) for x in states["timeline"]] == [("offline", 3600.0)]
    fig = (await get_ok(client, "/api/v1/machines/cnc-1/oee", **q))["figures"]
    assert fig["no_data"] is True and fig["times"]["running_s"] == 0 and fig["times"]["planned_production_s"] == 0
