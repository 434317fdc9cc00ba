"""Computed once per refresh period: the cache key, sharing an in-flight computation, "now" aligned to the
period, the store-read counter and request durations in /metrics, and the status's bounded state reads.

The clock is injected (api.cache.Refresh): a test moves it instead of waiting for a period to pass."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest

from api.app import create_app
from api.auth import Auth
from api.cache import Refresh
from api.metrics import ApiMetrics
from api.settings import Settings
from api.tokens import TokenFile, create_token
from core.model import Fact, to_ns
from core.plant import Plant, load_plant
from core.store.base import StateChange
from core.store.sqlite import SqliteStore
from tests.api.support import jst, shift_facts, write_facts
from tests.api.test_api import serve
from tests.api.test_bounded import BlockingStore, wait_for
from tests.conftest import DEMO_PLANT

V1 = "/api/v1"
OEE = f"{V1}/lines/blade-1/oee"
W = {"start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T11:00:00+09:00"}
OPEN = Auth.open_reads()
T0 = jst(2026, 11, 27, 10, 30, 2).timestamp() + 0.25  # 10:30:02.25 JST: inside the period 10:30:00–10:30:05


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


def long_ago_state(plant: Plant) -> Fact:
    # cnc-1 has been running since ten days before the shift: its since must come out exact
    return Fact("state", to_ns(jst(2026, 11, 17, 9, 0)), "blade-1", "cnc-1", "state", "running", None)


@pytest.fixture(scope="module")
def db(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "mieruka.db"
    write_facts(path, [*shift_facts(plant), long_ago_state(plant)])
    return path


def reads(app: object) -> float:
    m: ApiMetrics = app.state.metrics  # type: ignore[attr-defined]
    return sum(s.value for metric in m.store_queries.collect() for s in metric.samples if s.name.endswith("_total"))


def answers(app: object, kind: str) -> float:
    m: ApiMetrics = app.state.metrics  # type: ignore[attr-defined]
    return m.answers.labels(kind)._value.get()


async def test_identical_requests_within_a_period_cost_one_computation(plant: Plant, db: Path) -> None:
    clock = Clock()
    app = create_app(plant, SqliteStore(db), auth=OPEN, refresh=Refresh(5.0, clock))
    async with serve(app) as c:
        first = await c.get(OEE, params=W)
        assert first.status_code == 200
        one = reads(app)
        assert one > 0
        for _ in range(3):
            clock.t += 0.75  # still 10:30:00–10:30:05
            again = await c.get(OEE, params=dict(reversed(list(W.items()))))  # the order of parameters is no matter
            assert again.content == first.content
        assert reads(app) == one
        assert answers(app, "hit") == 3
        clock.t += 0.75  # 10:30:05.25: the next period computes again
        assert (await c.get(OEE, params=W)).status_code == 200
        assert reads(app) == 2 * one


async def test_the_key_holds_what_changes_the_answer_and_not_the_role(plant: Plant, db: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    reader, admin = create_token(tokens, "r", "read"), create_token(tokens, "a", "admin")
    clock = Clock()
    app = create_app(plant, SqliteStore(db), auth=Auth(TokenFile(tokens)), refresh=Refresh(5.0, clock))
    as_reader = {"Authorization": f"Bearer {reader}"}
    async with serve(app) as c:
        base = await c.get(OEE, params=W, headers=as_reader)
        assert base.status_code == 200 and base.json()["name"] == "タービンブレード1号ライン"
        one = reads(app)
        # the admin gets the reader's answer: a role does not change a read answer
        assert (await c.get(OEE, params=W, headers={"Authorization": f"Bearer {admin}"})).content == base.content
        assert reads(app) == one
        # a caller the route refuses is refused, kept answer or not
        assert (await c.get(OEE, params=W)).status_code == 401
        assert (await c.get(OEE, params=W, headers={"Authorization": "Bearer mk_nope"})).status_code == 401
        assert reads(app) == one
        variants = [
            ({**W, "lang": "en"}, {}),
            (W, {"Accept-Language": "en-US,en;q=0.8"}),
            ({**W, "format": "csv"}, {}),
            (W, {"Accept": "text/csv"}),
            ({**W, "bucket": "1h"}, {}),
        ]
        seen = {base.content}
        for params, headers in variants:
            before = reads(app)
            r = await c.get(OEE, params=params, headers={**as_reader, **headers})
            assert r.status_code == 200, r.text
            assert reads(app) > before, (params, headers)  # a different answer: computed, not handed over
            seen.add(r.content)
        assert len(seen) == 4  # ja JSON, en JSON (asked two ways), CSV (asked two ways), by the hour
        r = await c.get(OEE, params=W, headers={**as_reader, "Accept-Language": "en"})
        assert r.json()["name"] == "Turbine blade line 1"
        assert (await c.get(OEE, params=W, headers={**as_reader, "Accept": "text/csv"})).headers[
            "content-type"].startswith("text/csv")


async def test_concurrent_identical_requests_share_one_computation(plant: Plant, db: Path) -> None:
    store = BlockingStore(SqliteStore(db))
    app = create_app(plant, store, auth=OPEN, workers=4, refresh=Refresh(5.0, Clock()))
    tp = f"{V1}/lines/blade-1/throughput"
    async with serve(app) as c:
        requests = [asyncio.create_task(c.get(tp, params=W)) for _ in range(6)]
        await wait_for(lambda: store.reads == 1 and answers(app, "shared") == 5, 10, "one read, five waiting")
        store.release.set()
        done = await asyncio.gather(*requests)
    assert [r.status_code for r in done] == [200] * 6
    assert len({r.content for r in done}) == 1 and done[0].json()["total_good"] == 35
    assert store.reads == 1
    assert answers(app, "miss") == 1


async def test_now_is_the_start_of_the_period(plant: Plant, db: Path) -> None:
    clock = Clock()
    app = create_app(plant, SqliteStore(db), auth=OPEN, refresh=Refresh(5.0, clock))
    async with serve(app) as c:
        a = (await c.get(f"{V1}/lines/blade-1/status")).json()
        clock.t += 2.5  # 10:30:04.75
        b = (await c.get(f"{V1}/lines/blade-1/status", params={"lang": "en"})).json()
        oee = (await c.get(OEE, params={"shift": "current"})).json()
    assert datetime.fromisoformat(a["as_of"]) == jst(2026, 11, 27, 10, 30, 0)
    assert b["as_of"] == a["as_of"] and oee["as_of"] == a["as_of"]
    assert datetime.fromisoformat(oee["end"]) == jst(2026, 11, 27, 10, 30, 0)  # the shift so far ends there
    # an explicit as_of is a replay of that instant: never moved
    async with serve(create_app(plant, SqliteStore(db), auth=OPEN, refresh=Refresh(5.0, clock))) as c:
        r = (await c.get(f"{V1}/lines/blade-1/status", params={"as_of": "2026-11-27T10:30:03.5+09:00"})).json()
    assert datetime.fromisoformat(r["as_of"]) == jst(2026, 11, 27, 10, 30, 3, 500000)


async def test_a_period_of_zero_computes_every_request(plant: Plant, db: Path) -> None:
    clock = Clock()
    app = create_app(plant, SqliteStore(db), auth=OPEN, refresh=Refresh(0, clock))
    async with serve(app) as c:
        st = (await c.get(f"{V1}/lines/blade-1/status")).json()
        one = reads(app)
        await c.get(f"{V1}/lines/blade-1/status")
        assert reads(app) == 2 * one
    assert datetime.fromisoformat(st["as_of"]).timestamp() == pytest.approx(T0)


async def test_metrics_count_store_reads_and_time_requests_by_route_template(plant: Plant, db: Path) -> None:
    app = create_app(plant, SqliteStore(db), auth=OPEN, refresh=Refresh(5.0, Clock()))
    async with serve(app) as c:
        await c.get(OEE, params=W)
        await c.get(OEE, params=W)
        await c.get(f"{V1}/machines/cnc-1/states", params=W)
        await c.get(f"{V1}/lines/nope/oee", params=W)
        await c.get(f"{V1}/nowhere")
        r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    queries = {m.group(1): float(m.group(2))
               for m in re.finditer(r'^mieruka_api_store_queries_total\{query="(\w+)"\} (\S+)$', text, re.M)}
    assert queries["state_changes"] >= 2 and queries["count_buckets"] + queries["count_ranges"] >= 1, queries
    assert sum(queries.values()) == reads(app)
    oee_route = 'route="/api/v1/lines/{line_id}/oee"'
    assert f'mieruka_api_request_duration_seconds_count{{method="GET",{oee_route}}} 3.0' in text
    assert f'mieruka_api_requests_total{{method="GET",{oee_route},status="404"}} 1.0' in text
    assert 'mieruka_api_answers_total{result="hit"} 1.0' in text
    assert 'route="unmatched"' in text
    assert "blade-1" not in text and "nope" not in text and "nowhere" not in text  # templates, not raw paths


class RecordingStore(SqliteStore):
    """A real SQLite store that remembers the windows of its state reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, create=False)
        self.state_windows: list[tuple[int, int]] = []

    async def state_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[StateChange]:
        self.state_windows.append((start_ns, end_ns))
        return await super().state_changes(machines, start_ns, end_ns)


