"""Implausible counter steps (issue 13, point 4): a counter never counts what its machine could
not have made in the source time since its last value; a real reset still counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.model import Fact, Sample, to_ns
from core.normalize import STEP_MARGIN, NormalizeError, Normalizer, fastest_cycle_s, step_allowance
from core.plant import Plant, parse_plant

T0 = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
BITS = 16


@cache
def plant(cycle_s: float | None = 1.0, max_step: int = 1000, products: tuple[float, ...] = ()) -> Plant:
    """``m1`` (ideal cycle ``cycle_s``) on ``plc-1``; ``m2`` on ``plc-2`` has a product signal and
    ``products`` (ideal cycles) in the plant, and no ideal cycle of its own."""
    def sig(m: str, s: str, **kw: Any) -> dict[str, Any]:
        return {"node": f"ns=2;s={m}.{s}", **kw}

    m1: dict[str, Any] = {"id": "m1", "source": "plc-1", "signals": {
        "good": sig("m1", "good", counter_bits=BITS, max_step=max_step),
        "scrap": sig("m1", "scrap", counter_bits=BITS, max_step=max_step)}}
    if cycle_s is not None:
        m1["ideal_cycle_s"] = cycle_s
    return parse_plant({
        "site": {"id": "site-1"},
        "products": {f"P{i}": {"ideal_cycle_s": c} for i, c in enumerate(products)},
        "sources": {"plc-1": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}},
                    "plc-2": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4841"}}},
        "lines": [{"id": "line-1", "machines": [m1, {
            "id": "m2", "source": "plc-2", "signals": {
                "good": sig("m2", "good", counter_bits=BITS, max_step=max_step),
                "product": sig("m2", "product")}}]}],
    })


def at(t: float) -> datetime:
    return T0 + timedelta(seconds=t)


def clock(t: float = 10**7) -> Any:
    return lambda: to_ns(at(t))


def good(value: int, t: float, machine: str = "m1") -> Sample:
    return Sample(machine, "good", value, at(t))


def incs(facts: list[Fact]) -> list[int]:
    return [int(f.value) for f in facts if f.kind == "count"]


def refused(n: Normalizer, sample: Sample) -> str:
    with pytest.raises(NormalizeError) as e:
        n.feed(sample)
    assert e.value.kind == "implausible_step"
    return e.value.message


def restarted(n: Normalizer, p: Plant) -> Normalizer:
    """A collector restart: a new normalizer continuing from the old one's saved state."""
    m = Normalizer(p, clock=clock())
    m.restore(n.snapshot())
    return m


# ---- examples --------------------------------------------------------------------------------


def test_the_reviewers_restart_jump_and_drop_are_refused_and_rebaselined() -> None:
    p = plant(1.0)
    n = Normalizer(p, clock=clock())
    n.feed(good(0, 0))
    assert incs(n.feed(good(6, 10))) == [6]
    n.feed(Sample("m1", "scrap", 3048, at(10)))
    n = restarted(n, p)
    # two minutes later the PLC's counter reads 65 530: 120 s at 1 s could make 240 (max_step 1000)
    msg = refused(n, good(65_530, 130))
    assert "6 -> 65530" in msg and "step of 65524" in msg
    assert incs(n.feed(good(65_533, 133))) == [3]  # re-baselined: counting goes on from there
    # a drop from 3 048 to 3 039 is no wrap within max_step; as a reset it would be 3 039 parts
    assert "3048 -> 3039" in refused(n, Sample("m1", "scrap", 3039, at(130)))
    assert incs(n.feed(Sample("m1", "scrap", 3041, at(131)))) == [2]


def test_a_real_reset_followed_by_plausible_production_counts() -> None:
    n = Normalizer(plant(1.0), clock=clock())
    n.feed(good(3048, 0))
    assert incs(n.feed(good(0, 5))) == []  # reset to 0: nothing made, the baseline is 0
    assert incs(n.feed(good(5, 10))) == [5]
    assert incs(n.feed(good(900, 11))) == [895]  # within max_step, however fast
    assert incs(n.feed(good(4, 20))) == [4]  # a reset seen late: 4 parts since, plausible in 9 s


def test_a_plc_restart_counts_from_zero_only_as_much_as_the_machine_could_make() -> None:
    n = Normalizer(plant(1.0), clock=clock())
    n.feed(good(500, 0))
    n.source_restarted("plc-1")
    assert incs(n.feed(good(30, 60))) == [30]  # a restart marker: 30 parts since, counted
    n.source_restarted("plc-1")
    assert "restart -> 5000" in refused(n, good(5000, 120))  # 5 000 in 60 s at 1 s cycle: no
    assert incs(n.feed(good(5002, 121))) == [2]


def test_the_allowance_grows_with_the_source_time_since_the_last_value() -> None:
    n = Normalizer(plant(0.5, max_step=10), clock=clock())
    n.feed(good(0, 0))
    assert incs(n.feed(good(10, 0.001))) == [10]  # max_step is the floor
    refused(n, good(21, 0.002))
    # 100 s at 0.5 s is 200 parts; x2 margin: 400 believable, 401 not
    assert incs(n.feed(good(421, 100.002))) == [400]
    refused(n, good(822, 200.002))
    # a value with an older source time that counts on is a PLC clock set back: elapsed 0, max_step
    assert incs(n.feed(good(832, 150))) == [10]


