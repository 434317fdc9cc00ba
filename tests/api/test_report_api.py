"""The shift report over HTTP, against a real SQLite store filled from a fast-forward run of the demo
plant: its figures equal the OEE, throughput and downtime routes' for the same shift window, its line
good equals the simulator's ledger, its hours add up to its totals at every as_of, CSV parses, and
bad requests get a 404/422 naming the problem."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.auth import Auth
from core.plant import Plant, load_plant
from core.store.sqlite import SqliteStore
from tests.api.test_api import serve
from tests.conftest import DEMO_PLANT
from tests.support.fastforward import fast_forward_db
from tests.support.ledger import part_counts, read_ledger

V1 = "/api/v1"
REPORT = f"{V1}/reports/shift"
DAY = "2026-11-27"  # a Friday
RUN_START = datetime.fromisoformat("2026-11-27T07:00:00+09:00")
RUN_END = datetime.fromisoformat("2026-11-27T17:30:00+09:00")
SHIFT_START = datetime.fromisoformat("2026-11-27T08:00:00+09:00")
SHIFT_END = datetime.fromisoformat("2026-11-27T17:00:00+09:00")
DONE = "2026-11-27T17:30:00+09:00"  # the day shift has ended
RUNNING = "2026-11-27T11:20:00+09:00"  # the day shift so far
SEED = 5


@dataclass
class Run:
    plant: Plant
    records: list[dict[str, Any]]
    db: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    d = tmp_path_factory.mktemp("report_api")
    plant = load_plant(DEMO_PLANT)
    db, _, truth = fast_forward_db(plant, SEED, RUN_START, RUN_END, d, "report.db")
    yield Run(plant, read_ledger(truth), db)


@pytest.fixture
async def client(run: Run) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(run.plant, SqliteStore(run.db), auth=Auth.open_reads())) as c:
        yield c


async def get_ok(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("as_of", [DONE, RUNNING])
async def test_report_equals_the_figure_routes_and_the_ledger(client: httpx.AsyncClient, run: Run,
                                                              as_of: str) -> None:
    rep = await get_ok(client, REPORT, date=DAY, shift="day", as_of=as_of, lang="en")
    assert rep["shift"]["id"] == "day" and rep["shift"]["name"] == "Day shift"
    assert rep["site"]["name"] == "Ashikaga Plant 1" and rep["date"] == DAY
    assert rep["complete"] is (as_of == DONE)
    end = min(datetime.fromisoformat(as_of), SHIFT_END)
    assert (datetime.fromisoformat(rep["start"]), datetime.fromisoformat(rep["end"])) == (SHIFT_START, end)
    window = {"shift": "day", "date": DAY, "as_of": as_of, "lang": "en"}
    truth = part_counts(run.records, SHIFT_START, end)
    assert [ln["id"] for ln in rep["lines"]] == [ln.id for ln in run.plant.lines]
    for ln, line in zip(rep["lines"], run.plant.lines, strict=True):
        oee = await get_ok(client, f"{V1}/lines/{line.id}/oee", **window)
        assert ln["figures"] == oee["figures"]
        assert ln["name"] == oee["name"]
        # the ledger, independently of the read side: output machine's good, every machine's scrap
        out = line.output_machines[0].id
        assert ln["counts"]["good"] == truth.good[out] > 50
        assert ln["counts"]["scrap"] == sum(truth.scrap[m.id] for m in line.machines)
        tp = await get_ok(client, f"{V1}/lines/{line.id}/throughput", bucket="1h", **window)
        assert ln["hours"] == tp["points"]
        assert ln["counts"]["target"] == pytest.approx(tp["total_target"])
        assert ln["counts"]["difference"] == pytest.approx(ln["counts"]["good"] - tp["total_target"])
        # the whole shift's plan: target per hour × (9 h − 65 min of breaks)
        assert ln["counts"]["shift_target"] == pytest.approx(line.target_per_hour * (9 * 60 - 65) / 60)
        for m in ln["machines"]:
            mo = await get_ok(client, f"{V1}/machines/{m['id']}/oee", **window)
            assert m["figures"] == mo["figures"], m["id"]
            assert (m["counts"]["good"], m["counts"]["scrap"]) == (truth.good[m["id"]], truth.scrap[m["id"]])
        assert [m["output"] for m in ln["machines"]] == [m.id == out for m in line.machines]
        dt = await get_ok(client, f"{V1}/lines/{line.id}/downtime", **window)
        assert ln["pareto"] == dt["pareto"]
        own = [e for e in dt["events"] if not e["micro_stop"]]
        want = sorted(own, key=lambda e: (-e["seconds"], e["start"], e["machine"]))[:10]
        assert [(s["machine"], s["start"], s["seconds"], s["state"], s["reason"], s["label"], s["category"])
                for s in ln["top_stops"]] == [(e["machine"], e["start"], e["seconds"], e["state"], e["reason"],
                                               e["label"], e["category"]) for e in want]
        assert ln["top_stops"], line.id  # the demo's machines break down within a shift
        assert all(s["named_by"] is None for s in ln["top_stops"])  # no operator input yet
        assert ln["notes"] == []


async def test_hours_add_up_to_the_totals_at_every_as_of(client: httpx.AsyncClient) -> None:
    """A property over the shift: wherever as_of cuts it (inside an hour, in a break, after it), the
    hourly rows are contiguous, cover the window, and sum to the line's good, scrap and target."""
    as_ofs = [SHIFT_START + timedelta(minutes=m) for m in range(7, 9 * 60 + 30, 53)]
    for as_of in as_ofs:
        rep = await get_ok(client, REPORT, date=DAY, shift="day", as_of=as_of.isoformat())
        for ln in rep["lines"]:
            hours, c = ln["hours"], ln["counts"]
            assert hours, (as_of, ln["id"])
            starts = [datetime.fromisoformat(h["start"]) for h in hours]
            ends = [datetime.fromisoformat(h["end"]) for h in hours]
            assert starts[0] <= datetime.fromisoformat(rep["start"]) and ends[-1] >= datetime.fromisoformat(rep["end"])
            assert starts[1:] == ends[:-1]
            assert sum(h["good"] for h in hours) == c["good"] == hours[-1]["cumulative_good"]
            assert sum(h["scrap"] for h in hours) == c["scrap"]
            assert sum(h["target"] for h in hours) == pytest.approx(c["target"])
            assert hours[-1]["cumulative_target"] == pytest.approx(c["target"])
            assert all(h["good"] >= 0 and h["scrap"] >= 0 for h in hours)


