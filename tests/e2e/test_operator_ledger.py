"""Operator input against the simulators' ledger, on SQLite and on a real influxd: a fast-forward morning of
the demo plant imported, then (through the API, as an operator) a stop named, another split, scrap booked.
Exactly the figures that should change do, by amounts taken from the ledger: Pareto seconds move from the
old (state, reason) to the new one by the stop's (part's) seconds, good and scrap by the booked quantity,
quality and OEE follow, availability and performance do not; hourly buckets still add up to the window;
the audit (JSON and CSV) shows each change with its author, old and new value."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from api.app import create_app
from api.auth import Auth
from api.cache import Refresh
from api.tokens import TokenFile, create_token
from core import oee
from core.plant import Plant, load_plant
from core.readside import Figures, Window
from core.store import open_store
from tests.api.test_api import serve
from tests.conftest import DEMO_PLANT
from tests.support.ledger import LedgerStretch, line_totals, micro_flags, read_ledger, state_stretches
from tests.support.procs import mieruka_ok

START = datetime.fromisoformat("2026-11-26T08:00:00+09:00")  # a Thursday morning of the day shift
END = START + timedelta(hours=4)
BREAK = (datetime.fromisoformat("2026-11-26T10:00:00+09:00"), datetime.fromisoformat("2026-11-26T10:10:00+09:00"))
W = {"start": START.isoformat(), "end": END.isoformat(), "lang": "en"}
BOOK_AT = datetime.fromisoformat("2026-11-26T09:30:00+09:00")
BOOKED = 2
V1 = "/api/v1"



@pytest.fixture(scope="module")
def morning(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("op-ledger")
    samples, truth = d / "samples.csv", d / "truth.jsonl"
    mieruka_ok("simulate", "--plant", str(DEMO_PLANT), "--seed", "11", "--from", START.isoformat(),
               "--to", END.isoformat(), "--samples", str(samples), "--truth", str(truth))
    return samples, truth


@pytest.fixture(params=["sqlite", "influxdb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, morning: tuple[Path, Path]) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'op.db'}"
    else:
        url = str(request.getfixturevalue("influxd_server").url(f"op_{uuid.uuid4().hex[:8]}"))
    mieruka_ok("import", "--plant", str(DEMO_PLANT), "--store", url, str(morning[0]))
    return url


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(START.tzinfo)


def plain_stops(plant: Plant, records: list[dict[str, Any]]) -> list[tuple[str, LedgerStretch]]:
    """Stops of blade-1 that are one ``down`` stretch between two running ones, not micro-stops, inside the
    window and clear of the break (so all their seconds are planned production time)."""
    out: list[tuple[str, LedgerStretch]] = []
    micro_ms = plant.calendar.micro_stop_s * 1000
    line = plant.line("blade-1")
    assert line is not None
    for m in line.machines:
        xs = state_stretches(records, m.id)
        flags = micro_flags(xs, micro_ms)
        for i in range(1, len(xs) - 1):
            x = xs[i]
            if (x.state == "down" and not flags[i] and xs[i - 1].state == "running" and xs[i + 1].state == "running"
                    and x.until_ms is not None and START <= at(x.since_ms) and at(x.until_ms) <= END
                    and (at(x.until_ms) <= BREAK[0] or at(x.since_ms) >= BREAK[1])):
                out.append((m.id, x))
    return out


def shift_scrap(records: list[dict[str, Any]], machine: str) -> int:
    """The machine's scrap over the day shift holding the booking (what the audit's old value says)."""
    day = (START, START + timedelta(hours=9))
    return sum(1 for r in records if r.get("kind") == "part" and r["machine"] == machine and not r["good"]
               and day[0] <= r["_t"] < day[1])


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    return path, {r: {"Authorization": f"Bearer {create_token(path, f'ff-{r}', r)}"}  # type: ignore[arg-type]
                  for r in ("read", "operator", "admin")}


@pytest.fixture
async def api(store_url: str, tokens: tuple[Path, dict[str, dict[str, str]]]) -> AsyncIterator[httpx.AsyncClient]:
    plant = load_plant(DEMO_PLANT)
    app = create_app(plant, open_store(store_url), auth=Auth(TokenFile(tokens[0])), refresh=Refresh(0))
    async with serve(app) as c:
        yield c


def pareto(body: dict[str, Any]) -> dict[tuple[str, int | None], tuple[float, int]]:
    return {(r["state"], r["reason"]): (r["seconds"], r["count"]) for r in body["pareto"]}


async def test_operator_input_moves_exactly_the_ledger_amounts(api: httpx.AsyncClient, store_url: str,
                                                               morning: tuple[Path, Path],
                                                               tokens: tuple[Path, dict[str, dict[str, str]]]) -> None:
    plant = load_plant(DEMO_PLANT)
    records = read_ledger(morning[1])
    who = tokens[1]
    rd, opr = who["read"], who["operator"]
    stops = plain_stops(plant, records)
    assert len(stops) >= 2, "the simulated morning has too few plain stops to name and split"
    (ma, a), (mb, b) = stops[0], stops[-1]
    assert a.until_ms is not None and b.until_ms is not None
    new_a, new_b = 22, 24

    async def get(url: str, **params: str) -> dict[str, Any]:
        r = await api.get(url, params={**W, **params}, headers=rd)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    p0 = pareto(await get(f"{V1}/lines/blade-1/downtime"))
    oee0 = (await get(f"{V1}/lines/blade-1/oee"))["figures"]

    r = await api.put(f"{V1}/machines/{ma}/stops/{quote(at(a.since_ms).isoformat(), safe='')}/reason",
                      json={"reason": new_a, "note": "found the cause"}, headers=opr)
    assert r.status_code == 200, r.text
    assert r.json()["previous_reason"] == a.reason
    split_ms = b.since_ms + (b.until_ms - b.since_ms) // 2
    r = await api.put(f"{V1}/machines/{mb}/stops/{quote(at(b.since_ms).isoformat(), safe='')}/reason",
                      json={"reason": new_b, "until": at(split_ms).isoformat()}, headers=opr)
    assert r.status_code == 200, r.text
    r = await api.post(f"{V1}/machines/inspect-1/scrap", json={"time": BOOK_AT.isoformat(), "quantity": BOOKED},
                       headers=opr)
    assert r.status_code == 201, r.text

    # Pareto: seconds move from the old (state, reason) to the new one, by the ledger's seconds
    p1 = pareto(await get(f"{V1}/lines/blade-1/downtime"))
    delta: dict[tuple[str, int | None], float] = {}
    for key, ms in ((("down", a.reason), -(a.until_ms - a.since_ms)), (("down", new_a), a.until_ms - a.since_ms),
                    (("down", b.reason), -(split_ms - b.since_ms)), (("down", new_b), split_ms - b.since_ms)):
        delta[key] = delta.get(key, 0.0) + ms / 1000
    for key in set(p0) | set(p1) | set(delta):
        want = p0.get(key, (0.0, 0))[0] + delta.get(key, 0.0)
        assert p1.get(key, (0.0, 0))[0] == pytest.approx(want, abs=1e-6), key
    assert p1[("down", new_a)][1] >= 1 and p1[("down", new_b)][1] >= 1
    assert sum(s for s, _ in p1.values()) == pytest.approx(sum(s for s, _ in p0.values()), abs=1e-6)

    # the named stretches on the machines' timelines: same state, the operator's reason
    tl = (await get(f"{V1}/machines/{mb}/states"))["timeline"]
    named = [x for x in tl if x["reason"] == new_b]
    assert [(x["state"], x["seconds"]) for x in named] == [("down", pytest.approx((split_ms - b.since_ms) / 1000))]

    # good and scrap move by the booking; the ledger gives the rest
    line = plant.line("blade-1")
    assert line is not None
    out, ids = line.output_machines[0].id, [m.id for m in line.machines]
    good, scrap = line_totals(records, START, END, out, ids)
    oee1 = (await get(f"{V1}/lines/blade-1/oee"))["figures"]
    assert (oee0["counts"]["good"], oee0["counts"]["scrap"]) == (good, scrap)
    assert (oee1["counts"]["good"], oee1["counts"]["scrap"]) == (good - BOOKED, scrap + BOOKED)
    assert oee1["availability"] == oee0["availability"] and oee1["performance"] == oee0["performance"]
    q = (good - BOOKED) / (good + scrap)
    assert oee1["quality"] == pytest.approx(q)
    if oee1["performance"] is not None:
        assert oee1["oee"] == pytest.approx(oee1["availability"] * oee1["performance"] * q)
    tp = (await get(f"{V1}/lines/blade-1/throughput", bucket="1h"))["points"]
    for p in tp:
        a0, z0 = datetime.fromisoformat(p["start"]), datetime.fromisoformat(p["end"])
        g, s = line_totals(records, a0, z0, out, ids)
        hit = BOOKED if a0 <= BOOK_AT < z0 else 0
        assert (p["good"], p["scrap"]) == (g - hit, s + hit), p["start"]

    # hourly buckets still add up to the window, Pareto seconds included
    store = open_store(store_url)
    await store.open()
    try:
        fig = Figures(plant, store)
        whole, points = await fig.oee(line, Window(START, END, None, END), "1h")
    finally:
        await store.close()
    assert isinstance(whole, oee.LineOee)
    assert whole.good == good - BOOKED and sum(p.good for p in points) == whole.good
    assert sum(p.scrap for p in points) == whole.scrap == scrap + BOOKED
    summed: dict[tuple[str, int | None], float] = {}
    for pt in points:
        assert isinstance(pt, oee.LineOee)
        for row in pt.pareto:
            summed[(row.state, row.reason)] = summed.get((row.state, row.reason), 0.0) + row.seconds
    assert summed == pytest.approx({(row.state, row.reason): row.seconds for row in whole.pareto}, abs=1e-6)
    assert {k: v for k, (v, _) in p1.items()} == pytest.approx(summed, abs=1e-6)

    # the audit: each change, its author, old and new value; the CSV says the same
    audit = (await api.get(f"{V1}/audit", headers=who["admin"])).json()["entries"]
    assert [(e["action"], e["author"], e["machine"], e["old"]) for e in audit] == [
        ("stop_reason", "ff-operator", ma, f'{{"reason": {a.reason}}}'),
        ("stop_reason", "ff-operator", mb, f'{{"reason": {b.reason}}}'),
        ("scrap", "ff-operator", "inspect-1", f'{{"scrap": {shift_scrap(records, "inspect-1")}}}')]
    assert audit[0]["new"] == f'{{"reason": {new_a}}}' and audit[0]["why"] == "found the cause"
    assert audit[1]["new"] == f'{{"reason": {new_b}, "until": "{at(split_ms).isoformat()}"}}'
    assert f'"quantity": {BOOKED}' in audit[2]["new"]
    text = (await api.get(f"{V1}/audit", params={"format": "csv"}, headers=who["admin"])).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["action"], r["author"], r["old"], r["new"]) for r in rows] == [
        (e["action"], e["author"], e["old"], e["new"]) for e in audit]
