"""Normalize: counters → increments (wrap/reset/restart), states + reasons, products, gauges, keys, saved state."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.model import Fact, Sample, from_ns, to_ns
from core.normalize import NormalizeError, Normalizer, entries_from_snapshot, snapshot_from_entries
from core.plant import Plant, parse_plant

T0 = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
STATE_MAP = {1: "running", 2: "idle", 3: "down", 4: "changeover", 5: "planned"}


@cache
def make_plant(bits: int = 16, max_step: int = 1000) -> Plant:
    def node(m: str, s: str) -> str:
        return f"ns=2;s={m}.{s}"

    return parse_plant({
        "site": {"id": "site-1"},
        "sources": {"plc-1": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}},
                    "plc-2": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4841"}}},
        "lines": [
            {"id": "line-1", "machines": [{
                "id": "m1", "source": "plc-1", "signals": {
                    "good": {"node": node("m1", "good"), "counter_bits": bits, "max_step": max_step},
                    "scrap": {"node": node("m1", "scrap"), "counter_bits": bits, "max_step": max_step,
                              "retentive": True},
                    "state": {"node": node("m1", "state"), "map": STATE_MAP},
                    "reason": {"node": node("m1", "reason")},
                    "product": {"node": node("m1", "product")},
                    "temp": {"node": node("m1", "temp"), "unit": "°C"},
                    "load": {"node": node("m1", "load")},
                }}]},
            {"id": "line-2", "machines": [{
                "id": "m2", "source": "plc-2", "signals": {
                    "good": {"node": node("m2", "good"), "counter_bits": bits, "max_step": max_step},
                    "state": {"node": node("m2", "state"), "map": STATE_MAP},
                }}]},
        ],
    })


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def s(machine: str, signal: str, value: Any, t: float, quality: Any = "good") -> Sample:
    return Sample(machine, signal, value, at(t), quality)


def ns(t: float) -> int:
    return to_ns(at(t))


def incs(facts: list[Fact]) -> list[int]:
    return [int(f.value) for f in facts if f.kind == "count"]


# ---- counters: properties ------------------------------------------------------------------

bits_st = st.sampled_from([8, 16, 32, 64])


@st.composite
def wrapped_stream(draw: st.DrawFn) -> tuple[int, int, int, list[int]]:
    bits = draw(bits_st)
    max_step = draw(st.integers(1, min(5000, (1 << bits) - 1)))
    start = draw(st.integers(0, (1 << bits) - 1))
    steps = draw(st.lists(st.integers(0, max_step), max_size=60))
    return bits, max_step, start, steps


@given(wrapped_stream())
@settings(max_examples=300, deadline=None)
def test_wrapped_counter_increments_sum_to_true_production(case: tuple[int, int, int, list[int]]) -> None:
    bits, max_step, start, steps = case
    n = Normalizer(make_plant(bits, max_step))
    assert n.feed(s("m1", "good", start, 0)) == []  # the first value is a baseline
    value, got = start, []
    for i, step in enumerate(steps, 1):
        value = (value + step) % (1 << bits)
        facts = n.feed(s("m1", "good", value, i))
        assert incs(facts) == ([step] if step else [])  # each increment exactly, no fact for 0
        got.extend(facts)
    assert sum(incs(got)) == sum(steps)
    assert all(f.kind == "count" and f.signal == "good" and f.line == "line-1" for f in got)


@st.composite
def stream_with_resets(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, int]]]:
    bits = draw(st.sampled_from([16, 32]))
    max_step = draw(st.integers(1, 2000))
    ops = draw(st.lists(st.one_of(st.tuples(st.just("inc"), st.integers(0, max_step)),
                                  st.tuples(st.just("reset"), st.integers(0, 50))), max_size=60))
    return bits, max_step, ops


@given(stream_with_resets(), st.integers(0, 60_000))
@settings(max_examples=300, deadline=None)
def test_reset_counts_the_new_value(case: tuple[int, int, list[tuple[str, int]]], start: int) -> None:
    bits, max_step, ops = case
    mod = 1 << bits
    n = Normalizer(make_plant(bits, max_step))
    value = start % mod
    assert n.feed(s("m1", "good", value, 0)) == []
    t = 0
    for op, x in ops:
        if op == "inc":
            value, expected = (value + x) % mod, x
        else:
            # a reset: the value drops to something small that no wrap within max_step explains
            if not (x < value and (x - value) % mod > max_step):
                continue
            value, expected = x, x
        t += 1
        assert incs(n.feed(s("m1", "good", value, t))) == ([expected] if expected else [])


def test_reset_examples() -> None:
    n = Normalizer(make_plant(16, 1000))
    assert n.feed(s("m1", "good", 5000, 0)) == []
    assert incs(n.feed(s("m1", "good", 5003, 1))) == [3]
    assert incs(n.feed(s("m1", "good", 7, 2))) == [7]  # reset: (7 - 5003) mod 2^16 = 60540 > 1000
    assert incs(n.feed(s("m1", "good", 0, 3))) == []  # reset to 0: nothing made
    assert incs(n.feed(s("m1", "good", 2, 4))) == [2]
    n.feed(s("m1", "good", 65530, 5))  # a big increase is an increase (65528 > max_step)
    assert incs(n.feed(s("m1", "good", 4, 6))) == [10]  # wrap: (4 - 65530) mod 2^16 = 10


def test_big_increase_is_an_increase() -> None:
    n = Normalizer(make_plant(32, 1000))
    n.feed(s("m1", "good", 10, 0))
    assert incs(n.feed(s("m1", "good", 50_010, 1))) == [50_000]


@given(st.integers(0, 65535))
@settings(max_examples=50, deadline=None)
def test_first_value_is_a_baseline(first: int) -> None:
    n = Normalizer(make_plant(16, 1000))
    assert n.feed(s("m1", "good", first, 0)) == []
    assert n.feed(s("m1", "scrap", first, 0)) == []
    assert incs(n.feed(s("m1", "good", (first + 1) % 65536, 1))) == [1]


def test_counter_values_from_csv_and_json() -> None:
    n = Normalizer(make_plant(16, 1000))
    n.feed(s("m1", "good", "100", 0))
    assert incs(n.feed(s("m1", "good", 101.0, 1))) == [1]
    assert incs(n.feed(s("m1", "good", " 104 ", 2))) == [3]
    assert incs(n.feed(s("m1", "good", "106.0", 3))) == [2]


@pytest.mark.parametrize("value", ["abc", "", 1.5, "2.5", -1, 65536, float("nan"), float("inf"), True, None])
def test_bad_counter_values_raise(value: Any) -> None:
    n = Normalizer(make_plant(16, 1000))
    n.feed(s("m1", "good", 10, 0))
    with pytest.raises(NormalizeError) as e:
        n.feed(s("m1", "good", value, 1))
    assert e.value.kind == "bad_value"
    assert "m1.good" in e.value.message
    assert incs(n.feed(s("m1", "good", 12, 2))) == [2]  # the baseline survived the bad sample


def test_bad_quality_makes_nothing_and_keeps_the_baseline() -> None:
    n = Normalizer(make_plant(16, 1000))
    n.feed(s("m1", "good", 10, 0))
    assert n.feed(s("m1", "good", 9999, 1, quality="bad")) == []
    assert n.feed(s("m1", "good", "garbage", 2, quality="bad")) == []
    assert n.feed(s("m1", "state", 3, 2, quality="bad")) == []
    assert incs(n.feed(s("m1", "good", 12, 3))) == [2]
    assert incs(n.feed(s("m1", "good", 13, 4, quality="uncertain"))) == [1]


def test_source_restart_marks_non_retentive_counters_of_that_source() -> None:
    n = Normalizer(make_plant(16, 1000))
    for sig in ("good", "scrap"):
        n.feed(s("m1", sig, 100, 0))
    n.feed(s("m2", "good", 100, 0))
    n.source_restarted("plc-1")
    # the value did not drop, yet the PLC restarted: a non-retentive counter counted from 0
    assert incs(n.feed(s("m1", "good", 150, 1))) == [150]
    assert incs(n.feed(s("m1", "good", 151, 2))) == [1]  # only the next value
    assert incs(n.feed(s("m1", "scrap", 102, 1))) == [2]  # retentive: kept its count
    assert incs(n.feed(s("m2", "good", 103, 1))) == [3]  # another source
    n.source_restarted("nope")  # an unknown source is harmless


def test_unknown_machine_and_signal() -> None:
    n = Normalizer(make_plant())
    with pytest.raises(NormalizeError) as e:
        n.feed(s("m9", "good", 1, 0))
    assert e.value.kind == "unknown_machine" and "m9" in str(e.value)
    with pytest.raises(NormalizeError) as e:
        n.feed(s("m2", "temp", 1, 0))
    assert e.value.kind == "unknown_signal" and "temp" in e.value.message


def test_time_without_offset_is_rejected() -> None:
    n = Normalizer(make_plant())
    with pytest.raises(NormalizeError) as e:
        n.feed(Sample("m1", "temp", 1.0, datetime(2026, 1, 1)))
    assert e.value.kind == "bad_time"


def test_a_time_without_offset_of_an_unknown_machine_names_the_machine_and_bad_quality_wins() -> None:
    n = Normalizer(make_plant())
    with pytest.raises(NormalizeError) as e:
        n.feed(Sample("m9", "temp", 1.0, datetime(2026, 1, 1)))
    assert e.value.kind == "unknown_machine"
    assert n.feed(Sample("m1", "temp", 1.0, datetime(2026, 1, 1), "bad")) == []


def test_feed_ns_makes_the_facts_feed_makes() -> None:
    # sources that read times as numbers (OPC UA batches) feed rows, not Samples: same rules
    samples = [s("m1", "good", 10, 1), s("m1", "good", 12, 2), s("m1", "state", 3, 2), s("m1", "reason", 7, 2),
               s("m1", "temp", 21.5, 3), s("m1", "temp", "22", 3), s("m1", "product", "A", 4),
               s("m1", "good", 13, 5, "bad"), s("m1", "state", 1, 6), s("m2", "good", 5, 6), s("m2", "good", 2, 7)]
    by_sample, by_row = Normalizer(make_plant(), clock=clock_at(100)), Normalizer(make_plant(), clock=clock_at(100))
    for x in samples:
        assert by_sample.feed(x) == by_row.feed_ns(x.machine, x.signal, x.value, to_ns(x.time), x.quality)
    assert by_sample.snapshot() == by_row.snapshot() and by_sample.changes() == by_row.changes()
    for machine, signal, t in (("m9", "good", 1), ("m1", "nope", 1), ("m1", "temp", 0), ("m1", "temp", 10**20)):
        with pytest.raises(NormalizeError) as e1:
            by_sample.feed(Sample(machine, signal, 1.0, from_ns(t) if t < 10**19 else datetime(9999, 1, 1,
                                                                                                tzinfo=UTC)))
        with pytest.raises(NormalizeError) as e2:
            by_row.feed_ns(machine, signal, 1.0, t if t < 10**19 else to_ns(datetime(9999, 1, 1, tzinfo=UTC)))
        assert (e1.value.kind, e1.value.message) == (e2.value.kind, e2.value.message)


# ---- keys and time ---------------------------------------------------------------------------


def test_times_are_bumped_to_stay_strictly_increasing() -> None:
    n = Normalizer(make_plant())
    n.feed(s("m1", "good", 0, 0))
    a = n.feed(s("m1", "good", 1, 5))[0]
    b = n.feed(s("m1", "good", 2, 5))[0]  # same source time
    c = n.feed(s("m1", "good", 3, 4))[0]  # older source time
    d = n.feed(s("m1", "good", 4, 6))[0]
    assert [a.time_ns, b.time_ns, c.time_ns, d.time_ns] == [ns(5), ns(5) + 1, ns(5) + 2, ns(6)]
    # another signal of the same machine has its own sequence
    assert n.feed(s("m1", "temp", 20.5, 5))[0].time_ns == ns(5)


# ---- states and reasons ------------------------------------------------------------------------


def states(facts: list[Fact]) -> list[tuple[int, str, int | None]]:
    return [(f.time_ns, str(f.value), f.reason) for f in facts if f.kind == "state"]


def test_first_state_emits_and_repeats_do_not() -> None:
    n = Normalizer(make_plant())
    f = n.feed(s("m1", "state", 1, 0))
    assert states(f) == [(ns(0), "running", None)]
    assert f[0].signal == "state" and f[0].line == "line-1" and f[0].key == f"state/m1/state/{ns(0)}"
    assert n.feed(s("m1", "state", "1", 1)) == []
    assert states(n.feed(s("m1", "state", 2.0, 2))) == [(ns(2), "idle", None)]


def test_unmapped_and_bad_state_codes() -> None:
    n = Normalizer(make_plant())
    with pytest.raises(NormalizeError) as e:
        n.feed(s("m1", "state", 9, 0))
    assert e.value.kind == "unmapped_state" and "9" in e.value.message
    with pytest.raises(NormalizeError) as e:
        n.feed(s("m1", "state", "down", 0))
    assert e.value.kind == "bad_value"
    with pytest.raises(NormalizeError) as e:
        n.feed(s("m1", "reason", "tool", 0))
    assert e.value.kind == "bad_value"


def test_reason_after_state_with_same_time_overwrites_that_fact() -> None:
    n = Normalizer(make_plant())
    n.feed(s("m1", "state", 1, 0))
    first = n.feed(s("m1", "state", 3, 10))
    again = n.feed(s("m1", "reason", 20, 10))
    assert states(first) == [(ns(10), "down", None)]
    assert states(again) == [(ns(10), "down", 20)]
    assert first[0].key == again[0].key  # the store overwrites, no second stop appears


def test_reason_before_state_is_remembered() -> None:
    n = Normalizer(make_plant())
    n.feed(s("m1", "state", 1, 0))
    assert n.feed(s("m1", "reason", 20, 10)) == []  # running: no reason shown
    assert states(n.feed(s("m1", "state", 3, 10))) == [(ns(10), "down", 20)]


def test_reason_first_while_stopped_does_not_leave_a_phantom_fact() -> None:
    n = Normalizer(make_plant())
    n.feed(s("m1", "state", 3, 0))
    n.feed(s("m1", "reason", 20, 0))
    # next event at t=10: changeover with reason 10, reason delivered first
    r = n.feed(s("m1", "reason", 10, 10))
    c = n.feed(s("m1", "state", 4, 10))
    assert states(r) == [(ns(10), "down", 10)]
    assert states(c) == [(ns(10), "changeover", 10)]  # same key: replaces the interim fact


def test_reason_changes_while_stopped_and_running_hides_reason() -> None:
    n = Normalizer(make_plant())
    n.feed(s("m1", "reason", 30, 0))
    assert states(n.feed(s("m1", "state", 2, 0))) == [(ns(0), "idle", 30)]
    assert states(n.feed(s("m1", "reason", 31, 5))) == [(ns(5), "idle", 31)]  # a later, new reason
    assert states(n.feed(s("m1", "state", 1, 8))) == [(ns(8), "running", None)]
    assert n.feed(s("m1", "reason", 40, 9)) == []  # reason while running: remembered only
    assert states(n.feed(s("m1", "state", 3, 12))) == [(ns(12), "down", 40)]
    assert states(n.feed(s("m1", "reason", 0, 13))) == [(ns(13), "down", None)]
    assert n.feed(s("m1", "reason", "", 14)) == []
    assert n.feed(s("m1", "reason", None, 14)) == []


def test_state_at_same_time_as_previous_state_is_bumped() -> None:
    n = Normalizer(make_plant())
    a = n.feed(s("m1", "state", 1, 3))
    b = n.feed(s("m1", "state", 3, 3))
    assert states(a + b) == [(ns(3), "running", None), (ns(3) + 1, "down", None)]


# ---- products and gauges ----------------------------------------------------------------------


def test_product_emitted_on_change() -> None:
    n = Normalizer(make_plant())
    f = n.feed(s("m1", "product", "TB-100", 0))
    assert [(x.kind, x.value, x.signal) for x in f] == [("product", "TB-100", "product")]
    assert n.feed(s("m1", "product", "TB-100", 1)) == []
    assert [x.value for x in n.feed(s("m1", "product", 200.0, 2))] == ["200"]
    assert n.feed(s("m1", "product", 200, 3)) == []


def test_gauges_pass_through_with_unit() -> None:
    n = Normalizer(make_plant())
    f = n.feed(s("m1", "temp", "21.5", 0)) + n.feed(s("m1", "temp", 21.5, 1)) + n.feed(s("m1", "load", 3, 1))
    assert [(x.kind, x.signal, x.value, x.unit, x.time_ns) for x in f] == [
        ("gauge", "temp", 21.5, "°C", ns(0)), ("gauge", "temp", 21.5, "°C", ns(1)), ("gauge", "load", 3.0, None, ns(1))]
    assert isinstance(f[2].value, float)
    for bad in ("hot", float("nan"), float("-inf")):
        with pytest.raises(NormalizeError) as e:
            n.feed(s("m1", "temp", bad, 2))
        assert e.value.kind == "bad_value"


# ---- mixed streams: keys, replay, snapshot/restore -------------------------------------------

SIGNAL_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "good": st.integers(0, 65535),
    "scrap": st.integers(0, 65535),
    "state": st.sampled_from(list(STATE_MAP)),
    "reason": st.sampled_from([0, 10, 20, 30, None]),
    "product": st.sampled_from(["TB-100", "TB-200"]),
    "temp": st.floats(-50, 500),
}


@st.composite
def sample_stream(draw: st.DrawFn) -> list[Sample]:
    n = draw(st.integers(0, 80))
    out: list[Sample] = []
    t = 0
    for _ in range(n):
        machine = draw(st.sampled_from(["m1", "m1", "m2"]))
        signal = draw(st.sampled_from(list(SIGNAL_VALUES) if machine == "m1" else ["good", "state"]))
        value = draw(SIGNAL_VALUES[signal])
        t += draw(st.sampled_from([0, 0, 1, 7, -3]))  # same times, steps and jumps back
        out.append(Sample(machine, signal, value, at(t / 1000), "good"))
    if draw(st.booleans()):
        out.insert(len(out) // 2, Sample("m1", "good", 0, at(0), "bad"))
    return out


def run(n: Normalizer, samples: list[Sample]) -> list[Fact]:
    out: list[Fact] = []
    for smp in samples:
        out.extend(n.feed(smp))
    return out


@given(sample_stream(), st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_snapshot_restore_mid_stream_gives_the_same_facts(samples: list[Sample], data: st.DataObject) -> None:
    plant = make_plant(16, 1000)
    whole = run(Normalizer(plant), samples)
    cut = data.draw(st.integers(0, len(samples)))
    first = Normalizer(plant)
    head = run(first, samples[:cut])
    if data.draw(st.booleans()):
        first.source_restarted("plc-1")
        restarted = Normalizer(plant)
        run(restarted, samples[:cut])
        restarted.source_restarted("plc-1")
        whole = head + run(restarted, samples[cut:])
    saved = json.loads(json.dumps(first.snapshot()))  # JSON-able, and only JSON survives
    second = Normalizer(plant)
    second.restore(saved)
    assert head + run(second, samples[cut:]) == whole


@given(sample_stream(), st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_changes_add_up_to_the_snapshot_and_restore_like_it(samples: list[Sample], data: st.DataObject) -> None:
    """What a collector saves with each commit (the changed entries, replacing older rows by key)
    always adds up to the whole snapshot: no change goes unrecorded, outages and restarts included."""
    plant = make_plant(16, 1000)
    n = Normalizer(plant)
    saved: dict[str, Any] = {}
    events = data.draw(st.lists(st.tuples(st.integers(0, len(samples)),
                                          st.sampled_from(["offline", "online", "restarted"])), max_size=4))
    for i, smp in enumerate([*samples, None]):
        for at_i, what in events:
            if at_i == i:
                if what == "offline":
                    n.source_offline("plc-1", at(i))
                elif what == "online":
                    n.source_online("plc-1", at(i))
                else:
                    n.source_restarted("plc-1")
        if smp is not None:
            n.feed(smp)
        saved.update(json.loads(json.dumps(n.changes())))  # only JSON survives
        assert snapshot_from_entries(saved) == n.snapshot()
    assert n.changes() == {}  # nothing changed since
    again = Normalizer(plant)
    again.restore(snapshot_from_entries(saved))
    assert again.snapshot() == n.snapshot()
    assert entries_from_snapshot(n.snapshot()) == saved


@given(sample_stream())
@settings(max_examples=150, deadline=None)
def test_keys_unique_within_a_stream(samples: list[Sample]) -> None:
    facts = run(Normalizer(make_plant(16, 1000)), samples)
    assert facts == run(Normalizer(make_plant(16, 1000)), samples)  # a replay lands on the same keys
    last: dict[tuple[str, str], Fact] = {}
    by_key: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        prev = last.get((f.machine, f.signal))
        if prev is not None:
            if f.kind == "state":
                # a re-emit (same key, the store overwrites) only replaces the immediately preceding fact
                assert f.time_ns >= prev.time_ns
            else:
                assert f.time_ns > prev.time_ns
        last[(f.machine, f.signal)] = f
        by_key[f.key].append(f)
    for key, group in by_key.items():
        assert len(group) == 1 or all(g.kind == "state" for g in group), key


def test_restore_rejects_garbage_and_drops_unknown_machines() -> None:
    n = Normalizer(make_plant())
    with pytest.raises(ValueError):
        n.restore({"version": 99})
    with pytest.raises(ValueError):
        n.restore({"version": 1, "counters": {"m1": {"good": {}}}, "times": {}, "machines": {}})
    n.feed(s("m1", "good", 10, 0))
    snap = n.snapshot()
    snap["counters"]["gone"] = {"good": {"last": 5, "restarted": False}}
    snap["machines"]["gone"] = {"reason": None, "last_state": None, "product": None}
    other = Normalizer(make_plant())
    other.restore(snap)
    assert "gone" not in other.snapshot()["counters"]
    assert incs(other.feed(s("m1", "good", 15, 1))) == [5]  # the baseline came across


def test_an_older_counter_value_after_a_newer_one_is_ignored() -> None:
    """A QoS 1 message re-delivered after a reconnect can arrive behind newer ones: 105 (t=3) after
    106 (t=4) is not a reset, and must not count 105 parts again."""
    from datetime import UTC, datetime, timedelta

    from core.model import Sample
    from core.normalize import Normalizer
    from tests.e2e.plants import fast_plant

    plant = fast_plant(4840, 1883)
    n = Normalizer(plant)
    t0 = datetime(2026, 11, 27, tzinfo=UTC)

    def feed(v: int, s: int) -> list[int]:
        return [int(f.value) for f in n.feed(Sample("mq-1", "good", v, t0 + timedelta(seconds=s)))]

    assert feed(100, 0) == []
    assert feed(104, 2) == [4]
    assert feed(106, 4) == [2]
    assert feed(105, 3) == []  # the late duplicate
    assert feed(107, 5) == [1]
    restored = Normalizer(plant)
    restored.restore(n.snapshot())
    assert [f.value for f in restored.feed(Sample("mq-1", "good", 106, t0 + timedelta(seconds=4)))] == []


def test_source_offline_marks_its_machines_offline_once_and_recovery_is_not_backdated() -> None:
    n = Normalizer(make_plant())
    n.feed(s("m1", "reason", 7, 0))
    n.feed(s("m1", "state", 1, 0))
    n.feed(s("m2", "state", 1, 0))
    lost = n.source_offline("plc-1", at(10))
    assert [(f.machine, f.value, f.time_ns) for f in lost] == [("m1", "offline", ns(10))]
    assert n.source_offline("plc-1", at(11)) == []  # already offline: no second fact
    assert n.feed(s("m1", "reason", 9, 12)) == []  # remembered, but no fact while offline
    n.source_online("plc-1", at(20))
    # the server re-sends the value unchanged since t=0 with its old source time: stamped at recovery
    back = states(n.feed(s("m1", "state", 3, 0)))
    assert back == [(ns(20), "down", 9)]
    # later states keep their own times
    assert states(n.feed(s("m1", "state", 1, 25))) == [(ns(25), "running", None)]
    # the other source's machine is untouched
    assert n.feed(s("m2", "state", 1, 30)) == []


def test_machines_offline_marks_only_those_machines_and_their_recovery_is_not_backdated() -> None:
    # a Sparkplug B device's DDEATH: one machine of a source that stays up
    n = Normalizer(make_plant())
    n.feed(s("m1", "state", 1, 0))
    n.feed(s("m2", "state", 1, 0))
    lost = n.machines_offline(["m1", "no-such-machine"], at(10))
    assert [(f.machine, f.value, f.time_ns) for f in lost] == [("m1", "offline", ns(10))]
    assert n.machines_offline(["m1"], at(11)) == []  # already offline
    n.machines_online(["m1"], at(20))
    assert states(n.feed(s("m1", "state", 1, 0))) == [(ns(20), "running", None)]  # its DBIRTH's old time
    assert n.feed(s("m2", "state", 1, 30)) == []  # untouched


def test_a_state_changed_during_the_outage_keeps_a_time_after_recovery_and_the_offline_survives_restore() -> None:
    n = Normalizer(make_plant())
    n.feed(s("m1", "state", 1, 0))
    n.source_offline("plc-1", at(10))
    n.source_online("plc-1", at(20))
    restored = Normalizer(make_plant())
    restored.restore(json.loads(json.dumps(n.snapshot())))
    # same value as before the outage: still a fact, since the machine was offline in between
    assert states(restored.feed(s("m1", "state", 1, 15))) == [(ns(20), "running", None)]
    # a machine never seen before goes offline too (no data = offline)
    fresh = Normalizer(make_plant())
    assert [f.value for f in fresh.source_offline("plc-2", at(5))] == ["offline"]


# ---- hostile input: bad clocks and impossible steps ------------------------------------------------


def clock_at(seconds: float) -> Any:
    return lambda: ns(seconds)


def plant64() -> Plant:
    return make_plant(bits=64)


@pytest.mark.parametrize("when", [datetime(9999, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC),
                                  datetime(1999, 12, 31, 23, 59, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)])
def test_insane_source_times_are_bad_time_and_never_move_later_facts(when: datetime) -> None:
    n = Normalizer(make_plant(), clock=clock_at(100))
    assert n.feed(s("m1", "good", 10, 1)) == []
    with pytest.raises(NormalizeError) as e:
        n.feed(Sample("m1", "good", 11, when))
    assert e.value.kind == "bad_time"
    for signal, value in (("temp", 1.5), ("state", 1), ("product", "A")):
        with pytest.raises(NormalizeError):
            n.feed(Sample("m1", signal, value, when))
    # the next valid readings are stored at their own times; the refused one changed no baseline
    assert [(f.time_ns, f.value) for f in n.feed(s("m1", "good", 12, 2))] == [(ns(2), 2)]
    assert [f.time_ns for f in n.feed(s("m1", "temp", 1.0, 3))] == [ns(3)]
    assert [f.time_ns for f in n.feed(s("m1", "state", 1, 4))] == [ns(4)]


def test_the_clock_margin_is_configurable() -> None:
    n = Normalizer(make_plant(), clock=clock_at(0), max_clock_ahead_s=60)
    assert [f.time_ns for f in n.feed(s("m1", "temp", 1.0, 59))] == [ns(59)]
    with pytest.raises(NormalizeError, match="ahead of the collector's clock"):
        n.feed(s("m1", "temp", 2.0, 61))
    with pytest.raises(ValueError):
        Normalizer(make_plant(), max_clock_ahead_s=-1)


def test_an_increment_beyond_int64_rebaselines_the_counter() -> None:
    n = Normalizer(plant64(), clock=clock_at(100))
    n.feed(s("m1", "good", 5, 1))
    with pytest.raises(NormalizeError) as e:
        n.feed(s("m1", "good", (1 << 64) - 1, 2))  # a step of 2**64 - 6
    assert e.value.kind == "implausible_step"
    # the huge value is the baseline now: a wrap of the 64-bit counter from it is a small step again
    assert incs(n.feed(s("m1", "good", 4, 3))) == [5]
    n.feed(s("m1", "good", 0, 4))  # reset to 0: no parts
    assert incs(n.feed(s("m1", "good", (1 << 63) - 1, 5))) == [(1 << 63) - 1]  # still fits the stores
    n.feed(s("m1", "good", 0, 6))
    with pytest.raises(NormalizeError) as e:
        n.feed(s("m1", "good", 1 << 63, 7))
    assert e.value.kind == "implausible_step"
    assert incs(n.feed(s("m1", "good", (1 << 63) + 3, 8))) == [3]
    with pytest.raises(NormalizeError) as e:
        n.feed(s("m1", "good", 1 << 64, 9))
    assert e.value.kind == "bad_value"


def test_a_saved_state_from_the_future_does_not_push_later_facts() -> None:
    old = Normalizer(make_plant(), clock=lambda: to_ns(datetime(2300, 1, 1, tzinfo=UTC)))
    old.feed(s("m1", "good", 1, 1))
    far = datetime(2200, 1, 1, tzinfo=UTC)
    old.feed(Sample("m1", "good", 3, far))  # an older version took any time: last fact at 2200
    old.feed(Sample("m1", "state", 1, far))
    old.feed(Sample("m1", "temp", 1.0, far))
    saved = json.loads(json.dumps(old.snapshot()))
    n = Normalizer(make_plant(), clock=clock_at(100))
    n.restore(saved)
    assert [(f.time_ns, f.value) for f in n.feed(s("m1", "good", 5, 10))] == [(ns(10), 2)]
    assert [f.time_ns for f in n.feed(s("m1", "temp", 2.0, 11))] == [ns(11)]
    assert [(f.time_ns, f.value) for f in n.feed(s("m1", "state", 2, 12))] == [(ns(12), "idle")]
    # what was forgotten is saved again with the next commit
    restored = Normalizer(make_plant(), clock=clock_at(100))
    restored.restore(saved)
    changed = restored.changes()
    assert changed["c/m1/good"]["src_ns"] is None and "m/m1" in changed
    assert changed["t/m1/good"] is None and changed["t/m1/temp"] is None
    # saved as rows by key, the forgetting sticks: the next start has nothing to forget
    rows = {**entries_from_snapshot(saved), **changed}
    again = Normalizer(make_plant(), clock=clock_at(100))
    again.restore(snapshot_from_entries(rows))
    assert again.changes() == {}
    assert [f.time_ns for f in again.feed(s("m1", "temp", 2.0, 11))] == [ns(11)]
