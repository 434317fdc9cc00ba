"""core.operator: how the operator's entries lay over the machine's state changes (later entries win, splits
keep what the rest had, the state stays the machine's), and the read side's look-back for a window that
begins inside a named stop whose start lies before the last change the store hands over (real SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from core import operator as op
from core.model import Fact, to_ns
from core.plant import load_plant
from core.readside import Figures, Window
from core.store.base import OperatorEntry, StateChange
from core.store.sqlite import SqliteStore
from tests.conftest import DEMO_PLANT

S = 1_000_000_000
T = to_ns(datetime(2026, 11, 27, tzinfo=UTC))


def ch(t: int, st: str, reason: int | None = None, m: str = "m") -> StateChange:
    return StateChange(T + t * S, m, st, reason)


def named(i: int, t: int, reason: int, until: int | None = None, m: str = "m") -> OperatorEntry:
    return OperatorEntry(f"e{i}", i, "lead", "stop_reason", "line", m, T + t * S,
                         None if until is None else T + until * S, reason)


def reasons(changes: list[StateChange]) -> list[tuple[int, str, int | None]]:
    return [((c.time_ns - T) // S, c.state, c.reason) for c in changes]


RAW = [ch(0, "running"), ch(10, "down", 20), ch(15, "idle", 30), ch(20, "running"), ch(30, "down", 21),
       ch(40, "planned"), ch(50, "down", 21, m="other")]


def test_a_named_stop_gets_the_reason_for_all_its_stretches_and_keeps_its_states() -> None:
    got = op.apply_reasons(RAW, [named(1, 10, 22)])
    assert reasons([c for c in got if c.machine == "m"]) == [
        (0, "running", None), (10, "down", 22), (15, "idle", 22), (20, "running", None), (30, "down", 21),
        (40, "planned", None)]
    assert [c for c in got if c.machine == "other"] == [RAW[-1]]  # other machines untouched


def test_a_split_keeps_what_the_rest_had_and_later_entries_win() -> None:
    first = named(1, 10, 22)
    split = named(2, 10, 24, until=12)
    got = op.apply_reasons(RAW, [split, first])  # applied in recorded order, whatever order they come in
    assert reasons([c for c in got if c.machine == "m"])[:5] == [
        (0, "running", None), (10, "down", 24), (12, "down", 22), (15, "idle", 22), (20, "running", None)]
    again = op.apply_reasons(RAW, [first, split, named(3, 12, 23)])  # the part after the split, named
    assert reasons(again)[1:4] == [(10, "down", 24), (12, "down", 23), (15, "idle", 23)]
    parts = op.stop_parts(RAW, [first, split], ["m"], 60 * S, T + 60 * S)
    assert [((p.start_ns - T) // S, None if p.end_ns is None else (p.end_ns - T) // S, p.reason,
             p.entry.id if p.entry else None) for p in parts] == [
        (10, 12, 24, "e2"), (12, 20, 22, "e1"), (30, 40, 21, None)]


def test_a_split_of_an_unnamed_stop_leaves_the_machines_reason_after_it() -> None:
    got = op.apply_reasons(RAW, [named(1, 30, 24, until=35)])
    assert reasons(got)[4:7] == [(30, "down", 24), (35, "down", 21), (40, "planned", None)]
    assert op.part_starts(RAW, [named(1, 30, 24, until=35)], "m") == [T + 10 * S, T + 30 * S, T + 35 * S]


def test_entries_for_no_stop_change_nothing() -> None:
    assert op.apply_reasons(RAW, [named(1, 5, 22)]) == sorted(RAW, key=lambda c: c.time_ns)


async def test_a_window_inside_a_named_stop_reads_back_to_its_start(tmp_path: Path) -> None:
    """cnc-1 is down from 08:00, idle from 08:30, running at 09:30; named at 08:00. A window from 09:00 reads
    states from 08:58 and the store hands over the idle change of 08:30 as the last one before: the stop's
    start is further back, and its naming must still reach the window."""
    plant = load_plant(DEMO_PLANT)
    base = datetime.fromisoformat("2026-11-27T08:00:00+09:00")

    def state(minutes: int, st: str, reason: int | None = None) -> Fact:
        return Fact("state", to_ns(base + timedelta(minutes=minutes)), "blade-1", "cnc-1", "state", st, reason)

    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.write([state(-10, "running"), state(0, "down", 20), state(30, "idle", 30), state(90, "running")])
        await store.add_entry(OperatorEntry("n1", to_ns(base + timedelta(hours=3)), "lead", "stop_reason", "blade-1",
                                            "cnc-1", to_ns(base), None, 22))
        fig = Figures(plant, store)
        w = Window(base + timedelta(hours=1), base + timedelta(hours=2), None, base + timedelta(hours=3))
        timeline = await fig.states(plant.machine("cnc-1"), w)  # type: ignore[arg-type]
        assert [(x.state, x.reason, x.seconds) for x in timeline] == [("idle", 22, 1800.0), ("running", None, 1800.0)]
        line = plant.line("blade-1")
        assert line is not None
        dt = await fig.downtime(line, w)
        # (the line's other machines have no data: offline)
        assert [(r.row.state, r.row.reason, r.row.seconds) for r in dt.pareto if r.row.state != "offline"] == [
            ("idle", 22, 1800.0)]
        stops = await fig.stop_list(line, w)
        assert [(s.part.machine, s.part.start_ns, s.part.reason, s.seconds, s.open) for s in stops] == [
            ("cnc-1", to_ns(base), 22, 1800.0, False)]
    finally:
        await store.close()
