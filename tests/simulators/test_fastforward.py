"""Fast-forward: determinism, and the samples file against the ledger (the oracle)."""

from __future__ import annotations

import copy
import csv
import itertools
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.calendar import planned_intervals
from core.plant import Plant, parse_plant
from simulators.fastforward import run_fast_forward
from simulators.ledger import LedgerRecord, read_ledger, summarize
from simulators.model import iso_ms, to_ms

# Friday 06:00 to Saturday 06:00 in Tokyo: off-shift morning, the day shift with its breaks, the
# evening gap, the night shift with its break, and the weekend's first hours.
START = datetime.fromisoformat("2026-11-27T06:00:00+09:00")
END = datetime.fromisoformat("2026-11-28T06:00:00+09:00")
SHORT_END = datetime.fromisoformat("2026-11-27T13:00:00+09:00")


def read_samples(path: Path) -> list[tuple[int, str, str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["time", "machine", "signal", "value"]
    out = []
    for t, m, s, v in rows[1:]:
        dt = datetime.fromisoformat(t)
        assert dt.tzinfo is not None
        out.append((to_ms(dt), m, s, v))
    return out


def ff(plant: Plant, seed: int, tmp: Path, name: str, start: datetime = START, end: datetime = END
       ) -> tuple[Path, Path]:
    samples, truth = tmp / f"{name}.csv", tmp / f"{name}.jsonl"
    run_fast_forward(plant, seed, start, end, samples, truth)
    return samples, truth


# ---- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(demo_plant: Plant, tmp_path: Path) -> None:
    a = ff(demo_plant, 7, tmp_path, "a", end=SHORT_END)
    b = ff(demo_plant, 7, tmp_path, "b", end=SHORT_END)
    c = ff(demo_plant, 8, tmp_path, "c", end=SHORT_END)
    assert a[0].read_bytes() == b[0].read_bytes()
    assert a[1].read_bytes() == b[1].read_bytes()
    assert a[0].read_bytes() != c[0].read_bytes()
    assert a[1].read_bytes() != c[1].read_bytes()


def test_a_longer_window_is_the_same_run_only_longer(demo_plant: Plant, tmp_path: Path) -> None:
    short = ff(demo_plant, 3, tmp_path, "short", end=SHORT_END)
    long = ff(demo_plant, 3, tmp_path, "long", end=datetime.fromisoformat("2026-11-27T16:00:00+09:00"))
    for s, lg in zip(short, long, strict=True):
        text = s.read_text(encoding="utf-8")
        assert text and lg.read_text(encoding="utf-8").startswith(text)


def test_adding_a_line_changes_nothing_about_the_others(demo_raw: dict[str, Any], tmp_path: Path) -> None:
    # stations of one line interact through their buffers; lines do not interact at all
    raw = copy.deepcopy(demo_raw)
    base = parse_plant(copy.deepcopy(raw))
    extra = copy.deepcopy(raw["lines"][0])
    extra["id"] = "blade-9"
    for m in extra["machines"]:
        m["signals"] = {k: {**v, "node": v["node"].replace(f"blade-1.{m['id']}", f"blade-9.{m['id']}-9")}
                        for k, v in m["signals"].items()}
        m["id"] = f"{m['id']}-9"
    raw["lines"].insert(0, extra)
    more = parse_plant(raw)
    _, t1 = ff(base, 5, tmp_path, "base", end=SHORT_END)
    _, t2 = ff(more, 5, tmp_path, "more", end=SHORT_END)
    lines2 = [ln for ln in t2.read_text(encoding="utf-8").splitlines() if '"line":"blade-9"' not in ln]
    assert len(lines2) < len(t2.read_text(encoding="utf-8").splitlines())
    assert sorted(lines2) == sorted(t1.read_text(encoding="utf-8").splitlines())


# ---- the samples file against the ledger --------------------------------------------------------


@dataclass
class Run:
    plant: Plant
    samples: list[tuple[int, str, str, str]]
    ledger: list[LedgerRecord]
    samples_path: Path
    seconds: float


@pytest.fixture(scope="module")
def varied_run(demo_raw: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A day of a demo-plant variant with counters that wrap, a `total` counter and a machine
    without a scrap counter."""
    raw = copy.deepcopy(demo_raw)
    m = {mm["id"]: mm for line in raw["lines"] for mm in line["machines"]}
    for s in ("good", "scrap"):
        m["cnc-1"]["signals"][s]["counter_bits"] = 8
    m["cnc-1"]["simulation"]["counter_start"] = 200
    del m["pack-2"]["signals"]["scrap"]
    m["pack-2"]["simulation"]["scrap_rate"] = 0.05
    good = m["weld-2"]["signals"].pop("good")
    m["weld-2"]["signals"] = {"total": {**good, "field": "total", "counter_bits": 16}, **m["weld-2"]["signals"]}
    m["weld-2"]["simulation"]["counter_start"] = 65_000
    plant = parse_plant(raw)
    tmp = tmp_path_factory.mktemp("ff")
    t0 = time.perf_counter()
    samples, truth = ff(plant, 11, tmp, "day")
    seconds = time.perf_counter() - t0
    return Run(plant, read_samples(samples), read_ledger(truth), samples, seconds)


def test_one_day_of_the_demo_plant_takes_seconds(varied_run: Run) -> None:
    assert varied_run.seconds < 10, f"a simulated day took {varied_run.seconds:.1f} s"


def test_counter_deltas_equal_the_ledger_parts_with_wraparound(varied_run: Run) -> None:
    plant, start_ms = varied_run.plant, to_ms(START)
    parts: dict[tuple[str, str], int] = Counter()
    for r in varied_run.ledger:
        if r.kind == "part":
            assert r.machine is not None
            parts[(r.machine, "good" if r.good else "scrap")] += 1
            parts[(r.machine, "total")] += 1
    series: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for t, m, s, v in varied_run.samples:
        if s in ("good", "scrap", "total"):
            series[(m, s)].append((t, int(v)))
    wrapped = 0
    for _, machine in plant.machines():
        for name, sig in machine.signals.items():
            if name not in ("good", "scrap", "total"):
                continue
            values = series[(machine.id, name)]
            assert values[0] == (start_ms, machine.simulation.counter_start % (1 << (sig.counter_bits or 32))), \
                "the first sample of a counter is its baseline at the start"
            mod = 1 << (sig.counter_bits or 32)
            deltas = [(b - a) % mod for (_, a), (_, b) in itertools.pairwise(values)]
            assert all(d == 1 for d in deltas), "one sample per part"
            wrapped += sum(1 for (_, a), (_, b) in itertools.pairwise(values) if b < a)
            assert sum(deltas) == parts[(machine.id, name)], (machine.id, name)
    assert wrapped >= 2, "the variant plant must exercise wraparound"
    # scrap of a machine without a scrap counter is still in the ledger
    assert parts[("pack-2", "scrap")] > 0
    assert not any(m == "pack-2" and s == "scrap" for _, m, s, _ in varied_run.samples)


def test_every_machine_starts_with_its_state_at_start(varied_run: Run) -> None:
    first: dict[str, LedgerRecord] = {}
    for r in varied_run.ledger:
        assert r.machine is not None
        first.setdefault(r.machine, r)
    assert set(first) == {m.id for _, m in varied_run.plant.machines()}
    for r in first.values():
        assert r.kind == "state" and r.t_ms == to_ms(START)
        assert r.state == "planned"  # 06:00 on a Friday is between the night and the day shift
    assert varied_run.ledger[0].t_ms == to_ms(START)
    assert iso_ms(to_ms(START)) == "2026-11-26T21:00:00.000Z"


def test_machines_are_planned_exactly_outside_shifts_and_in_breaks(varied_run: Run) -> None:
    plant = varied_run.plant
    start_ms, end_ms = to_ms(START), to_ms(END)
    planned = [(to_ms(a), to_ms(b)) for a, b in planned_intervals(plant, START, END)]
    assert len(planned) >= 5  # morning gap, 3 day breaks, evening gap, night break, weekend
    summary = summarize(varied_run.ledger, START, END)
    expected_s = sum(b - a for a, b in planned) / 1000
    by_machine: dict[str, list[LedgerRecord]] = defaultdict(list)
    for r in varied_run.ledger:
        assert r.machine is not None
        by_machine[r.machine].append(r)
    for _, machine in plant.machines():
        assert summary.state_s(machine.id, "planned") == pytest.approx(expected_s)
        recs = by_machine[machine.id]
        states = [r for r in recs if r.kind == "state"]
        for a, b in planned:
            at_a = [r for r in states if r.t_ms <= a][-1]
            assert at_a.state == "planned" and at_a.t_ms == max(a, start_ms)
            assert not [r for r in recs if a < r.t_ms < b], "nothing happens in planned time"
            if b < end_ms:
                after = next(r for r in states if r.t_ms >= b)
                assert after.t_ms == b and after.state != "planned"
        # no planned state outside the calendar's planned time
        for r in states:
            if r.state == "planned":
                assert any(a <= r.t_ms < b for a, b in planned)


def test_sample_times_equal_ledger_times_and_reason_comes_before_state(varied_run: Run) -> None:
    plant = varied_run.plant
    start_ms = to_ms(START)
    counter_times: dict[str, list[int]] = defaultdict(list)
    state_samples: dict[str, list[tuple[int, str]]] = defaultdict(list)
    reason_at: dict[tuple[str, int], int] = {}
    for i, (t, m, s, v) in enumerate(varied_run.samples):
        if s in ("good", "scrap", "total") and t > start_ms:
            if s == "total" or "total" not in plant.machine(m).signals:  # type: ignore[union-attr]
                counter_times[m].append(t)
        elif s == "state":
            smap = plant.machine(m).signals["state"].map  # type: ignore[union-attr]
            assert smap is not None
            state_samples[m].append((t, smap[int(v)]))
            prev = varied_run.samples[i - 1]
            assert prev[0] == t and prev[1] == m and prev[2] == "reason", "reason before state"
            reason_at[(m, t)] = int(prev[3])
    for _, machine in plant.machines():
        mid = machine.id
        parts = [r.t_ms for r in varied_run.ledger if r.machine == mid and r.kind == "part"]
        if "scrap" in machine.signals or "total" in machine.signals:
            assert counter_times[mid] == parts
        else:
            goods = [r.t_ms for r in varied_run.ledger if r.machine == mid and r.kind == "part" and r.good]
            assert counter_times[mid] == goods
        states = [(r.t_ms, r.state) for r in varied_run.ledger if r.machine == mid and r.kind == "state"]
        assert state_samples[mid] == states
        for r in varied_run.ledger:
            if r.machine == mid and r.kind == "state":
                assert reason_at[(mid, r.t_ms)] == (r.reason or 0)


def test_stops_follow_the_reason_catalogue(varied_run: Run) -> None:
    plant = varied_run.plant
    micro_ms = plant.calendar.micro_stop_s * 1000
    seen_states: Counter[str] = Counter()
    for _, machine in plant.machines():
        allowed = set(machine.simulation.reasons or plant.reasons)
        recs = [r for r in varied_run.ledger if r.machine == machine.id and r.kind == "state"]
        for r, nxt in itertools.pairwise(recs):
            seen_states[r.state or ""] += 1
            if r.state == "running":
                assert r.reason is None
            if r.state in ("planned", "running"):
                continue
            assert r.reason in allowed
            cat = plant.reasons[r.reason].category
            expected = {"breakdown": "down", "changeover": "changeover", "starved": "idle",
                        "micro_stop": "down", "quality": "down", "blocked": "idle"}[cat]
            assert r.state == expected
            if cat == "micro_stop":
                assert nxt.t_ms - r.t_ms < micro_ms
    assert {"running", "down", "changeover", "idle", "planned"} <= set(seen_states)


def test_gauges_follow_the_state(varied_run: Run) -> None:
    temps = [(t, float(v)) for t, m, s, v in varied_run.samples if m == "cnc-1" and s == "spindle_temp"]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(temps)]
    assert all(10_000 <= g <= 30_000 for g in gaps)
    states = [(r.t_ms, r.state) for r in varied_run.ledger if r.machine == "cnc-1" and r.kind == "state"]

    def state_at(t: int) -> str | None:
        return [s for ts, s in states if ts <= t][-1]

    running = [v for t, v in temps if state_at(t) == "running"]
    planned = [v for t, v in temps if state_at(t) == "planned"]
    assert sum(running) / len(running) > sum(planned) / len(planned) + 10


# ---- the oracle ---------------------------------------------------------------------------------


def test_summarize_counts_parts_and_clips_states_to_the_window() -> None:
    def rec(t: str, kind: str, **kw: Any) -> LedgerRecord:
        return LedgerRecord(t_ms=to_ms(datetime.fromisoformat(t)), kind=kind, line="l", machine="m", **kw)

    recs = [
        rec("2026-01-01T00:00:00Z", "state", state="running"),
        rec("2026-01-01T00:00:10Z", "part", good=True),
        rec("2026-01-01T00:00:20Z", "part", good=False),
        rec("2026-01-01T00:00:30Z", "state", state="down", reason=20),
        rec("2026-01-01T00:01:00Z", "state", state="running"),
        rec("2026-01-01T00:01:30Z", "part", good=True),
    ]
    s = summarize(recs, datetime.fromisoformat("2026-01-01T00:00:15Z"), datetime.fromisoformat("2026-01-01T00:01:30Z"))
    assert (s.good("m"), s.scrap("m")) == (0, 1)
    assert s.machines["m"].state_s == {"running": 15.0 + 30.0, "down": 30.0}


def test_products_change_at_changeovers_and_unmappable_states_fall_back(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "site": {"id": "t", "timezone": "UTC"},
        "calendar": {"shifts": [{"id": "all", "start": "00:00", "end": "00:00",
                                 "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}]},
        "reasons": {10: {"name": "Setup", "category": "changeover"}, 20: {"name": "Fault", "category": "breakdown"}},
        "products": {"A-1": {"ideal_cycle_s": 5}, "B-2": {"ideal_cycle_s": 8}},
        "sources": {"plc": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}}},
        "lines": [{"id": "l", "machines": [
            {"id": "m", "source": "plc", "ideal_cycle_s": 6,
             "signals": {"total": {"node": "ns=2;s=m.Total", "counter_bits": 32},
                         "state": {"node": "ns=2;s=m.State", "map": {1: "running", 3: "down"}},
                         "product": {"node": "ns=2;s=m.Product"}},
             "simulation": {"reasons": [10, 20], "mtbf_s": 300, "mttr_s": 30}}]}],
    }
    plant = parse_plant(raw)
    samples_path, truth = ff(plant, 1, tmp_path, "p", start=datetime.fromisoformat("2026-03-02T00:00:00Z"),
                             end=datetime.fromisoformat("2026-03-02T06:00:00Z"))
    ledger = read_ledger(truth)
    samples = read_samples(samples_path)
    assert {r.state for r in ledger if r.kind == "state"} == {"running", "down"}  # no code for changeover
    assert any(r.reason == 10 for r in ledger)  # but the changeover reason is there
    products = [v for _, _, s, v in samples if s == "product"]
    assert len(products) > 2 and set(products) == {"A-1", "B-2"}
    # every part carries the product being made: the product sample comes before the first part
    # of a new product in the samples file (in the same millisecond as the part before it, when
    # the changeover begins as that part is finished)
    parts = iter([r for r in ledger if r.kind == "part"])
    current = None
    start_ms = samples[0][0]
    for t, _, s, v in samples:
        if s == "product":
            current = v
        elif s == "total" and t > start_ms:
            part = next(parts)
            assert (part.t_ms, part.product) == (t, current)
    assert next(parts, None) is None
    assert not any(s == "reason" for _, _, s, _ in samples)
