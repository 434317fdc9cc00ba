"""Plant catalogue, OEE, downtime, state timelines and gauges over HTTP, against a real SQLite store
filled from a fast-forward run of the demo plant; counts and state seconds are checked against the
simulator's ledger (tests/support/ledger.py), not only against core.oee."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.auth import Auth
from core import oee
from core.plant import Plant, load_plant
from core.store.sqlite import SqliteStore
from tests.api.support import FailingStore
from tests.api.test_api import serve
from tests.conftest import DEMO_PLANT
from tests.support.fastforward import fast_forward_db
from tests.support.ledger import (
    clipped_ms,
    micro_flags,
    part_counts,
    read_ledger,
    state_seconds_between,
    state_stretches,
)

V1 = "/api/v1"
RUN_START = datetime.fromisoformat("2026-11-27T06:00:00+09:00")  # a Friday; the day shift starts at 08:00
RUN_END = datetime.fromisoformat("2026-11-27T12:00:00+09:00")
T8 = "2026-11-27T08:00:00+09:00"
T10 = "2026-11-27T10:00:00+09:00"
T11 = "2026-11-27T11:00:00+09:00"
W = {"start": T8, "end": T11}
SEED = 11

OPEN = Auth.open_reads()  # these tests are about figures, not tokens (tests/api/test_auth.py is)


def t(s: str) -> datetime:
    return datetime.fromisoformat(s)


@dataclass
class Run:
    plant: Plant
    records: list[dict[str, Any]]
    samples: Path
    db: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    d = tmp_path_factory.mktemp("figures_api")
    plant = load_plant(DEMO_PLANT)
    db, samples, truth = fast_forward_db(plant, SEED, RUN_START, RUN_END, d, "figures.db")
    yield Run(plant, read_ledger(truth), samples, db)


@pytest.fixture
async def client(run: Run) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(run.plant, SqliteStore(run.db), auth=OPEN)) as c:
        yield c


async def direct(r: Run, fn: Any) -> Any:
    store = SqliteStore(r.db)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# ---- OpenAPI and /plant ---------------------------------------------------------------------------------

PATHS = {"/plant": False, "/lines/{line_id}/oee": True, "/machines/{machine_id}/oee": True,
         "/lines/{line_id}/downtime": True, "/machines/{machine_id}/states": True,
         "/machines/{machine_id}/signals/{signal}": True}


async def test_openapi_documents_every_endpoint_with_examples(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for path, tabular in PATHS.items():
        op = doc["paths"][V1 + path]["get"]
        ok = op["responses"]["200"]["content"]
        assert "example" in ok["application/json"], path
        assert ("text/csv" in ok) == tabular, path
        if path != "/plant":
            assert {"404", "422", "503"} <= set(op["responses"]), path


async def test_plant_in_both_languages(client: httpx.AsyncClient) -> None:
    ja = (await client.get(f"{V1}/plant")).json()  # site.locale is ja
    assert ja["site"] == {"id": "ashikaga-1", "name": "足利第一工場", "timezone": "Asia/Tokyo", "locale": "ja"}
    assert ja["calendar"]["micro_stop_s"] == 120
    day = ja["calendar"]["shifts"][0]
    assert day == {"id": "day", "name": "日勤", "start": "08:00", "end": "17:00",
                   "days": ["mon", "tue", "wed", "thu", "fri"],
                   "breaks": [["10:00", "10:10"], ["12:00", "12:45"], ["15:00", "15:10"]]}
    assert "2026-12-31" in ja["calendar"]["holidays"]
    reasons = {r["code"]: r for r in ja["reasons"]}
    assert reasons[20] == {"code": 20, "name": "主軸異常", "category": "breakdown"}
    assert {"id": "TB-100", "name": "タービンブレード100", "ideal_cycle_s": 28} in ja["products"]
    blade = ja["lines"][0]
    assert (blade["id"], blade["name"]) == ("blade-1", "タービンブレード1号ライン")
    cnc = blade["machines"][0]
    assert (cnc["id"], cnc["name"], cnc["output"]) == ("cnc-1", "5軸マシニング1", False)
    assert [m["output"] for m in blade["machines"]] == [False, False, False, True]
    sigs = {s["name"]: s for s in cnc["signals"]}
    assert sigs["good"] == {"name": "good", "kind": "counter", "unit": None}
    assert sigs["state"]["kind"] == "state" and sigs["reason"]["kind"] == "reason"
    assert sigs["product"]["kind"] == "product"
    assert sigs["spindle_temp"] == {"name": "spindle_temp", "kind": "gauge", "unit": "°C"}
    en = (await client.get(f"{V1}/plant", headers={"Accept-Language": "en-US,en;q=0.9"})).json()
    assert en["site"]["name"] == "Ashikaga Plant 1"
    assert [s["name"] for s in en["calendar"]["shifts"]] == ["Day shift", "Night shift"]
    assert {r["code"]: r["name"] for r in en["reasons"]}[20] == "Spindle fault"
    assert en["lines"][0]["machines"][0]["name"] == "5-axis CNC 1"
    assert (await client.get(f"{V1}/plant", params={"lang": "de"})).status_code == 422


# ---- OEE -------------------------------------------------------------------------------------------------


async def test_machine_oee_matches_the_ledger_and_core(client: httpx.AsyncClient, run: Run) -> None:
    for mid in ("cnc-1", "inspect-1", "weld-2"):
        r = await client.get(f"{V1}/machines/{mid}/oee", params=W)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["kind"], body["id"], body["bucket"], body["points"]) == ("machine", mid, None, [])
        assert (body["start"], body["end"], body["shift"]) == (T8, T11, None)
        f = body["figures"]
        truth = part_counts(run.records, t(T8), t(T11))
        assert f["counts"] == {"good": truth.good[mid], "scrap": truth.scrap[mid],
                               "total": truth.good[mid] + truth.scrap[mid]}
        assert truth.good[mid] > 50
        # 08:00–11:00 holds the 10:00–10:10 break: scheduled 3 h, planned production at most 2 h 50 min
        assert f["times"]["calendar_s"] == f["times"]["scheduled_s"] == 3 * 3600
        assert f["times"]["breaks_s"] == 600
        assert f["times"]["planned_production_s"] <= 3 * 3600 - 600
        assert not f["no_data"]
        for k in ("availability", "performance", "quality", "oee", "teep"):
            assert 0 < f[k] <= 1.2, (mid, k, f[k])
        assert f["oee"] == pytest.approx(f["availability"] * f["performance"] * f["quality"])
        m = await direct(run, lambda st, mid=mid: oee.machine_oee_from_store(st, run.plant, mid, t(T8), t(T11)))
        assert f["oee"] == pytest.approx(m.oee)
        assert f["times"]["run_s"] == pytest.approx(m.run_s)
        assert f["losses"]["breakdowns_s"] == pytest.approx(m.losses.breakdowns_s)
        # the running time is the ledger's running seconds inside planned production time
        own = state_seconds_between(run.records, mid, t(T8), t(T10))[0]
        assert f["times"]["running_s"] >= own.get("running", 0) - 0.01  # 08–10 has no break: all of it counts


async def test_line_oee_counts_output_good_and_all_scrap(client: httpx.AsyncClient, run: Run) -> None:
    r = await client.get(f"{V1}/lines/blade-1/oee", params={**W, "lang": "en"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["kind"], body["id"], body["name"]) == ("line", "blade-1", "Turbine blade line 1")
    truth = part_counts(run.records, t(T8), t(T11))
    machines = ["cnc-1", "cnc-2", "deburr-1", "inspect-1"]
    f = body["figures"]
    assert f["counts"]["good"] == truth.good["inspect-1"]
    assert f["counts"]["scrap"] == sum(truth.scrap[m] for m in machines)
    lo = await direct(run, lambda st: oee.line_oee_from_store(st, run.plant, "blade-1", t(T8), t(T11)))
    assert (f["availability"], f["performance"], f["quality"], f["oee"]) == pytest.approx(
        (lo.availability, lo.performance, lo.quality, lo.oee))
    assert f["times"]["planned_production_s"] == pytest.approx(lo.planned_production_s)
    # the line's loss tree is its output machine's (it partitions the line's planned production time)
    assert f["losses"]["starved_blocked_s"] == pytest.approx(lo.losses.starved_blocked_s)
    out = next(st for st in lo.stations if st.machine == "inspect-1")
    assert f["losses"]["micro_stops_s"] == pytest.approx(out.micro_stop_s) == pytest.approx(f["times"]["micro_stop_s"])


async def test_oee_series_per_hour(client: httpx.AsyncClient, run: Run) -> None:
    body = (await client.get(f"{V1}/lines/press-2/oee", params={**W, "bucket": "1h"})).json()
    assert body["bucket"] == "1h"
    pts = body["points"]
    assert [p["start"] for p in pts] == [T8, "2026-11-27T09:00:00+09:00", T10]
    assert pts[-1]["end"] == T11
    for p in pts:
        truth = part_counts(run.records, t(p["start"]), t(p["end"]))
        assert p["counts"]["good"] == truth.good["pack-2"]
        assert p["times"]["calendar_s"] == 3600
    assert sum(p["counts"]["good"] for p in pts) == body["figures"]["counts"]["good"]
    assert pts[2]["times"]["breaks_s"] == 600
    # a window not on the grid: the first and last points are clipped to it
    odd = (await client.get(f"{V1}/machines/pack-2/oee", params={
        "start": "2026-11-27T08:30:00+09:00", "end": "2026-11-27T09:45:00+09:00", "bucket": "1h"})).json()
    assert [(p["start"], p["end"]) for p in odd["points"]] == [
        ("2026-11-27T08:30:00+09:00", "2026-11-27T09:00:00+09:00"),
        ("2026-11-27T09:00:00+09:00", "2026-11-27T09:45:00+09:00")]


async def test_oee_by_shift(client: httpx.AsyncClient, run: Run) -> None:
    cur = (await client.get(f"{V1}/lines/blade-1/oee", params={"shift": "current",
                                                               "as_of": "2026-11-27T10:30:00+09:00"})).json()
    assert cur["shift"] == {"id": "day", "name": "日勤", "day": "2026-11-27", "start": T8,
                            "end": "2026-11-27T17:00:00+09:00"}
    assert (cur["start"], cur["end"]) == (T8, "2026-11-27T10:30:00+09:00")  # cut at as_of
    assert cur["as_of"] == "2026-11-27T10:30:00+09:00"
    truth = part_counts(run.records, t(T8), t("2026-11-27T10:30:00+09:00"))
    assert cur["figures"]["counts"]["good"] == truth.good["inspect-1"]
    named = (await client.get(f"{V1}/lines/blade-1/oee", params={
        "shift": "day", "date": "2026-11-27", "as_of": "2026-11-27T10:30:00Z"})).json()
    assert (named["start"], named["end"]) == (T8, "2026-11-27T17:00:00+09:00")  # ended before as_of
    # the previous shift (Thursday night) has no data: no_data and null ratios, never 100 %
    prev = (await client.get(f"{V1}/machines/cnc-1/oee", params={"shift": "previous",
                                                                 "as_of": "2026-11-27T07:00:00+09:00"})).json()
    assert prev["shift"]["id"] == "night" and prev["shift"]["day"] == "2026-11-26"
    f = prev["figures"]
    assert f["no_data"] is True
    assert [f[k] for k in ("availability", "performance", "quality", "oee", "teep")] == [None] * 5
    assert f["losses"]["offline_s"] > 0  # no state facts then: offline


# ---- downtime and states ---------------------------------------------------------------------------------


def expected_stop_seconds(r: Run, machine: str, start: datetime, end: datetime) -> Counter[str]:
    """The ledger's stop seconds per state of one machine in a window without breaks or planned state,
    starved/blocked idle left out unless it is a micro-stop (as the module docstring of core.oee says);
    stops judged whole (tests.support.ledger.micro_flags)."""
    out: Counter[str] = Counter()
    micro_ms = r.plant.calendar.micro_stop_s * 1000
    stretches = state_stretches(r.records, machine)
    for s, micro in zip(stretches, micro_flags(stretches, micro_ms), strict=True):
        n = clipped_ms(s, start, end)
        if not n or s.state in ("running", "planned"):
            continue
        cat = r.plant.reasons[s.reason].category if s.reason in r.plant.reasons else None
        if s.state == "idle" and cat in ("starved", "blocked") and not micro:
            continue
        out[s.state] += n
    return Counter({k: v / 1000 for k, v in out.items()})


async def test_downtime_matches_the_ledger(client: httpx.AsyncClient, run: Run) -> None:
    r = await client.get(f"{V1}/lines/blade-1/downtime", params={"start": T8, "end": T10, "lang": "en"})
    assert r.status_code == 200, r.text
    body = r.json()
    events = body["events"]
    assert events, "two hours of the demo line without a stop"
    for mid in ("cnc-1", "cnc-2", "deburr-1", "inspect-1"):
        got: Counter[str] = Counter()
        for ev in events:
            if ev["machine"] == mid:
                got[ev["state"]] += ev["seconds"]
        want = expected_stop_seconds(run, mid, t(T8), t(T10))
        assert set(got) == set(want), mid
        for k in want:
            assert got[k] == pytest.approx(want[k], abs=0.01), (mid, k)
    for ev in events:
        assert t(T8) <= t(ev["start"]) < t(ev["end"]) <= t(T10)
        assert ev["seconds"] == pytest.approx((t(ev["end"]) - t(ev["start"])).total_seconds())
        if ev["reason"] in run.plant.reasons:
            assert ev["label"] == run.plant.reasons[ev["reason"]].name.en  # type: ignore[union-attr]
    pareto = body["pareto"]
    assert pareto == sorted(pareto, key=lambda p: -p["seconds"])
    own = [ev for ev in events if not ev["micro_stop"]]
    assert body["total_s"] == pytest.approx(sum(ev["seconds"] for ev in own))
    assert sum(p["count"] for p in pareto) == len(own)
    assert pareto[-1]["cumulative_share"] == pytest.approx(1.0)
    ja = (await client.get(f"{V1}/lines/blade-1/downtime", params={"start": T8, "end": T10})).json()
    for p_ja, p_en in zip(ja["pareto"], pareto, strict=True):
        assert p_ja["reason"] == p_en["reason"]
        if p_en["reason"] in run.plant.reasons:
            assert p_ja["label"] == run.plant.reasons[p_en["reason"]].name.ja  # type: ignore[union-attr]


async def test_state_timeline_is_clipped_and_matches_the_ledger(client: httpx.AsyncClient, run: Run) -> None:
    start, end = "2026-11-27T09:17:03.250000+09:00", "2026-11-27T11:02:00+09:00"
    for mid in ("cnc-2", "weld-2"):
        r = await client.get(f"{V1}/machines/{mid}/states", params={"start": start, "end": end, "lang": "en"})
        assert r.status_code == 200, r.text
        body = r.json()
        tl = body["timeline"]
        assert tl[0]["start"] == start and t(tl[0]["since"]) < t(start)  # began before the window
        assert tl[-1]["end"] == end
        for a, b in pairwise(tl):
            assert a["end"] == b["start"]
            assert (a["state"], a["reason"]) != (b["state"], b["reason"])
        want_state, want_reason = state_seconds_between(run.records, mid, t(start), t(end))
        assert body["state_seconds"] == pytest.approx(want_state, abs=0.01)
        by_reason: Counter[tuple[str, int | None]] = Counter()
        for x in tl:
            by_reason[(x["state"], x["reason"])] += x["seconds"]
            if x["reason"] is None:
                assert x["label"] == {"running": "Running", "idle": "Idle", "down": "Down",
                                      "changeover": "Changeover", "planned": "Planned stop"}[x["state"]]
        assert dict(by_reason) == pytest.approx(want_reason, abs=0.01)
    before = (await client.get(f"{V1}/machines/cnc-1/states", params={
        "start": "2026-11-27T05:00:00+09:00", "end": "2026-11-27T06:30:00+09:00"})).json()
    assert before["timeline"][0]["state"] == "offline"  # no data before the run
    assert before["timeline"][0]["label"] == "データなし"
    assert before["state_seconds"]["offline"] == 3600


# ---- gauges --------------------------------------------------------------------------------------------


async def test_gauge_series_matches_the_raw_samples(client: httpx.AsyncClient, run: Run) -> None:
    r = await client.get(f"{V1}/machines/cnc-1/signals/spindle_temp",
                         params={"start": T8, "end": "2026-11-27T09:00:00+09:00", "bucket": "5m"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["unit"], body["bucket"], len(body["points"])) == ("°C", "5m", 12)
    values: dict[int, list[float]] = {}
    with run.samples.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["machine"] == "cnc-1" and row["signal"] == "spindle_temp":
                ts = t(row["time"].replace("Z", "+00:00"))
                if t(T8) <= ts < t("2026-11-27T09:00:00+09:00"):
                    values.setdefault(int((ts - t(T8)) / timedelta(minutes=5)), []).append(float(row["value"]))
    for i, p in enumerate(body["points"]):
        vs = values.get(i, [])
        assert p["count"] == len(vs) > 0
        assert p["mean"] == pytest.approx(sum(vs) / len(vs))
        assert (p["min"], p["max"]) == pytest.approx((min(vs), max(vs)))
    # empty buckets (before the run) are there with count 0
    early = (await client.get(f"{V1}/machines/cnc-1/signals/spindle_temp", params={
        "start": "2026-11-27T05:00:00+09:00", "end": "2026-11-27T07:00:00+09:00", "bucket": "1h"})).json()
    assert [(p["count"] > 0, p["mean"] is None) for p in early["points"]] == [(False, True), (True, False)]


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/machines/cnc-1/signals/oil_temp", 404, ["oil_temp", "spindle_temp"]),
    ("/machines/cnc-1/signals/good", 422, ["counter", "not a gauge", "spindle_temp"]),
    ("/machines/cnc-1/signals/state", 422, ["state signal", "spindle_temp"]),
    ("/machines/deburr-1/signals/good", 422, ["no gauges"]),
    ("/machines/nope/signals/spindle_temp", 404, ["nope", "cnc-1"]),
])
async def test_gauge_errors_name_the_gauges(client: httpx.AsyncClient, path: str, status: int,
                                            words: list[str]) -> None:
    r = await client.get(V1 + path, params=W)
    assert r.status_code == status, r.text
    for w in words:
        assert w in r.json()["detail"]


# ---- CSV -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "params", "key", "first_col"), [
    ("/lines/blade-1/oee", {**W, "bucket": "1h"}, "points", "start"),
    ("/machines/cnc-1/oee", W, None, "start"),
    ("/lines/blade-1/downtime", W, "events", "start"),
    ("/machines/cnc-1/states", W, "timeline", "start"),
    ("/machines/press-2a/signals/pressure", {**W, "bucket": "15m"}, "points", "start"),
])
async def test_csv_by_parameter_or_accept_header(client: httpx.AsyncClient, path: str, params: dict[str, str],
                                                 key: str | None, first_col: str) -> None:
    js = (await client.get(V1 + path, params=params)).json()
    want = js[key] if key else [js["figures"]]
    by_param = await client.get(V1 + path, params={**params, "format": "csv"})
    by_header = await client.get(V1 + path, params=params, headers={"Accept": "text/csv"})
    for r in (by_param, by_header):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        assert r.text.splitlines()[0].split(",")[0] == first_col
        table = rows(r.text)
        assert len(table) == len(want) > 0
        assert [row["start"] for row in table] == [w["start"] for w in want]
    assert by_param.text == by_header.text


async def test_csv_contents(client: httpx.AsyncClient, run: Run) -> None:
    oee_rows = rows((await client.get(f"{V1}/lines/blade-1/oee", params={**W, "bucket": "1h",
                                                                          "format": "csv"})).text)
    truth = part_counts(run.records, t(T8), t("2026-11-27T09:00:00+09:00"))
    assert int(oee_rows[0]["good"]) == truth.good["inspect-1"]
    assert {"availability", "oee", "planned_production_s", "breakdowns_s", "no_data"} <= set(oee_rows[0])
    ev = rows((await client.get(f"{V1}/lines/blade-1/downtime", params={**W, "format": "csv", "lang": "en"})).text)
    assert list(ev[0]) == ["start", "end", "machine", "state", "reason", "label", "category", "seconds",
                           "length_s", "micro_stop", "stop_start"]
    par = rows((await client.get(f"{V1}/lines/blade-1/downtime",
                                 params={**W, "format": "csv", "table": "pareto"})).text)
    assert {"label", "seconds", "count", "share", "cumulative_share"} <= set(par[0])
    tl = rows((await client.get(f"{V1}/machines/weld-2/states", params={**W, "format": "csv"})).text)
    assert sum(float(x["seconds"]) for x in tl) == pytest.approx(3 * 3600)


# ---- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/lines/nope/oee", "/lines/nope/downtime", "/machines/nope/oee",
                                  "/machines/nope/states"])
async def test_unknown_ids_are_404_naming_them(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(V1 + path, params=W)
    assert r.status_code == 404
    assert "nope" in r.json()["detail"] and ("blade-1" in r.json()["detail"] or "cnc-1" in r.json()["detail"])


AS_OF = "2026-11-27T10:30:00+09:00"


@pytest.mark.parametrize(("params", "words"), [
    ({"start": "2026-11-27T08:00:00", "end": T11}, ["start", "no UTC offset", "+09:00"]),
    ({"start": T11, "end": T8}, ["empty or reversed"]),
    ({"start": T8}, ["end missing", "shift=current"]),
    ({**W, "bucket": "1w"}, ["1w", "30s, 5m, 1h, 1d"]),
    ({**W, "bucket": "1s"}, ["10800 buckets", "at most 500"]),
    ({"shift": "late", "as_of": AS_OF}, ["unknown shift 'late'", "current, previous", "day, night"]),
    ({"shift": "day", "date": "2026-11-28", "as_of": AS_OF}, ["does not run on 2026-11-28"]),
    ({"shift": "day", "date": "27/11/2026", "as_of": AS_OF}, ["YYYY-MM-DD"]),
    ({"shift": "day", "as_of": AS_OF}, ["needs date=YYYY-MM-DD"]),
    ({"shift": "night", "date": "2026-11-27", "as_of": AS_OF}, ["has not begun"]),
    ({"shift": "current", "as_of": "2026-11-28T10:00:00+09:00"}, ["no current shift"]),
    ({"shift": "current", "as_of": "2026-11-27T10:30:00"}, ["as_of", "no UTC offset"]),
    ({**W, "shift": "current"}, ["either shift or start and end"]),
    ({**W, "date": "2026-11-27"}, ["date needs shift"]),
])
async def test_bad_windows_are_422_saying_what_is_allowed(client: httpx.AsyncClient, params: dict[str, str],
                                                          words: list[str]) -> None:
    for path in ("/lines/blade-1/oee", "/machines/cnc-1/oee", "/lines/blade-1/downtime", "/machines/cnc-1/states",
                 "/machines/cnc-1/signals/spindle_temp"):
        if "bucket" in params and path.endswith(("downtime", "states")):
            continue  # these take no bucket
        p = params
        if path.endswith("spindle_temp") and params.get("bucket") == "1s":
            p = {"start": "2026-01-01T00:00:00Z", "end": "2026-12-31T00:00:00Z", "bucket": "1m"}
        r = await client.get(V1 + path, params=p)
        assert r.status_code == 422, (path, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str)
        for w in words if p is params else ["at most 10000"]:
            assert w in detail, (path, detail)


async def test_store_unavailable_is_503_with_retry_after(run: Run) -> None:
    store = FailingStore(SqliteStore(run.db))
    async with serve(create_app(run.plant, store, retry_after_s=9, auth=OPEN)) as c:
        for path, params in [("/lines/blade-1/oee", W), ("/machines/cnc-1/oee", {**W, "bucket": "1h"}),
                             ("/lines/blade-1/downtime", W), ("/machines/cnc-1/states", W),
                             ("/machines/cnc-1/signals/spindle_temp", W)]:
            r = await c.get(V1 + path, params=params)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["Retry-After"] == "9"
            assert "unavailable" in r.json()["detail"]
        assert (await c.get(f"{V1}/plant")).status_code == 200  # the plant file needs no store
        store.failing = False
        assert (await c.get(f"{V1}/machines/cnc-1/states", params=W)).status_code == 200