async def test_status_reads_no_days_of_states(plant: Plant, db: Path) -> None:
    store = RecordingStore(db)
    async with serve(create_app(plant, store, auth=OPEN, refresh=0)) as c:
        r = await c.get(f"{V1}/lines/blade-1/status", params={"as_of": "2026-11-27T10:30:00+09:00"})
    assert r.status_code == 200
    cnc1 = next(m for m in r.json()["machines"] if m["id"] == "cnc-1")
    assert (cnc1["state"], cnc1["since"]) == ("running", "2026-11-17T09:00:00+09:00")  # ten days back, exact
    # the read side reads states a micro-stop length beyond the window, so a stop is judged whole
    shift_start = to_ns(jst(2026, 11, 27, 8, 0)) - int(plant.calendar.micro_stop_s * 1e9)
    # a point lookup (the last change before an instant) or the shift so far: never days of states
    assert store.state_windows and all(b - a <= 1 or a >= shift_start for a, b in store.state_windows), \
        store.state_windows


def test_the_refresh_period_setting() -> None:
    env = {"MIERUKA_PLANT": str(DEMO_PLANT)}
    assert Settings.from_env(env).refresh_period_s == 5.0
    assert Settings.from_env({**env, "MIERUKA_REFRESH_PERIOD_S": "2.5"}).refresh_period_s == 2.5
    assert Settings.from_env({**env, "MIERUKA_REFRESH_PERIOD_S": "0"}).refresh_period_s == 0
    for bad in ("soon", "-1", "86400"):
        with pytest.raises(ValueError, match="MIERUKA_REFRESH_PERIOD_S"):
            Settings.from_env({**env, "MIERUKA_REFRESH_PERIOD_S": bad})
    with pytest.raises(ValueError, match="refresh period"):
        Refresh(-1.0)


class SteppingClock(Clock):
    """A clock that moves 5 s on every reading: any second reading is in the next period."""

    def __call__(self) -> float:
        t = self.t
        self.t += 5.0
        return t


async def test_an_answer_computed_across_the_end_of_its_period_is_about_its_period(plant: Plant, db: Path) -> None:
    app = create_app(plant, SqliteStore(db), auth=OPEN, refresh=Refresh(5.0, SteppingClock()))
    async with serve(app) as c:
        r = await c.get(f"{V1}/lines/blade-1/throughput", params={"shift": "current"})
    assert r.status_code == 200
    # the period the cache filed it under, not the clock's next reading
    assert datetime.fromisoformat(r.json()["as_of"]) == jst(2026, 11, 27, 10, 30, 0)
