"""The line model: buffers between stations (starved, blocked), scrap, slow cycles, product runs
with changeovers, and determinism. Checked against the ledger and the samples file."""

from __future__ import annotations

import bisect
import csv
import itertools
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.plant import Plant, PlantFileError, parse_plant
from simulators.fastforward import run_fast_forward
from simulators.ledger import LedgerRecord, read_ledger
from simulators.model import PlantModel, to_ms

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
STATE_MAP = {1: "running", 2: "idle", 3: "down", 4: "changeover", 5: "planned"}
START = datetime.fromisoformat("2026-03-02T00:00:00Z")
# precise cycles: every cycle takes exactly the ideal cycle time, no micro-stops, no scrap
EXACT: dict[str, Any] = {"cycle_cv": 0, "cycle_factor": 1.0, "slow_cycle_rate": 0, "scrap_rate": 0,
                         "micro_stop_rate_per_h": 0}
NEVER = 1e9  # an MTBF no run reaches


def station(line: str, mid: str, ideal: float, *, product: bool = False, **sim: Any) -> dict[str, Any]:
    n = f"ns=2;s={line}.{mid}"
    signals: dict[str, Any] = {
        "good": {"node": f"{n}.GoodCount", "counter_bits": 16},
        "scrap": {"node": f"{n}.ScrapCount", "counter_bits": 16},
        "state": {"node": f"{n}.State", "map": STATE_MAP},
        "reason": {"node": f"{n}.StopReason"},
    }
    if product:
        signals["product"] = {"node": f"{n}.Product"}
    return {"id": mid, "ideal_cycle_s": ideal, "source": "plc", "signals": signals,
            "simulation": {"reasons": [10, 20, 30, 31, 40], **sim}}


def make_plant(lines: dict[str, list[dict[str, Any]]], *, breaks: list[list[str]] | None = None,
               products: dict[str, Any] | None = None) -> Plant:
    raw: dict[str, Any] = {
        "site": {"id": "line-test", "timezone": "UTC"},
        "calendar": {"shifts": [{"id": "all", "start": "00:00", "end": "00:00", "days": ALL_DAYS,
                                 "breaks": breaks or []}], "micro_stop_s": 60},
        "reasons": {10: {"name": "Setup", "category": "changeover"},
                    20: {"name": "Fault", "category": "breakdown"},
                    30: {"name": "Starved", "category": "starved"},
                    31: {"name": "Blocked", "category": "blocked"},
                    40: {"name": "Minor stop", "category": "micro_stop"}},
        "products": products or {},
        "sources": {"plc": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}}},
        "lines": [{"id": lid, "machines": ms} for lid, ms in lines.items()],
    }
    return parse_plant(raw, "<line test plant>")


