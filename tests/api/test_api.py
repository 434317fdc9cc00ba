"""The API over a real SQLite file store holding known facts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import Auth
from core.plant import Plant, load_plant
from core.store.sqlite import SqliteStore
from tests.api.support import FailingStore, shift_facts, write_facts
from tests.conftest import DEMO_PLANT

TP = "/api/v1/lines/blade-1/throughput"
W = {"start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T11:00:00+09:00"}

OPEN = Auth.open_reads()  # these tests are about figures, not tokens (tests/api/test_auth.py is)


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def db(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api") / "mieruka.db"
    write_facts(path, shift_facts(plant))
    return path


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run (ASGITransport alone does not run it)."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            yield c


@pytest.fixture
async def client(plant: Plant, db: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(plant, SqliteStore(db), auth=OPEN)) as c:
        yield c


async def test_healthz_and_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "store": "ok"}
    doc = (await client.get("/openapi.json")).json()
    assert {"/healthz", "/api/v1/lines", "/api/v1/lines/{line_id}/throughput", "/api/v1/shifts/current",
            "/api/v1/plant/site"} <= set(doc["paths"])


async def test_lines_in_the_requested_language(client: httpx.AsyncClient) -> None:
    ja = (await client.get("/api/v1/lines")).json()  # site.locale is ja
    assert [ln["id"] for ln in ja] == ["blade-1", "press-2"]
    assert ja[0]["name"] == "タービンブレード1号ライン"
    assert ja[0]["target_per_hour"] == 110
    assert ja[0]["machines"][0] == {"id": "cnc-1", "name": "5軸マシニング1"}
    en = (await client.get("/api/v1/lines", params={"lang": "en"})).json()
    assert en[0]["name"] == "Turbine blade line 1"
    assert en[1]["machines"][3] == {"id": "pack-2", "name": "Packing 2"}
    by_header = (await client.get("/api/v1/lines", headers={"Accept-Language": "fr-FR, en-US;q=0.8, ja;q=0.5"})).json()
    assert by_header[0]["name"] == "Turbine blade line 1"
    fallback = (await client.get("/api/v1/lines", headers={"Accept-Language": "fr, de;q=0.5"})).json()
    assert fallback[0]["name"] == "タービンブレード1号ライン"
    param_wins = (await client.get("/api/v1/lines", params={"lang": "ja"}, headers={"Accept-Language": "en"})).json()
    assert param_wins[0]["name"] == "タービンブレード1号ライン"
    assert (await client.get("/api/v1/lines", params={"lang": "fr"})).status_code == 422
    site = (await client.get("/api/v1/plant/site", params={"lang": "en"})).json()
    assert site == {"id": "ashikaga-1", "name": "Ashikaga Plant 1", "timezone": "Asia/Tokyo", "locale": "ja"}


async def test_throughput_shape(client: httpx.AsyncClient) -> None:
    r = await client.get(TP, params={**W, "bucket": "1h"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["line"] == "blade-1"
    assert body["bucket_s"] == 3600
    assert body["start"] == "2026-11-27T08:00:00+09:00"
    assert body["end"] == "2026-11-27T11:00:00+09:00"
    assert body["shift"] is None
    assert [(p["start"], p["good"], p["scrap"]) for p in body["points"]] == [
        ("2026-11-27T08:00:00+09:00", 10, 2), ("2026-11-27T09:00:00+09:00", 20, 1),
        ("2026-11-27T10:00:00+09:00", 5, 0)]
    assert (body["total_good"], body["total_scrap"]) == (35, 3)
    # same window in UTC, 30-minute buckets: zero-filled
    r = await client.get(TP, params={"start": "2026-11-26T23:00:00Z", "end": "2026-11-27T02:00:00Z", "bucket": "30m"})
    assert [p["good"] for p in r.json()["points"]] == [10, 0, 0, 20, 5, 0]
    day = (await client.get(TP, params={"start": "2026-11-27T00:00:00+09:00", "end": "2026-11-28T00:00:00+09:00",
                                 "bucket": "1d"})).json()
    assert [(p["start"], p["good"]) for p in day["points"]] == [("2026-11-27T00:00:00+09:00", 1035)]


async def test_plus_typed_into_a_url_is_read_as_the_offset(client: httpx.AsyncClient) -> None:
    r = await client.get(f"{TP}?start=2026-11-27T08:00:00+09:00&end=2026-11-27T11:00:00+09:00")
    assert r.status_code == 200, r.text
    assert r.json()["total_good"] == 35


async def test_current_shift(client: httpx.AsyncClient) -> None:
    r = await client.get(TP, params={"shift": "current", "as_of": "2026-11-27T10:30:00+09:00"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shift"] == {"id": "day", "name": "日勤", "day": "2026-11-27", "start": "2026-11-27T08:00:00+09:00",
                             "end": "2026-11-27T17:00:00+09:00"}
    assert (body["start"], body["end"]) == ("2026-11-27T08:00:00+09:00", "2026-11-27T10:30:00+09:00")
    assert body["total_good"] == 35
    assert len(body["points"]) == 3
    saturday = (await client.get(TP, params={"shift": "current", "as_of": "2026-11-28T10:30:00+09:00"})).json()
    assert (saturday["shift"], saturday["points"], saturday["total_good"]) == (None, [], 0)
    cur = (await client.get("/api/v1/shifts/current", params={"as_of": "2026-11-27T21:00:00+09:00"})).json()
    assert cur["shift"]["id"] == "night"
    assert cur["shift"]["end"] == "2026-11-28T05:00:00+09:00"
    evening = await client.get("/api/v1/shifts/current", params={"as_of": "2026-11-27T18:00:00+09:00"})
    assert evening.json()["shift"] is None
    assert "shift" in (await client.get("/api/v1/shifts/current")).json()  # as_of defaults to now


async def test_unknown_line_is_404_naming_it(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/lines/nope/throughput", params=W)
    assert r.status_code == 404
    assert "nope" in r.json()["detail"] and "blade-1" in r.json()["detail"]


@pytest.mark.parametrize(("params", "words"), [
    ({"start": "2026-11-27T08:00:00", "end": W["end"]}, ["start", "no UTC offset", "+09:00"]),
    ({"start": "yesterday", "end": W["end"]}, ["start", "not an ISO-8601"]),
    ({"start": W["end"], "end": W["start"]}, ["empty or reversed"]),
    ({"start": W["start"], "end": W["start"]}, ["empty or reversed"]),
    ({**W, "bucket": "1w"}, ["1w", "30s, 5m, 1h, 1d"]),
    ({"start": "2026-01-01T00:00:00Z", "end": "2026-12-31T00:00:00Z", "bucket": "1m"}, ["at most 10000"]),
    ({"start": "0001-01-01T00:00:00+09:00", "end": W["end"]}, ["out of range"]),
    ({"shift": "current", "as_of": "9999-12-31T23:59:59-12:00"}, ["as_of", "out of range"]),
    ({"start": W["start"]}, ["end missing", "shift=current"]),
    ({**W, "shift": "current"}, ["either shift or start and end", "shift=current|previous"]),
    ({"shift": "current", "as_of": "2026-11-27T10:30:00"}, ["as_of", "no UTC offset"]),
])
async def test_bad_requests_are_422_saying_what_is_allowed(client: httpx.AsyncClient, params: dict[str, str],
                                                     words: list[str]) -> None:
    r = await client.get(TP, params=params)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str)
    for w in words:
        assert w in detail


async def test_store_unavailable_is_503_with_retry_after(plant: Plant, db: Path) -> None:
    store = FailingStore(SqliteStore(db))
    async with serve(create_app(plant, store, retry_after_s=7, auth=OPEN)) as c:
        r = await c.get(TP, params=W)
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "7"
        assert "unavailable" in r.json()["detail"]
        assert (await c.get("/healthz")).json() == {"status": "ok", "store": "unavailable"}
        assert (await c.get("/api/v1/lines")).status_code == 200  # the plant file needs no store
        store.failing = False
        assert (await c.get(TP, params=W)).json()["total_good"] == 35
        assert (await c.get("/healthz")).json()["store"] == "ok"


async def test_store_down_at_startup_serves_503_until_it_is_back(plant: Plant, db: Path) -> None:
    store = FailingStore(SqliteStore(db), fail_open=True)
    async with serve(create_app(plant, store, auth=OPEN)) as c:
        r = await c.get(TP, params=W)
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert (await c.get("/healthz")).json()["store"] == "unavailable"
        store.failing = False
        assert (await c.get(TP, params=W)).json()["total_good"] == 35