async def test_report_csv_is_one_row_per_line_and_machine(client: httpx.AsyncClient, run: Run) -> None:
    rep = await get_ok(client, REPORT, date=DAY, shift="day", as_of=DONE, lang="ja")
    r = await client.get(REPORT, params={"date": DAY, "shift": "day", "as_of": DONE, "lang": "ja"},
                         headers={"Accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == sum(1 + len(ln.machines) for ln in run.plant.lines)
    by = {(row["line"], row["machine"]): row for row in rows}
    for ln in rep["lines"]:
        row = by[(ln["id"], "")]
        assert (row["kind"], row["name"]) == ("line", ln["name"])
        assert int(row["good"]) == ln["counts"]["good"] and int(row["scrap"]) == ln["counts"]["scrap"]
        assert float(row["oee"]) == pytest.approx(ln["figures"]["oee"])
        assert float(row["breakdowns_s"]) == pytest.approx(ln["figures"]["losses"]["breakdowns_s"])
        for m in ln["machines"]:
            mrow = by[(ln["id"], m["id"])]
            assert mrow["kind"] == "machine" and int(mrow["good"]) == m["counts"]["good"]
    same = await client.get(REPORT, params={"date": DAY, "shift": "day", "as_of": DONE, "format": "csv"})
    assert same.status_code == 200 and len(list(csv.DictReader(io.StringIO(same.text)))) == len(rows)


@pytest.mark.parametrize(("params", "status", "words"), [
    ({"date": DAY, "shift": "late"}, 404, ["unknown shift 'late'", "day, night"]),
    ({"date": "2026-11-28", "shift": "day"}, 404, ["does not run on 2026-11-28", "Saturday"]),
    ({"date": "27.11.2026", "shift": "day"}, 422, ["'27.11.2026' is not a date", "YYYY-MM-DD"]),
    ({"date": DAY, "shift": "day", "as_of": "2026-11-27T07:30:00+09:00"}, 422, ["has not begun"]),
    ({"date": DAY}, 422, ["shift"]),
    ({"date": DAY, "shift": "day", "lang": "de"}, 422, ["lang"]),
])
async def test_bad_requests_say_what_is_wrong(client: httpx.AsyncClient, params: dict[str, str], status: int,
                                              words: list[str]) -> None:
    r = await client.get(REPORT, params={"as_of": DONE, **params})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str)
    for w in words:
        assert w in detail, detail