def read_samples(path: Path) -> list[tuple[int, str, str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return [(to_ms(datetime.fromisoformat(t)), m, s, v) for t, m, s, v in rows[1:]]


@dataclass
class Run:
    plant: Plant
    ledger: list[LedgerRecord]
    samples: list[tuple[int, str, str, str]]
    paths: tuple[Path, Path]

    def parts(self, machine: str, *, good: bool | None = None) -> list[int]:
        return [r.t_ms for r in self.ledger if r.kind == "part" and r.machine == machine
                and (good is None or r.good == good)]

    def states(self, machine: str) -> list[LedgerRecord]:
        return [r for r in self.ledger if r.kind == "state" and r.machine == machine]


def simulate(plant: Plant, tmp: Path, hours: float, seed: int = 1, name: str = "run") -> Run:
    samples, truth = tmp / f"{name}.csv", tmp / f"{name}.jsonl"
    end = datetime.fromtimestamp(START.timestamp() + hours * 3600, START.tzinfo)
    run_fast_forward(plant, seed, START, end, samples, truth)
    return Run(plant, read_ledger(truth), read_samples(samples), (samples, truth))


def count_le(times: list[int], t: int) -> int:
    return bisect.bisect_right(times, t)


def state_at(states: list[LedgerRecord], t: int) -> LedgerRecord:
    """The state record in force at ``t`` (settled: the last one at or before ``t``)."""
    return [r for r in states if r.t_ms <= t][-1]


def down_periods(states: list[LedgerRecord]) -> list[tuple[int, int, LedgerRecord]]:
    return [(a.t_ms, b.t_ms, a) for a, b in itertools.pairwise(states) if a.state == "down" and a.reason == 20]


LOADED = ("running", "down", "changeover")  # states in which a station has a part in the machine


# ---- starved and blocked ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_lines(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """`feed`: a breaking first station before a slower, reliable one; `hold`: a slow, reliable
    first station before a faster one that breaks. Buffers of 5, starting with 2 parts."""
    buf: dict[str, Any] = {"buffer_capacity": 5, "buffer_initial": 2}
    plant = make_plant({
        "feed": [station("feed", "s1", 10, **EXACT, **buf, mtbf_s=900, mttr_s=240),
                 station("feed", "s2", 12, **EXACT, mtbf_s=NEVER)],
        "hold": [station("hold", "p1", 12, **EXACT, **buf, mtbf_s=NEVER),
                 station("hold", "p2", 10, **EXACT, mtbf_s=900, mttr_s=240)],
    })
    return simulate(plant, tmp_path_factory.mktemp("lines"), hours=12)


def test_a_breakdown_starves_the_next_station_once_its_buffer_is_empty(two_lines: Run) -> None:
    c2 = 12_000
    good1, parts2 = two_lines.parts("s1", good=True), two_lines.parts("s2")
    s2_states = two_lines.states("s2")
    checked = 0
    for t0, t1, _ in down_periods(two_lines.states("s1")):
        if state_at(s2_states, t0).state != "running":
            continue
        # parts in the buffer when s1 broke down: s2 has one more in the machine
        level = 2 + count_le(good1, t0) - count_le(parts2, t0) - 1
        assert 0 <= level <= 5
        if t1 - t0 <= (level + 1) * c2:
            continue  # repaired before the buffer could run dry
        starved = next(r for r in s2_states if r.t_ms > t0)
        assert (starved.state, starved.reason) == ("idle", 30)
        # not before s2 finished the part in the machine and every part in the buffer
        assert t0 + level * c2 < starved.t_ms <= t0 + (level + 1) * c2
        assert count_le(parts2, starved.t_ms) - count_le(parts2, t0) == level + 1
        # fed again by s1's first part after the repair
        fed = next(r for r in s2_states if r.t_ms > starved.t_ms)
        assert fed.state == "running" and t1 < fed.t_ms <= t1 + 10_000
        checked += 1
    assert checked >= 5


def test_a_breakdown_blocks_the_station_before_once_its_buffer_is_full(two_lines: Run) -> None:
    c1 = 12_000
    good1, parts2 = two_lines.parts("p1", good=True), two_lines.parts("p2")
    p1_states = two_lines.states("p1")
    checked = 0
    for t0, t1, _ in down_periods(two_lines.states("p2")):
        if state_at(p1_states, t0).state != "running":
            continue
        level = 2 + count_le(good1, t0) - count_le(parts2, t0) - 1  # p2 broke down with a part in it
        assert 0 <= level <= 5
        if t1 - t0 <= (5 - level + 1) * c1:
            continue
        blocked = next(r for r in p1_states if r.t_ms > t0)
        assert (blocked.state, blocked.reason) == ("idle", 31)
        # p1 filled the buffer, then finished one more part that has nowhere to go
        assert t0 + (5 - level) * c1 < blocked.t_ms <= t0 + (5 - level + 1) * c1
        assert count_le(good1, blocked.t_ms) - count_le(good1, t0) == 5 - level + 1
        freed = next(r for r in p1_states if r.t_ms > blocked.t_ms)
        # once repaired, p2 finishes the part it holds and takes the next: there is room again
        assert freed.state == "running" and t1 < freed.t_ms <= t1 + 10_000
        checked += 1
    assert checked >= 5


def check_buffers(run: Run) -> None:
    """The buffer levels the ledger implies: never below 0 or above capacity (scrap never goes
    downstream), exactly 0 when the next station starves, exactly full when the one before
    blocks; the first station never starves, the last never blocks."""
    plant = run.plant
    for line in plant.lines:
        ms = line.machines
        first_states = run.states(ms[0].id)
        assert not any(r.reason == 30 for r in first_states)
        assert not any(r.reason == 31 for r in run.states(ms[-1].id))
        for up, down in itertools.pairwise(ms):
            cap = up.simulation.buffer_capacity
            init = up.simulation.buffer_initial
            init = init if init is not None else (cap + 1) // 2
            good_up, parts_down = run.parts(up.id, good=True), run.parts(down.id)
            down_states = run.states(down.id)

            def loaded(t: int, states: list[LedgerRecord] = down_states) -> int:
                return 1 if state_at(states, t).state in LOADED else 0

            for t in sorted(set(parts_down)):  # scrap never goes downstream
                assert count_le(parts_down, t) <= init + count_le(good_up, t)
            for r in down_states:
                if r.state == "idle":
                    assert r.reason in (30, 31)
                if r.reason == 30:
                    assert init + count_le(good_up, r.t_ms) - count_le(parts_down, r.t_ms) == 0, (down.id, r)
            for r in run.states(up.id):
                if r.state == "idle" and r.reason == 31:
                    held = 1
                    level = init + count_le(good_up, r.t_ms) - held - count_le(parts_down, r.t_ms) - loaded(r.t_ms)
                    assert level == cap, (up.id, r)


@pytest.fixture(scope="module")
def random_line(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Three stations with everything on: variation, slow cycles, scrap, breakdowns, micro-stops,
    product runs with changeovers, breaks."""
    rnd: dict[str, Any] = {"cycle_cv": 0.25, "scrap_rate": 0.15, "slow_cycle_rate": 0.05, "mtbf_s": 600, "mttr_s": 90,
           "micro_stop_rate_per_h": 20, "changeover_s": 40}
    plant = make_plant({"mix": [
        station("mix", "r1", 5, product=True, **rnd, buffer_capacity=4, product_mix={"A": 2, "B": 1}, run_length=40),
        station("mix", "r2", 6, product=True, **rnd, buffer_capacity=1),
        station("mix", "r3", 5, product=True, **rnd),
    ]}, breaks=[["02:00", "02:20"], ["05:00", "05:45"]],
        products={"A": {"ideal_cycle_s": 5}, "B": {"ideal_cycle_s": 7}})
    return simulate(plant, tmp_path_factory.mktemp("random"), hours=8)


def test_buffer_levels_add_up_on_a_line_with_everything(random_line: Run, two_lines: Run) -> None:
    check_buffers(random_line)
    check_buffers(two_lines)
    seen = {(r.state, r.reason) for r in random_line.ledger if r.kind == "state"}
    assert {("idle", 30), ("idle", 31), ("down", 20), ("down", 40), ("changeover", 10), ("planned", None),
            ("running", None)} <= seen
    micro = random_line.plant.calendar.micro_stop_s * 1000
    for m in ("r1", "r2", "r3"):
        for a, b in itertools.pairwise(random_line.states(m)):
            assert b.t_ms > a.t_ms, "no state lasts zero milliseconds"
            assert (a.state, a.reason) != (b.state, b.reason), "a state record is a change"
            if a.reason == 40:
                assert b.t_ms - a.t_ms < micro


def test_stations_start_running_unless_their_buffer_starts_empty(tmp_path: Path) -> None:
    plant = make_plant({"l": [station("l", "a", 10, **EXACT, buffer_initial=0, mtbf_s=NEVER),
                              station("l", "b", 10, **EXACT, buffer_initial=3, mtbf_s=NEVER),
                              station("l", "c", 10, **EXACT, mtbf_s=NEVER)]})
    first = PlantModel(plant, 1, START).initial_events()
    assert [(e.machine, e.state, e.reason) for e in first] == [
        ("a", "running", None), ("b", "idle", 30), ("c", "running", None)]
    run = simulate(plant, tmp_path, hours=0.1)
    b = run.states("b")
    assert (b[1].state, b[1].t_ms) == ("running", to_ms(START) + 10_000)  # a's first part arrives


# ---- cycles -----------------------------------------------------------------------------------


def test_slow_cycles_take_slow_cycle_factor_times_as_long(tmp_path: Path) -> None:
    plant = make_plant({"l": [station("l", "a", 2, **{**EXACT, "slow_cycle_rate": 0.25, "slow_cycle_factor": 2.0},
                                      mtbf_s=NEVER)]})
    run = simulate(plant, tmp_path, hours=1.5)
    gaps = [b - a for a, b in itertools.pairwise(run.parts("a"))]
    assert set(gaps) == {2_000, 4_000}
    assert 0.2 < gaps.count(4_000) / len(gaps) < 0.3


# ---- products and changeovers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def product_line(tmp_path_factory: pytest.TempPathFactory) -> Run:
    sim: dict[str, Any] = {"cycle_cv": 0.1, "mtbf_s": 1800, "mttr_s": 60, "run_length": 15}
    plant = make_plant({"pl": [
        station("pl", "q1", 4, product=True, **sim, changeover_s=20, product_mix={"A": 1, "B": 1}),
        station("pl", "q2", 4, product=True, **sim, changeover_s=30),
        station("pl", "q3", 4, product=True, **sim, changeover_s=0),  # switches without a changeover
    ]}, products={"A": {"ideal_cycle_s": 4}, "B": {"ideal_cycle_s": 6}})
    return simulate(plant, tmp_path_factory.mktemp("products"), hours=4)


def product_switches(run: Run, machine: str) -> list[tuple[int, str]]:
    return [(t, v) for t, m, s, v in run.samples if m == machine and s == "product"]


def test_a_changeover_begins_when_the_product_switches(product_line: Run) -> None:
    start_ms = to_ms(START)
    samples = product_line.samples
    for machine in ("q1", "q2"):
        switches = product_switches(product_line, machine)[1:]  # the first is the baseline
        assert len(switches) >= 8
        changeovers = [r for r in product_line.states(machine) if r.state == "changeover"]
        assert [r.t_ms for r in changeovers] == [t for t, _ in switches]
        assert all(r.reason == 10 for r in changeovers)
        for t, _ in switches:
            i = next(i for i, row in enumerate(samples) if row[0] == t and row[1] == machine and row[2] == "product")
            assert samples[i + 1] == (t, machine, "reason", "10")
            assert samples[i + 2] == (t, machine, "state", "4")
        durations = [b.t_ms - a.t_ms for a, b in itertools.pairwise(product_line.states(machine))
                     if a.state == "changeover"]
        expected = product_line.plant.machine(machine).simulation.changeover_s * 1000  # type: ignore[union-attr]
        assert 0.6 * expected < statistics.mean(durations) < 1.5 * expected
    # changeover_s: 0 switches the product with no changeover state
    assert len(product_switches(product_line, "q3")) > 8
    assert not any(r.state == "changeover" for r in product_line.states("q3"))
    assert all(t > start_ms for t, _ in product_switches(product_line, "q1")[1:])


def test_parts_carry_the_product_shown_and_runs_flow_down_the_line(product_line: Run) -> None:
    runs: dict[str, list[tuple[int, str]]] = {}
    for machine in ("q1", "q2", "q3"):
        # in the samples file's order, each part's counter row comes after the product it is made of
        current: str | None = None
        parts = iter([r for r in product_line.ledger if r.kind == "part" and r.machine == machine])
        for t, m, s, v in product_line.samples:
            if m != machine:
                continue
            if s == "product":
                current = v
            elif s in ("good", "scrap") and t > to_ms(START):
                part = next(parts)
                assert (part.t_ms, part.product) == (t, current)
        runs[machine] = product_switches(product_line, machine)
        products = [p for _, p in runs[machine]]
        assert all(a != b for a, b in itertools.pairwise(products)), "each switch is to another product"
    # each station makes the runs in the order the first station started them, and switches to a
    # run's product only once the station before has finished a good part of it
    for up, down in (("q1", "q2"), ("q2", "q3")):
        up_runs, down_runs = runs[up], runs[down]
        assert [p for _, p in down_runs] == [p for _, p in up_runs][:len(down_runs)]
        assert len(up_runs) - len(down_runs) <= 1
        good_up = [r for r in product_line.ledger if r.kind == "part" and r.machine == up and r.good]
        for (t_up, product), (t_down, _) in zip(up_runs[1:], down_runs[1:], strict=False):
            first_good = next(r.t_ms for r in good_up if r.t_ms >= t_up and r.product == product)
            assert t_down >= first_good
    # the first station's runs: 15 parts ± 50 % (the first run was under way at the start)
    q1_parts = [r for r in product_line.ledger if r.kind == "part" and r.machine == "q1"]
    lengths = [len(list(g)) for _, g in itertools.groupby(q1_parts, key=lambda r: r.product)]
    assert all(8 <= n <= 22 for n in lengths[1:-1]), lengths


def test_a_line_with_a_product_signal_and_no_mix_makes_every_product(tmp_path: Path) -> None:
    plant = make_plant({"l": [station("l", "a", 3, product=True, run_length=10, changeover_s=5),
                              station("l", "b", 3)]},
                       products={"X": {"ideal_cycle_s": 3}, "Y": {"ideal_cycle_s": 4}})
    run = simulate(plant, tmp_path, hours=1)
    assert {p for _, p in product_switches(run, "a")} == {"X", "Y"}
    assert not product_switches(run, "b")  # no product signal: nothing shown, no product on its parts
    assert all(r.product is None for r in run.ledger if r.kind == "part" and r.machine == "b")
    assert any(r.state == "changeover" for r in run.states("b"))  # but it changes over all the same


# ---- determinism ------------------------------------------------------------------------------


def test_same_seed_same_files_another_seed_other_files(random_line: Run, tmp_path: Path) -> None:
    again = simulate(random_line.plant, tmp_path, hours=8, name="again")
    other = simulate(random_line.plant, tmp_path, hours=8, seed=2, name="other")
    for a, b, c in zip(random_line.paths, again.paths, other.paths, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()


@pytest.mark.parametrize("step_ms", [1, 997, 60_000])
def test_the_clock_can_be_advanced_in_any_steps(random_line: Run, step_ms: int) -> None:
    # live mode advances to the wall clock every tick; the events must not depend on the ticks
    end = to_ms(START) + (30_000 if step_ms == 1 else 1_800_000)
    whole = PlantModel(random_line.plant, 1, START)
    expected = list(whole.run(end))
    stepped = PlantModel(random_line.plant, 1, START)
    got = []
    for t in range(to_ms(START), end, step_ms):
        got.extend(stepped.advance(min(t + step_ms, end)))
    assert got == expected and expected


# ---- plant file -------------------------------------------------------------------------------


Mutation = Callable[[dict[str, Any]], None]


@pytest.mark.parametrize(("sim", "path", "message"), [
    ({"buffer_capacity": 3, "buffer_initial": 4}, "lines[0].machines[0].simulation", "buffer_initial (4)"),
    ({"buffer_capacity": 0}, "lines[0].machines[0].simulation.buffer_capacity", "greater than or equal to 1"),
    ({"product_mix": {}}, "lines[0].machines[0].simulation", "product_mix is empty"),
    ({"product_mix": {"A": 0}}, "lines[0].machines[0].simulation.product_mix.A", "greater than 0"),
    ({"slow_cycle_factor": 0.5}, "lines[0].machines[0].simulation.slow_cycle_factor", "greater than or equal to 1"),
])
def test_bad_line_settings_are_reported_with_their_path(sim: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(PlantFileError) as err:
        make_plant({"l": [station("l", "a", 3, **sim), station("l", "b", 3)]})
    hit = [p for p in err.value.problems if p.path == path]
    assert hit and message in hit[0].message, err.value.problems


def test_a_product_mix_of_unknown_products_is_a_plant_file_error() -> None:
    plant = make_plant({"l": [station("l", "a", 3, product=True, product_mix={"A": 1, "Z-9": 1})]},
                       products={"A": {"ideal_cycle_s": 3}})
    with pytest.raises(PlantFileError) as err:
        PlantModel(plant, 1, START)
    assert "lines[0].machines[0].simulation.product_mix" in str(err.value) and "'Z-9'" in str(err.value)


def test_line_runs_are_independent_of_the_other_lines(two_lines: Run, tmp_path: Path) -> None:
    only_feed = make_plant({"feed": [m.model_dump(mode="json", exclude_defaults=True)
                                     for m in two_lines.plant.lines[0].machines]})
    alone = simulate(only_feed, tmp_path, hours=12)
    by_line: dict[str, list[str]] = defaultdict(list)
    for line in two_lines.paths[1].read_text(encoding="utf-8").splitlines():
        if '"line":"feed"' in line:
            by_line["feed"].append(line)
    assert alone.paths[1].read_text(encoding="utf-8").splitlines() == by_line["feed"]
