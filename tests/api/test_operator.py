"""Operator input through the API on a real SQLite store: naming a stop's reason, splitting a stop, booking
scrap and writing notes change exactly the figures they should; bad input is a 422 that stores nothing;
the next read after a write sees it even within one refresh period; the audit shows every change."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from api.app import create_app
from api.auth import Auth
from api.cache import Refresh
from api.tokens import TokenFile, create_token
from core.model import Fact, to_ns
from core.plant import Plant, load_plant
from core.store.sqlite import SqliteStore
from tests.api.support import jst, shift_facts, write_facts
from tests.api.test_api import serve
from tests.conftest import DEMO_PLANT

V1 = "/api/v1"
W = {"start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T11:00:00+09:00"}
NOW = jst(2026, 11, 27, 12, 0, 1).timestamp()


def state(t: Any, st: str, reason: int | None = None) -> Fact:
    return Fact("state", to_ns(t), "blade-1", "cnc-1", "state", st, reason)


def stop_facts() -> list[Fact]:
    """cnc-1: down (20) 08:40–08:50, down (21) 09:20–09:40, running otherwise."""
    return [state(jst(2026, 11, 27, 7, 50), "running"), state(jst(2026, 11, 27, 8, 40), "down", 20),
            state(jst(2026, 11, 27, 8, 50), "running"), state(jst(2026, 11, 27, 9, 20), "down", 21),
            state(jst(2026, 11, 27, 9, 40), "running")]


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture
def db(plant: Plant, tmp_path: Path) -> Path:
    path = tmp_path / "mieruka.db"
    write_facts(path, [*shift_facts(plant), *stop_facts()])
    return path


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    return path, {r: {"Authorization": f"Bearer {create_token(path, f'lead-{r}', r)}"}  # type: ignore[arg-type]
                  for r in ("read", "operator", "admin")}


@pytest.fixture
async def api(plant: Plant, db: Path, tokens: tuple[Path, dict[str, dict[str, str]]]
              ) -> AsyncIterator[httpx.AsyncClient]:
    # a refresh period of an hour on a clock that stands still: every read is in one period, so only a
    # write can make a kept answer go
    app = create_app(plant, SqliteStore(db), auth=Auth(TokenFile(tokens[0])), refresh=Refresh(3600.0, lambda: NOW))
    async with serve(app) as c:
        yield c


def stop_url(machine: str, start: str) -> str:
    return f"{V1}/machines/{machine}/stops/{quote(start, safe='')}/reason"


def pareto(body: dict[str, Any]) -> dict[tuple[str, int | None], float]:
    return {(r["state"], r["reason"]): r["seconds"] for r in body["pareto"]}


async def test_name_split_book_note_and_audit(api: httpx.AsyncClient,
                                              tokens: tuple[Path, dict[str, dict[str, str]]]) -> None:
    who = tokens[1]
    rd, opr, adm = who["read"], who["operator"], who["admin"]
    before = (await api.get(f"{V1}/lines/blade-1/downtime", params=W, headers=rd)).json()
    oee0 = (await api.get(f"{V1}/lines/blade-1/oee", params=W, headers=rd)).json()["figures"]
    tp0 = (await api.get(f"{V1}/lines/blade-1/throughput", params=W, headers=rd)).json()
    p0 = pareto(before)
    assert p0[("down", 20)] == 600 and p0[("down", 21)] == 1200

    # name the first stop 22 (die fault) instead of the machine's 20
    r = await api.put(stop_url("cnc-1", "2026-11-27T08:40:00+09:00"), json={"reason": 22, "note": "die cracked"},
                      headers=opr)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["reason"], body["previous_reason"], body["until"]) == (22, 20, None)
    assert body["end"] == "2026-11-27T08:50:00+09:00" and body["entry"]["author"] == "lead-operator"
    # split the second: 09:20–09:30 conveyor (24), 09:30–09:40 keeps 21 and can be named on its own
    r = await api.put(stop_url("cnc-1", "2026-11-27T09:20:00+09:00"),
                      json={"reason": 24, "until": "2026-11-27T09:30:00+09:00"}, headers=opr)
    assert r.status_code == 200, r.text
    assert r.json()["end"] == "2026-11-27T09:30:00+09:00"
    # book 3 scrap found later on the output machine at 09:30
    r = await api.post(f"{V1}/machines/inspect-1/scrap", json={"time": "2026-11-27T09:30:00+09:00", "quantity": 3,
                                                                 "reason": 50}, headers=opr)
    assert r.status_code == 201, r.text
    r = await api.post(f"{V1}/lines/blade-1/notes", json={"time": "2026-11-27T09:00:00+09:00",
                                                          "text": "新しい刃具ロット"}, headers=opr)
    assert r.status_code == 201, r.text

    after = (await api.get(f"{V1}/lines/blade-1/downtime", params=W, headers=rd)).json()
    p1 = pareto(after)
    assert ("down", 20) not in p1 and p1[("down", 22)] == p0[("down", 20)]
    assert p1[("down", 24)] == 600 and p1[("down", 21)] == p0[("down", 21)] - 600
    assert sum(p1.values()) == sum(p0.values())
    states = (await api.get(f"{V1}/machines/cnc-1/states", params=W, headers=rd)).json()["timeline"]
    downs = [(x["start"][11:19], x["end"][11:19], x["state"], x["reason"]) for x in states if x["state"] != "running"]
    assert downs == [("08:40:00", "08:50:00", "down", 22), ("09:20:00", "09:30:00", "down", 24),
                     ("09:30:00", "09:40:00", "down", 21)]

    oee1 = (await api.get(f"{V1}/lines/blade-1/oee", params=W, headers=rd)).json()["figures"]
    assert oee1["counts"]["good"] == oee0["counts"]["good"] - 3
    assert oee1["counts"]["scrap"] == oee0["counts"]["scrap"] + 3
    assert oee1["availability"] == oee0["availability"]
    q = oee1["counts"]["good"] / (oee1["counts"]["good"] + oee1["counts"]["scrap"])
    assert oee1["quality"] == pytest.approx(q)
    assert oee1["performance"] == oee0["performance"]  # ideal time of good + scrap: the parts are the same
    tp1 = (await api.get(f"{V1}/lines/blade-1/throughput", params=W, headers=rd)).json()
    assert [p["good"] for p in tp1["points"]] == [p["good"] - (3 if i == 1 else 0) for i, p in enumerate(tp0["points"])]
    assert [p["scrap"] for p in tp1["points"]] == [p["scrap"] + (3 if i == 1 else 0)
                                                  for i, p in enumerate(tp0["points"])]

    stops = (await api.get(f"{V1}/lines/blade-1/stops", params={**W, "lang": "en"}, headers=rd)).json()["stops"]
    got = [(s["start"][11:19], s["end"][11:19], s["reason"], s["label"], s["named_by"], s["note"], s["seconds"])
           for s in stops]
    assert got == [("08:40:00", "08:50:00", 22, "Die fault", "lead-operator", "die cracked", 600.0),
                   ("09:20:00", "09:30:00", 24, "Conveyor fault", "lead-operator", None, 600.0),
                   ("09:30:00", "09:40:00", 21, "Hydraulic fault", None, None, 600.0)]
    notes = (await api.get(f"{V1}/lines/blade-1/notes", params=W, headers=rd)).json()["notes"]
    assert [(n["text"], n["author"]) for n in notes] == [("新しい刃具ロット", "lead-operator")]

    audit = (await api.get(f"{V1}/audit", headers=adm)).json()["entries"]
    assert [(e["action"], e["author"], e["machine"]) for e in audit] == [
        ("stop_reason", "lead-operator", "cnc-1"), ("stop_reason", "lead-operator", "cnc-1"),
        ("scrap", "lead-operator", "inspect-1"), ("note", "lead-operator", None)]
    assert audit[0]["old"] == '{"reason": 20}' and audit[0]["new"] == '{"reason": 22}'
    assert audit[0]["why"] == "die cracked"
    assert audit[1]["new"] == '{"reason": 24, "until": "2026-11-27T09:30:00+09:00"}'
    assert audit[2]["old"] == '{"scrap": 1}' and '"quantity": 3' in audit[2]["new"]
    rows = list(csv.DictReader(io.StringIO((await api.get(f"{V1}/audit", params={"format": "csv"},
                                                           headers=adm)).text)))
    assert [(r["action"], r["author"], r["old"]) for r in rows] == [(e["action"], e["author"], e["old"] or "")
                                                                   for e in audit]

    # the part left by the split is named on its own; the first part keeps its reason
    r = await api.put(stop_url("cnc-1", "2026-11-27T09:30:00+09:00"), json={"reason": 23}, headers=opr)
    assert r.status_code == 200 and r.json()["previous_reason"] == 21
    p2 = pareto((await api.get(f"{V1}/lines/blade-1/downtime", params=W, headers=rd)).json())
    assert p2[("down", 24)] == 600 and p2[("down", 23)] == 600 and ("down", 21) not in p2

    # the shift report (日報) shows who named each stop and the line's notes
    rep = (await api.get(f"{V1}/reports/shift", params={"date": "2026-11-27", "shift": "day", "lang": "en"},
                         headers=rd))
    assert rep.status_code == 200, rep.text
    blade = next(ln for ln in rep.json()["lines"] if ln["id"] == "blade-1")
    cnc = {(s["start"][11:19], s["reason"]): s["named_by"] for s in blade["top_stops"] if s["machine"] == "cnc-1"}
    assert cnc == {("08:40:00", 22): "lead-operator", ("09:20:00", 24): "lead-operator",
                   ("09:30:00", 23): "lead-operator"}
    assert [(n["text"], n["author"]) for n in blade["notes"]] == [("新しい刃具ロット", "lead-operator")]


BAD: list[tuple[str, str, dict[str, Any], str]] = [
    ("put", stop_url("cnc-1", "2026-11-27T08:40:00+09:00"), {"reason": 99}, "unknown reason code 99"),
    ("put", stop_url("cnc-1", "2026-11-27T08:41:00+09:00"), {"reason": 22}, "2026-11-27T08:40:00+09:00"),
    ("put", stop_url("cnc-1", "2026-11-27T08:40:00+09:00"), {"reason": 22, "until": "2026-11-27T08:55:00+09:00"},
     "not inside the stop"),
    ("put", stop_url("cnc-1", "2026-11-27T08:40:00+09:00"), {"reason": 22, "until": "2026-11-27T08:30:00+09:00"},
     "not after"),
    ("put", stop_url("cnc-1", "2026-11-27T08:40:00+09:00"), {"reason": 22, "note": "x" * 2001}, "at most 2000"),
    ("post", f"{V1}/machines/inspect-1/scrap", {"time": "2026-11-27T09:30:00+09:00", "quantity": 0}, "quantity is 0"),
    ("post", f"{V1}/machines/inspect-1/scrap", {"time": "2026-11-27T09:30:00+09:00", "quantity": 36},
     "negative"),
    ("post", f"{V1}/machines/inspect-1/scrap", {"time": "2026-11-27T09:30:00+09:00", "quantity": -1},
     "booked scrap"),
    ("post", f"{V1}/machines/inspect-1/scrap", {"time": "2026-11-27T09:30:00", "quantity": 1}, "no UTC offset"),
    ("post", f"{V1}/lines/blade-1/notes", {"text": ""}, "empty"),
    ("post", f"{V1}/lines/blade-1/notes", {"text": "x" * 2001}, "at most 2000"),
]


async def test_bad_input_is_422_and_changes_nothing(api: httpx.AsyncClient,
                                                    tokens: tuple[Path, dict[str, dict[str, str]]]) -> None:
    who = tokens[1]
    figs = [f"{V1}/lines/blade-1/downtime", f"{V1}/lines/blade-1/oee", f"{V1}/lines/blade-1/stops"]
    before = [(await api.get(u, params=W, headers=who["read"])).json() for u in figs]
    for method, url, body, says in BAD:
        r = await api.request(method.upper(), url, json=body, headers=who["operator"])
        assert r.status_code == 422, (url, body, r.text)
        assert says in r.json()["detail"], (says, r.json())
    assert (await api.put(stop_url("nope", "2026-11-27T08:40:00+09:00"), json={"reason": 22},
                          headers=who["operator"])).status_code == 404
    assert (await api.post(f"{V1}/lines/nope/notes", json={"text": "x"}, headers=who["operator"])).status_code == 404
    assert (await api.get(f"{V1}/audit", headers=who["admin"])).json()["entries"] == []
    assert [(await api.get(u, params=W, headers=who["read"])).json() for u in figs] == before


async def test_a_write_drops_the_kept_answers(api: httpx.AsyncClient,
                                              tokens: tuple[Path, dict[str, dict[str, str]]]) -> None:
    who = tokens[1]
    url = f"{V1}/lines/blade-1/downtime"
    first = await api.get(url, params=W, headers=who["read"])
    again = await api.get(url, params=W, headers=who["read"])
    assert again.content == first.content  # kept for the period
    r = await api.put(stop_url("cnc-1", "2026-11-27T08:40:00+09:00"), json={"reason": 22}, headers=who["operator"])
    assert r.status_code == 200
    after = await api.get(url, params=W, headers=who["read"])  # same request, same period
    assert ("down", 22) in pareto(after.json()) and ("down", 22) not in pareto(first.json())