def test_the_fastest_product_bounds_a_machine_with_a_product_signal() -> None:
    p = plant(1.0, products=(2.0, 0.25))
    assert fastest_cycle_s(p, p.lines[0].machines[1]) == 0.25
    assert fastest_cycle_s(p, p.lines[0].machines[0]) == 1.0  # no product signal: its own cycle
    n = Normalizer(p, clock=clock())
    n.feed(good(0, 0, "m2"))
    assert incs(n.feed(good(1800, 225, "m2"))) == [1800]  # 225 s / 0.25 s x2 = 1 800
    refused(n, good(3601, 450, "m2"))


def test_without_any_ideal_cycle_only_the_64_bit_bound_applies() -> None:
    n = Normalizer(plant(None), clock=clock())
    assert fastest_cycle_s(plant(None), plant(None).lines[0].machines[0]) is None
    n.feed(good(6, 0))
    assert incs(n.feed(good(65_530, 1))) == [65_524]


# ---- properties ------------------------------------------------------------------------------


@st.composite
def arbitrary_readings(draw: st.DrawFn) -> list[tuple[str, float, int]]:
    """Anything a counter may read: jumps, drops, resets, PLC restarts, collector restarts."""
    return draw(st.lists(st.one_of(
        st.tuples(st.just("read"), st.floats(0, 5000), st.integers(0, (1 << BITS) - 1)),
        st.tuples(st.just("plc_restart"), st.just(0.0), st.just(0)),
        st.tuples(st.just("collector_restart"), st.just(0.0), st.just(0))), max_size=50))


@given(arbitrary_readings(), st.sampled_from([0.1, 1.0, 7.5]), st.integers(1, 2000))
@settings(max_examples=300, deadline=None)
def test_a_counter_never_counts_what_the_machine_could_not_have_made(
        ops: list[tuple[str, float, int]], cycle_s: float, max_step: int) -> None:
    p = plant(cycle_s, max_step)
    n = Normalizer(p, clock=clock())
    t, last_t = 0.0, None
    for op, dt, value in ops:
        if op == "plc_restart":
            n.source_restarted("plc-1")
            continue
        if op == "collector_restart":
            n = restarted(n, p)
            continue
        t += dt
        try:
            facts = n.feed(good(value, t))
        except NormalizeError as e:
            assert e.kind == "implausible_step"
            facts = []
        elapsed_ns = 0 if last_t is None else to_ns(at(t)) - to_ns(at(last_t))
        for inc in incs(facts):
            assert 0 < inc <= step_allowance(elapsed_ns, cycle_s, max_step)
            assert inc <= max(max_step, (elapsed_ns / 1e9) * STEP_MARGIN / cycle_s + 1)
        last_t = t


@st.composite
def plausible_production(draw: st.DrawFn) -> tuple[float, int, list[tuple[str, float, int]]]:
    """A machine making at most one part per ideal cycle (and at most max_step between two
    readings, so a wrap is told from a reset); PLC restarts (counter back to 0, seen on the
    connection) and collector restarts (state saved, readings missed meanwhile) in between."""
    cycle_s = draw(st.sampled_from([0.2, 1.0, 30.0]))
    max_step = draw(st.integers(50, 3000))
    ops: list[tuple[str, float, int]] = []
    unread = 0  # made since the last reading: one reading must not carry more than max_step
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["make", "make", "make", "plc_restart", "collector_restart", "away"]))
        if kind == "plc_restart":
            unread = 0
        dt = draw(st.floats(0.001, 3000))
        made = draw(st.integers(0, min(max_step - unread, int(dt / cycle_s))))
        unread = unread + made if kind == "away" else 0
        ops.append((kind, dt, made))
    return cycle_s, max_step, ops


@given(plausible_production(), st.integers(0, (1 << BITS) - 1))
@settings(max_examples=300, deadline=None)
def test_restarts_neither_lose_nor_invent_parts(case: tuple[float, int, list[tuple[str, float, int]]],
                                                start: int) -> None:
    cycle_s, max_step, ops = case
    p = plant(cycle_s, max_step)
    n = Normalizer(p, clock=clock())
    t, value, made_total, unread, counted = 0.0, start, 0, 0, 0
    n.feed(good(value, t))
    for kind, dt, made in ops:
        t += dt
        if kind == "collector_restart":
            n = restarted(n, p)  # a restart while the PLC counts on: the next reading carries it
        if kind == "plc_restart":
            # the PLC counts from 0 again (its start time says so); what nobody read before it is
            # gone from the counter for any collector, so it is not part of what must be counted
            n.source_restarted("plc-1")
            value, made_total = 0, made_total - unread
        value = (value + made) % (1 << BITS)
        made_total += made
        unread += made
        if kind == "away":
            continue  # made while nobody read: the next reading carries it
        counted += sum(incs(n.feed(good(value, t))))
        unread = 0
    counted += sum(incs(n.feed(good(value, t + 0.001))))
    assert counted == made_total
