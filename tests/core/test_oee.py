"""core.oee: hand-computed cases, then fast-forward ledgers through a real SQLite store."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hst

from collector.importer import import_samples
from core import oee
from core.model import MEANINGFUL_SIGNALS, to_ns
from core.plant import Plant, load_plant, parse_plant
from core.store import open_store
from core.store.base import ProductChange, StateChange
from simulators.fastforward import run_fast_forward
from tests.conftest import DEMO_PLANT
from tests.support.ledger import (
    clipped_ms,
    micro_flags,
    ms,
    parts_by_product,
    read_ledger,
    state_seconds_between,
    state_stretches,
)

# ---- hand-computed cases ----------------------------------------------------------------------------


def _machine(mid: str, ideal: float | None = 1.0, product: bool = False) -> dict[str, object]:
    sigs: dict[str, object] = {n: {"topic": f"t/{mid}/{n}", "field": n, "counter_bits": 32} for n in ("good", "scrap")}
    sigs["state"] = {"topic": f"t/{mid}/state", "field": "code",
                     "map": {0: "planned", 1: "running", 2: "idle", 3: "down", 4: "changeover"}}
    sigs["reason"] = {"topic": f"t/{mid}/state", "field": "reason"}
    if product:
        sigs["product"] = {"topic": f"t/{mid}/product", "field": "product"}
    m: dict[str, object] = {"id": mid, "source": "broker", "signals": sigs}
    if ideal is not None:
        m["ideal_cycle_s"] = ideal
    return m


def make_plant(tz: str = "UTC", shifts: list[dict[str, object]] | None = None) -> Plant:
    return parse_plant({
        "site": {"id": "t", "timezone": tz},
        "calendar": {"shifts": shifts if shifts is not None else [
            {"id": "day", "start": "08:00", "end": "16:00", "breaks": [["10:00", "10:15"], ["14:00", "14:15"]]}],
            "micro_stop_s": 120},
        "reasons": {20: {"name": "Spindle", "category": "breakdown"}, 30: {"name": "Starved", "category": "starved"},
                    10: {"name": "Tool change", "category": "changeover"}},
        "products": {"A": {"ideal_cycle_s": 2}, "B": {"ideal_cycle_s": 3}},
        "sources": {"broker": {"mqtt": {}}},
        "lines": [{"id": "l1", "machines": [_machine("m1"), _machine("m2", ideal=None, product=True)]}],
    })


def at(hhmm: str, day: str = "2026-11-25", tz: str = "+00:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}:00{tz}")


def sc(t: datetime, state: str, reason: int | None = None, machine: str = "m1") -> StateChange:
    return StateChange(to_ns(t), machine, state, reason)


def test_textbook_oee() -> None:
    # The classic example: an 8 h shift (480 min) with two 15-min breaks (30 min), 47 min of
    # breakdown, ideal cycle 1 s (60/min), 19 271 parts of which 423 rejects.
    #   planned production time = 480 − 30 = 450 min = 27 000 s
    #   run time                = 450 − 47  = 403 min = 24 180 s
    #   A = 403 / 450           = 0.895556
    #   P = 19 271 × 1 s / 24 180 s = 0.796981
    #   Q = (19 271 − 423) / 19 271 = 18 848 / 19 271 = 0.978050
    #   OEE = A × P × Q          = 0.698074
    #   TEEP = OEE × 450 / 480   = 0.654444
    plant = make_plant()
    m = plant.machine("m1")
    assert m is not None
    states = [sc(at("07:00"), "planned"), sc(at("08:00"), "running"), sc(at("09:00"), "down", 20),
              sc(at("09:47"), "running"), sc(at("16:00"), "planned")]
    r = oee.machine_oee(plant, m, at("08:00"), at("16:00"), states, [oee.ProductCounts(None, 18_848, 423)])
    assert r.time.scheduled_s == 480 * 60
    assert r.time.breaks_s == 30 * 60
    assert r.time.planned_production_s == 450 * 60
    assert r.run_s == 403 * 60
    assert r.availability == pytest.approx(403 / 450)
    assert r.performance == pytest.approx(19_271 / 24_180)
    assert r.quality == pytest.approx(18_848 / 19_271)
    assert r.oee == pytest.approx(0.698074, abs=1e-6)
    assert r.teep == pytest.approx(0.698074 * 450 / 480, abs=1e-6)
    assert not r.no_data
    # the one breakdown: MTBF = run / 1 = 24 180 s, MTTR = 47 min = 2 820 s
    assert r.mtbf_s == 24_180 and r.mttr_s == 2_820
    assert [(p.state, p.reason, p.seconds, p.count) for p in r.pareto] == [("down", 20, 2_820, 1)]
    # losses: breakdowns 2 820 s; reduced speed = running 24 180 − ideal 19 271 = 4 909 s; rejects 423 s
    assert r.losses.breakdowns_s == 2_820 and r.losses.micro_stops_s == 0
    assert r.losses.reduced_speed_s == pytest.approx(4_909) and r.losses.rejects_s == pytest.approx(423)
    # state seconds over the window: running 480 − 47 = 433 min (breaks are calendar time, not state)
    assert r.states.state_s == {"running": 433 * 60, "down": 47 * 60}


def test_planned_state_and_breaks_count_once_and_micro_stops_are_run_time() -> None:
    # planned state 09:55–10:20 overlaps the 10:00–10:15 break: planned = 09:55–10:20 = 25 min,
    # plus the 14:00–14:15 break = 40 min; PPT = 480 − 40 = 440 min = 26 400 s.
    # A 90 s stop (< 120 s micro_stop_s) at 11:00 is run time; a 200 s stop at 12:00 is not;
    # a starved idle of 10 min at 13:00 is not run time and not own downtime.
    #   run = 26 400 − 200 − 600 = 25 600 s
    plant = make_plant()
    m = plant.machine("m1")
    assert m is not None
    states = [sc(at("08:00"), "running"), sc(at("09:55"), "planned"), sc(at("10:20"), "running"),
              sc(at("11:00"), "down", 20), sc(at("11:00") + timedelta(seconds=90), "running"),
              sc(at("12:00"), "down", 20), sc(at("12:00") + timedelta(seconds=200), "running"),
              sc(at("13:00"), "idle", 30), sc(at("13:10"), "running")]
    r = oee.machine_oee(plant, m, at("08:00"), at("16:00"), states, [oee.ProductCounts(None, 20_000, 0)])
    assert r.time.planned_s == 40 * 60
    assert r.time.planned_production_s == 26_400
    assert r.micro_stop_s == 90
    assert r.run_s == 25_600
    assert r.availability == pytest.approx(25_600 / 26_400)
    assert r.losses.starved_blocked_s == 600 and r.losses.idle_s == 0
    assert [(p.reason, p.seconds) for p in r.pareto] == [(20, 200)]
    assert r.mtbf_s == 25_600 and r.mttr_s == 200  # one breakdown (the micro-stop is not one)
    kinds = [(e.reason, e.micro_stop, e.starved_blocked) for e in r.events]
    assert kinds == [(20, True, False), (20, False, False), (30, False, True)]


def test_window_that_starts_mid_stop_counts_only_its_part() -> None:
    # down since 09:00 (a long stop: 09:00–10:00), window from 09:30 to 12:00 (no breaks inside
    # but 10:00–10:15): PPT = 150 − 15 = 135 min; down inside = 30 min; run = 105 min.
    plant = make_plant()
    m = plant.machine("m1")
    assert m is not None
    states = [sc(at("08:00"), "running"), sc(at("09:00"), "down", 20), sc(at("10:00"), "running")]
    r = oee.machine_oee(plant, m, at("09:30"), at("12:00"), states, [oee.ProductCounts(None, 5000, 0)])
    assert r.time.planned_production_s == 135 * 60
    assert r.run_s == 105 * 60
    assert r.states.state_s == {"down": 30 * 60, "running": 120 * 60}
    (ev,) = r.events
    assert (ev.start, ev.end, ev.seconds, ev.length_s) == (at("09:30"), at("10:00"), 1800, 3600)
    # a 100 s stop cut by the window start is still a 100 s stop (a micro-stop), judged whole
    states = [sc(at("08:00"), "running"), sc(at("09:29"), "down", 20),
              sc(at("09:30") + timedelta(seconds=40), "running")]
    r = oee.machine_oee(plant, m, at("09:30"), at("12:00"), states, [oee.ProductCounts(None, 5000, 0)])
    assert r.micro_stop_s == 40 and r.events[0].micro_stop


def test_no_state_before_first_fact_is_offline() -> None:
    plant = make_plant()
    tl = oee.state_timeline([sc(at("09:00"), "running")], "m1", to_ns(at("08:00")), to_ns(at("10:00")))
    assert [(x.state, x.seconds) for x in tl] == [("offline", 3600), ("running", 3600)]
    assert [x.state for x in oee.state_timeline([], "m1", to_ns(at("08:00")), to_ns(at("10:00")))] == ["offline"]
    m = plant.machine("m1")
    assert m is not None
    r = oee.machine_oee(plant, m, at("08:00"), at("10:00"), [sc(at("09:00"), "running")],
                        [oee.ProductCounts(None, 3000, 0)])
    assert r.losses.offline_s == 3600 and r.availability == pytest.approx(0.5)


def test_no_counts_is_no_data_not_100_percent() -> None:
    plant = make_plant()
    m = plant.machine("m1")
    assert m is not None
    r = oee.machine_oee(plant, m, at("08:00"), at("16:00"), [sc(at("08:00"), "running")], [])
    assert r.no_data
    assert (r.availability, r.performance, r.quality, r.oee, r.teep) == (None, None, None, None, None)
    assert r.run_s == 450 * 60  # the time figures are still there
    r = oee.machine_oee(plant, m, at("08:00"), at("16:00"), [], [oee.ProductCounts(None, 0, 0)])
    assert r.no_data and r.oee is None


def test_dst_shift_is_an_hour_shorter_or_longer() -> None:
    # Europe/Berlin: clocks go 02:00 → 03:00 on 2026-03-29 and 03:00 → 02:00 on 2026-10-25.
    # A Saturday night shift 22:00–06:00 (8 h on the wall clock, no breaks) is 7 h, resp. 9 h, real time.
    plant = make_plant("Europe/Berlin", [{"id": "night", "start": "22:00", "end": "06:00", "days": ["sat"]}])
    m = plant.machine("m1")
    assert m is not None
    for day, next_day, hours in (("2026-03-28", "2026-03-29", 7), ("2026-10-24", "2026-10-25", 9)):
        w = oee.select_shift(plant, "night", datetime.fromisoformat(f"{next_day}T12:00:00+00:00"), day)
        assert w.scheduled_s == hours * 3600
        start = datetime.fromisoformat(f"{day}T12:00:00+00:00")
        end = datetime.fromisoformat(f"{next_day}T12:00:00+00:00")
        # running through the shift and planned outside it (running after hours would be scheduled
        # time too), ideal 1 s, 1 part per real second: A = P = Q = 1
        states = [sc(start, "planned"), sc(w.start, "running"), sc(w.end, "planned")]
        r = oee.machine_oee(plant, m, start, end, states, [oee.ProductCounts(None, hours * 3600, 0)])
        assert r.time.scheduled_s == hours * 3600 and r.time.planned_production_s == hours * 3600
        assert r.availability == 1 and r.performance == 1 and r.oee == 1
        assert r.teep == pytest.approx(hours / 24)  # 24 h of calendar time (UTC noon to noon)


def test_product_segments_and_per_product_performance() -> None:
    # products A (2 s) then B (3 s) from 09:00; a count at exactly 09:00 belongs to A.
    t9 = to_ns(at("09:00"))
    changes = [ProductChange(to_ns(at("07:00")), "m2", "A"), ProductChange(t9, "m2", "B")]
    segs = oee.product_segments(changes, "m2", to_ns(at("08:00")), to_ns(at("10:00")))
    assert [(s.start_ns, s.end_ns, s.product) for s in segs] == [
        (to_ns(at("08:00")), t9 + 1, "A"), (t9 + 1, to_ns(at("10:00")), "B")]
    plant = make_plant()
    m = plant.machine("m2")
    assert m is not None
    # running 08:00–10:00 except the 10:00 break (outside the window): run 7 200 s;
    # ideal = 1 000 A × 2 s + 1 000 B × 3 s (+ 100 scrap B × 3 s) = 5 300 s; P = 5 300 / 7 200
    r = oee.machine_oee(plant, m, at("08:00"), at("10:00"), [sc(at("08:00"), "running", machine="m2")],
                        [oee.ProductCounts("A", 1000, 0), oee.ProductCounts("B", 1000, 100)])
    assert r.performance == pytest.approx(5300 / 7200)
    assert r.losses.rejects_s == pytest.approx(300)
    # m2 has no ideal of its own: a part of an unknown product has no ideal time → P is None
    r = oee.machine_oee(plant, m, at("08:00"), at("10:00"), [sc(at("08:00"), "running", machine="m2")],
                        [oee.ProductCounts(None, 10, 0)])
    assert r.performance is None and r.oee is None and r.quality == 1


def test_shift_selection() -> None:
    plant = make_plant("Asia/Tokyo", [{"id": "day", "start": "08:00", "end": "17:00"},
                                      {"id": "night", "start": "20:00", "end": "05:00"}])
    as_of = datetime.fromisoformat("2026-11-27T02:00:00+09:00")  # Friday 02:00: Thursday's night shift
    cur = oee.select_shift(plant, "current", as_of)
    assert (cur.shift_id, cur.day) == ("night", date(2026, 11, 26))
    prev = oee.select_shift(plant, "previous", as_of)
    assert (prev.shift_id, prev.day) == ("day", date(2026, 11, 26))
    w = oee.select_shift(plant, "day", as_of, "2026-11-25")
    assert w.start == datetime.fromisoformat("2026-11-25T08:00:00+09:00")
    assert oee.shift_figure_window(cur, as_of) == (cur.start, as_of)
    assert oee.shift_figure_window(w, as_of) == (w.start, w.end)
    with pytest.raises(oee.OeeError, match="YYYY-MM-DD"):
        oee.select_shift(plant, "day", as_of, "2026-11-5")
    with pytest.raises(oee.OeeError, match="does not run"):
        oee.select_shift(plant, "day", as_of, "2026-11-28")  # a Saturday
    with pytest.raises(oee.OeeError, match="unknown shift"):
        oee.select_shift(plant, "late", as_of, "2026-11-25")
    with pytest.raises(oee.OeeError, match="needs date"):
        oee.select_shift(plant, "day", as_of)
    with pytest.raises(oee.OeeError, match="no current shift"):
        oee.select_shift(plant, "current", datetime.fromisoformat("2026-11-27T18:00:00+09:00"))


# ---- against fast-forward ledgers, through a real SQLite store --------------------------------------

RUN_START = datetime.fromisoformat("2026-12-28T00:00:00+09:00")  # Monday; 12-31 .. 01-03 are holidays
RUN_END = RUN_START + timedelta(days=7)
SEED = 7


@dataclass
class Run:
    plant: Plant
    records: list[dict[str, Any]]
    db: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    d = tmp_path_factory.mktemp("oee")
    plant = load_plant(DEMO_PLANT)
    samples, truth = d / "samples.csv", d / "truth.jsonl"
    run_fast_forward(plant, SEED, RUN_START, RUN_END, samples, truth)
    # gauges play no part in the figures; leaving them out halves the import
    lean = d / "lean.csv"
    with samples.open(encoding="utf-8", newline="") as f, lean.open("w", encoding="utf-8", newline="") as g:
        w = csv.writer(g, lineterminator="\n")
        for i, row in enumerate(csv.reader(f)):
            if i == 0 or row[2] in MEANINGFUL_SIGNALS:
                w.writerow(row)
    db = d / "oee.db"

    async def load() -> None:
        store = open_store(f"sqlite:///{db}")
        await store.open()
        try:
            # a week still ahead of today's clock: import it as if after the run
            await import_samples(plant, store, lean, clock=lambda: int(RUN_END.timestamp()) * 10**9)
        finally:
            await store.close()

    asyncio.run(load())
    yield Run(plant, read_ledger(truth), db)


def _with_store(db: Path, fn: Any) -> Any:
    async def go() -> Any:
        store = open_store(f"sqlite:///{db}")
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def computed(r: Run, machine: str, start: datetime, end: datetime) -> oee.MachineOee:
    return _with_store(r.db, lambda st: oee.machine_oee_from_store(st, r.plant, machine, start, end))  # type: ignore[no-any-return]


@dataclass
class Expected:
    good: int
    scrap: int
    state_s: dict[str, float]
    reason_s: dict[tuple[str, int | None], float]
    ppt_s: float
    run_s: float
    oee: float | None


def expected(r: Run, machine: str, start: datetime, end: datetime) -> Expected:
    """The figures from the ledger alone. The simulator runs the calendar's breaks and the time
    outside shifts as `planned` on every station, so PPT = window − planned seconds; run time =
    running + micro-stops. A stop runs from a non-running state to the next running or planned one
    (reasons and states may change inside); it is a micro-stop when only down/idle and shorter than
    micro_stop_s as a whole (a stop still open when the ledger ends is not)."""
    plant = r.plant
    m = plant.machine(machine)
    assert m is not None
    state_s, reason_s = state_seconds_between(r.records, machine, start, end)
    ppt_ms = ms(end) - ms(start) - round(state_s.get("planned", 0) * 1000)
    run_ms = round(state_s.get("running", 0) * 1000)
    micro_ms = round(plant.calendar.micro_stop_s * 1000)
    stretches = state_stretches(r.records, machine)
    run_ms += sum(clipped_ms(x, start, end) for x, micro in zip(stretches, micro_flags(stretches, micro_ms),
                                                                  strict=True) if micro)
    parts = parts_by_product(r.records, machine, start, end)
    good = sum(g for g, _ in parts.values())
    scrap = sum(s for _, s in parts.values())
    ideal = 0.0
    for product, (g, s) in parts.items():
        cycle = plant.products[product].ideal_cycle_s if product in plant.products else m.ideal_cycle_s
        assert cycle is not None
        ideal += cycle * (g + s)
    value = None
    if good + scrap and ppt_ms and run_ms:
        value = (run_ms / ppt_ms) * (ideal * 1000 / run_ms) * (good / (good + scrap))
    return Expected(good, scrap, state_s, reason_s, ppt_ms / 1000, run_ms / 1000, value)


def check(r: Run, machine: str, start: datetime, end: datetime) -> tuple[oee.MachineOee, Expected]:
    got, exp = computed(r, machine, start, end), expected(r, machine, start, end)
    where = (machine, start.isoformat(), end.isoformat())
    assert (got.good, got.scrap) == (exp.good, exp.scrap), where
    assert set(got.states.state_s) == set(exp.state_s), where
    for st, sec in exp.state_s.items():
        assert got.states.state_s[st] == pytest.approx(sec, abs=1), (where, st)
    assert set(got.states.reason_s) == set(exp.reason_s), where
    for key, sec in exp.reason_s.items():
        assert got.states.reason_s[key] == pytest.approx(sec, abs=1), (where, key)
    assert got.time.planned_production_s == pytest.approx(exp.ppt_s, abs=1), where
    assert got.run_s == pytest.approx(exp.run_s, abs=1), where
    if exp.oee is None:
        assert got.oee is None, where
    else:
        assert got.oee is not None, where
        assert got.oee * 100 == pytest.approx(exp.oee * 100, abs=0.1), where
    return got, exp


def jst(text: str) -> datetime:
    return datetime.fromisoformat(text + "+09:00")


MACHINES = [m.id for _, m in load_plant(DEMO_PLANT).machines()]


def test_day_shift_with_breaks(run: Run) -> None:
    start, end = jst("2026-12-28T08:00:00"), jst("2026-12-28T17:00:00")
    for mid in MACHINES:
        got, exp = check(run, mid, start, end)
        # 9 h scheduled; breaks 10 + 45 + 10 min; PPT = 32 400 − 3 900 = 28 500 s
        assert got.time.scheduled_s == 32_400 and got.time.breaks_s == 3_900
        assert got.time.planned_production_s == 28_500
        assert exp.good > 100 and got.oee is not None and 0.3 < got.oee < 1.0


def test_line_figures_on_a_day_shift(run: Run) -> None:
    # a line: good = output station's, scrap = every station's; run time, PPT and ideal time are
    # the output station's, so A × P comes from it and Q from the line's counts
    start, end = jst("2026-12-29T08:00:00"), jst("2026-12-29T17:00:00")
    for line in run.plant.lines:
        got = _with_store(run.db, lambda st, lid=line.id: oee.line_oee_from_store(st, run.plant, lid, start, end))
        out = line.output_machines[0]
        exp = expected(run, out.id, start, end)
        scrap = sum(parts_by_product_total(run.records, m.id, start, end)[1] for m in line.machines)
        assert (got.good, got.scrap) == (exp.good, scrap)
        ideal = sum((run.plant.ideal_cycle_s(out, p) or 0) * (g + s)
                    for p, (g, s) in parts_by_product(run.records, out.id, start, end).items())
        want = (exp.run_s / exp.ppt_s) * (ideal / exp.run_s) * (exp.good / (exp.good + scrap))
        assert got.oee is not None and got.oee * 100 == pytest.approx(want * 100, abs=0.1)
        # downtime is each station's own: no starved/blocked idle in it, all of it in the Pareto
        assert all(not ev.starved_blocked for ev in got.events)
        assert sum(p.seconds for p in got.pareto) == pytest.approx(
            sum(ev.seconds for ev in got.events if not ev.micro_stop))
        assert [p.seconds for p in got.pareto] == sorted((p.seconds for p in got.pareto), reverse=True)


def test_night_shift_across_midnight(run: Run) -> None:
    start, end = jst("2026-12-28T20:00:00"), jst("2026-12-29T05:00:00")
    for mid in MACHINES:
        got, _ = check(run, mid, start, end)
        assert got.time.scheduled_s == 32_400 and got.time.planned_production_s == 32_400 - 45 * 60


def test_window_starting_mid_stop(run: Run) -> None:
    lo, hi = ms(jst("2026-12-29T08:00:00")), ms(jst("2026-12-29T16:00:00"))
    found = [(mid, s) for mid in MACHINES for s in state_stretches(run.records, mid)
             if s.state == "down" and s.until_ms is not None and s.until_ms - s.since_ms > 150_000
             and lo < s.since_ms < hi]
    assert found, "no long stop on the day shift of 12-29 with this seed"
    for mid, stop in found[:4]:
        assert stop.until_ms is not None
        start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=stop.since_ms + 60_000)  # a minute in
        end = jst("2026-12-29T17:00:00")
        got, _ = check(run, mid, start, end)
        first = got.events[0]
        assert first.state == "down" and first.start == start
        assert first.seconds == pytest.approx((stop.until_ms - stop.since_ms - 60_000) / 1000, abs=1)


def test_mixed_model_shift_with_changeover(run: Run) -> None:
    plant = run.plant
    for day in ("2026-12-28", "2026-12-29", "2026-12-30"):
        start, end = jst(f"{day}T08:00:00"), jst(f"{day}T17:00:00")
        parts = parts_by_product(run.records, "cnc-1", start, end)
        if len([p for p in parts if p is not None]) >= 2:
            break
    else:
        pytest.fail("no day shift made both products on cnc-1")
    got, _ = check(run, "cnc-1", start, end)
    assert got.states.state_s.get("changeover", 0) > 0
    assert {p.product: (p.good, p.scrap) for p in got.products} == parts
    assert sum(ev.seconds for ev in got.events if ev.state == "changeover") == pytest.approx(
        got.states.state_s["changeover"], abs=1)
    # the line: good = inspect-1's, scrap = every station's
    line = plant.line("blade-1")
    assert line is not None
    lo = _with_store(run.db, lambda st: oee.line_oee_from_store(st, plant, "blade-1", start, end))
    ids = [m.id for m in line.machines]
    assert lo.good == parts_by_product_total(run.records, "inspect-1", start, end)[0]
    assert lo.scrap == sum(parts_by_product_total(run.records, mid, start, end)[1] for mid in ids)
    out = expected(run, "inspect-1", start, end)
    assert lo.run_s == pytest.approx(out.run_s, abs=1)
    assert lo.planned_production_s == pytest.approx(out.ppt_s, abs=1)
    assert all(not ev.starved_blocked for ev in lo.events)
    assert set(lo.starved_blocked_s) == set(ids)
    for st in lo.stations:
        sb = sum(sec for (state, reason), sec in st.states.reason_s.items()
                 if state == "idle" and reason in (30, 31))
        assert st.losses.starved_blocked_s <= sb + 1


def parts_by_product_total(records: list[dict[str, Any]], machine: str, start: datetime,
                           end: datetime) -> tuple[int, int]:
    parts = parts_by_product(records, machine, start, end)
    return sum(g for g, _ in parts.values()), sum(s for _, s in parts.values())


def test_week_with_holidays(run: Run) -> None:
    # Mon 12-28 .. Wed 12-30 run both shifts; Thu 12-31 and Fri 01-01 are holidays, then a weekend.
    #   scheduled = 3 days × (9 h + 9 h) = 194 400 s
    #   PPT = 3 × ((32 400 − 3 900) + (32 400 − 2 700)) = 3 × 58 200 = 174 600 s
    for mid in MACHINES:
        got, _ = check(run, mid, RUN_START, RUN_END)
        assert got.time.calendar_s == 7 * 86_400
        assert got.time.scheduled_s == 194_400
        assert got.time.planned_production_s == 174_600
        assert got.teep is not None and got.oee is not None
        assert got.teep == pytest.approx(got.oee * 174_600 / (7 * 86_400))
    # New Year's Day alone (the night shift of 12-31 is cancelled too): nothing scheduled, no parts
    hol = computed(run, "cnc-1", jst("2027-01-01T00:00:00"), jst("2027-01-02T00:00:00"))
    assert hol.time.scheduled_s == 0 and hol.no_data and hol.oee is None
    assert hol.states.state_s == {"planned": 86_400}


@given(hst.lists(hst.tuples(hst.integers(0, 1000), hst.integers(1, 50)), max_size=30),
       hst.integers(-100, 1200), hst.integers(0, 400))
def test_inside_ns_equals_the_intersection_it_replaced(raw: list[tuple[int, int]], a: int, length: int) -> None:
    """machine_oee measures each stretch inside planned production time by bisection; it must give
    what the plain intersection gives (sorted, disjoint intervals)."""
    ivs = oee._merge((s, s + n) for s, n in raw)
    b = a + length
    expected = oee._total(oee._intersect([(a, b)], ivs))
    assert oee._inside_ns(ivs, [s for s, _ in ivs], a, b) == expected


def test_fast_forward_hours_add_up_to_the_window(run: Run) -> None:
    """The review's case on a simulated week: a line's hourly OEE series over five hours sums to the
    five hours as one window for every time and loss, and the line's micro-stop loss is its micro-stop
    time (its loss tree is the output machine's)."""
    from core.readside import Figures, Window

    start = jst("2026-12-28T08:00:00")
    w = Window(start, start + timedelta(hours=5), None, RUN_END)

    async def go(st: Any) -> Any:
        fig = Figures(run.plant, st)
        return await fig.oee(fig.line("blade-1"), w, "1h")

    whole, hours = _with_store(run.db, go)
    assert isinstance(whole, oee.LineOee) and len(hours) == 5
    assert sum(h.run_s for h in hours) == pytest.approx(whole.run_s, abs=1e-6)
    assert sum(h.planned_production_s for h in hours) == pytest.approx(whole.planned_production_s, abs=1e-6)
    for f in ("breakdowns_s", "changeover_s", "idle_s", "micro_stops_s", "offline_s", "starved_blocked_s"):
        assert sum(getattr(h.losses, f) for h in hours) == pytest.approx(getattr(whole.losses, f), abs=1e-6), f
    assert whole.losses.micro_stops_s == pytest.approx(whole.output_sum("micro_stop_s"))
    assert whole.output_sum("running_s") + sum(
        getattr(whole.losses, f) for f in ("breakdowns_s", "changeover_s", "idle_s", "micro_stops_s", "offline_s",
                                           "starved_blocked_s")) == pytest.approx(whole.planned_production_s)
