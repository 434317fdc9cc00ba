"""Silent machines (issue 13, point 3): no accepted sample for ``stale_after_s`` (collector clock)
makes a machine ``offline`` at the moment its silence reached that; data coming back ends it,
never backdated over the offline fact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.model import Fact, Sample, to_ns
from core.normalize import NormalizeError, Normalizer
from core.plant import Plant, parse_plant

T0 = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
STATE_MAP = {1: "running", 3: "down", 9: "offline"}


@cache
def plant() -> Plant:
    """``m1`` goes stale after 30 s; ``m2`` (same source) never; ``m3`` has no state signal."""
    def sig(m: str, s: str, **kw: Any) -> dict[str, Any]:
        return {"node": f"ns=2;s={m}.{s}", **kw}

    def machine(mid: str, **kw: Any) -> dict[str, Any]:
        return {"id": mid, "source": "plc-1", **kw, "signals": {
            "good": sig(mid, "good", counter_bits=32), "state": sig(mid, "state", map=STATE_MAP),
            "reason": sig(mid, "reason"), "temp": sig(mid, "temp")}}

    m3 = machine("m3", stale_after_s=30)
    del m3["signals"]["state"]
    return parse_plant({
        "site": {"id": "site-1"},
        "sources": {"plc-1": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}}},
        "lines": [{"id": "line-1", "machines": [machine("m1", stale_after_s=30), machine("m2"), m3]}],
    })


def ns(t: float) -> int:
    return to_ns(T0 + timedelta(seconds=t))


class Clock:
    """The collector's clock, moved by the test (no waiting)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> int:
        return ns(self.t)


def s(machine: str, signal: str, value: Any, t: float) -> Sample:
    return Sample(machine, signal, value, T0 + timedelta(seconds=t))


def states(facts: list[Fact]) -> list[tuple[str, str, int]]:
    return [(f.machine, str(f.value), f.time_ns) for f in facts if f.kind == "state"]


def test_a_silent_machine_goes_offline_at_last_seen_plus_stale_after_once() -> None:
    clock = Clock(0)
    n = Normalizer(plant(), clock=clock)
    for m in ("m1", "m2"):
        n.feed(s(m, "state", 1, 0))
    clock.t = 10
    n.feed(s("m1", "temp", 20.0, 10))  # any accepted sample is data
    clock.t = 39.9
    assert n.silent() == []
    clock.t = 55  # checked late: the fact still says when the silence reached 30 s
    assert states(n.silent()) == [("m1", "offline", ns(40))]
    clock.t = 500
    assert n.silent() == []  # once; m2 (no stale_after_s) stays running


def test_data_returning_ends_the_silence_without_backdating_over_it() -> None:
    clock = Clock(0)
    n = Normalizer(plant(), clock=clock)
    n.feed(s("m1", "reason", 7, 0))
    n.feed(s("m1", "state", 3, 0))
    n.feed(s("m1", "good", 100, 0))
    clock.t = 30
    assert states(n.silent()) == [("m1", "offline", ns(30))]
    # data again: a counter (no state sample): back "down" with its reason, at the data's time
    clock.t = 70
    facts = n.feed(s("m1", "good", 103, 70))
    assert [(f.kind, f.value, f.reason) for f in facts] == [("count", 3, None), ("state", "down", 7)]
    assert states(facts) == [("m1", "down", ns(70))]
    clock.t = 100
    assert states(n.silent()) == [("m1", "offline", ns(100))]
    # data whose source time lies before the offline fact (a PLC clock behind): after it
    clock.t = 120
    assert states(n.feed(s("m1", "temp", 1.0, 90))) == [("m1", "down", ns(100) + 1)]


def test_a_state_sample_ending_the_silence_says_the_state() -> None:
    clock = Clock(0)
    n = Normalizer(plant(), clock=clock)
    n.feed(s("m1", "state", 1, 0))
    clock.t = 30
    n.silent()
    clock.t = 31
    assert states(n.feed(s("m1", "state", 3, 31))) == [("m1", "down", ns(31))]
    assert n.feed(s("m1", "good", 5, 31)) == []  # a baseline; no second "back" fact
    # a PLC saying "offline" itself ends the silence too, and nothing revives the old state
    clock.t = 70
    n.silent()
    assert n.feed(s("m1", "state", 9, 71)) == []
    assert states(n.feed(s("m1", "temp", 1.0, 72))) == []


def test_refused_samples_are_no_data_and_machines_without_state_or_setting_never_go_offline() -> None:
    clock = Clock(0)
    n = Normalizer(plant(), clock=clock)
    for m in ("m1", "m2", "m3"):
        n.feed(s(m, "temp", 1.0, 0))
    n.feed(s("m1", "state", 1, 0))
    n.feed(s("m2", "state", 1, 0))
    clock.t = 25
    with pytest.raises(NormalizeError):
        n.feed(s("m1", "state", 42, 25))  # unmapped: refused, not data
    clock.t = 30
    assert states(n.silent()) == [("m1", "offline", ns(30))]
    assert n.silent(["m2", "m3"]) == []


def test_a_restart_watches_from_its_start_and_keeps_a_silence_across() -> None:
    clock = Clock(0)
    n = Normalizer(plant(), clock=clock)
    n.feed(s("m1", "state", 1, 0))
    n.feed(s("m2", "state", 1, 0))
    saved = n.snapshot()
    # restarted an hour later: a broker's kept messages may still come, so the watch starts now
    clock.t = 3600
    again = Normalizer(plant(), clock=clock)
    again.restore(saved)
    clock.t = 3629
    assert again.silent() == []
    clock.t = 3630
    assert states(again.silent()) == [("m1", "offline", ns(3630))]
    # silent when saved: data after the next restart brings it back
    clock.t = 4000
    third = Normalizer(plant(), clock=clock)
    third.restore(again.snapshot())
    assert states(third.feed(s("m1", "temp", 2.0, 4000))) == [("m1", "running", ns(4000))]


# ---- property --------------------------------------------------------------------------------

ops_st = st.lists(st.one_of(
    st.tuples(st.just("state"), st.floats(0, 50), st.sampled_from([1, 3])),
    st.tuples(st.just("temp"), st.floats(0, 50), st.just(0)),
    st.tuples(st.just("check"), st.floats(0, 50), st.just(0)),
    st.tuples(st.just("restart"), st.floats(0, 50), st.just(0))), max_size=60)


@given(ops_st)
@settings(max_examples=300, deadline=None)
def test_offline_exactly_for_silences_and_never_backdated(ops: list[tuple[str, float, int]]) -> None:
    clock = Clock(0)
    n = Normalizer(plant(), clock=clock)
    started, seen = 0.0, None  # collector-clock seconds: this run's start, last accepted sample
    state_facts: list[tuple[str, int]] = []  # (state, time_ns) of m1, in emission order
    known = False  # m1 has a state (nothing to leave before its first one)
    for op, dt, code in ops:
        clock.t += dt
        if op == "restart":
            n2 = Normalizer(plant(), clock=clock)
            n2.restore(n.snapshot())
            n, started, seen = n2, clock.t, None
            continue
        if op == "check":
            facts = n.silent()
            ref = max(seen if seen is not None else started, started)
            silent_now = known and state_facts[-1][0] != "offline" and clock.t - ref >= 30
            assert bool(facts) == silent_now
            for f in facts:
                assert f.time_ns >= ns(ref + 30)  # at the moment the silence reached 30 s (or after)
                state_facts.append(("offline", f.time_ns))
            continue
        was_offline = known and state_facts[-1][0] == "offline"
        facts = n.feed(s("m1", op, code if op == "state" else 1.5, clock.t))
        seen = clock.t
        new = [(str(f.value), f.time_ns) for f in facts if f.kind == "state"]
        if op == "state":
            known = True
        if was_offline:
            assert new, "data came back but the machine stayed offline"
        state_facts += new
    times = [t for _, t in state_facts]
    assert times == sorted(times) and len(set(times)) == len(times)  # never backdated, keys unique
    assert all(not (a == b == "offline") for (a, _), (b, _) in pairwise(state_facts))


def test_a_source_outage_during_a_silence_is_not_backdated_over_either() -> None:
    clock = Clock(0)
    n = Normalizer(plant(), clock=clock)
    n.feed(s("m1", "state", 1, 0))
    clock.t = 30
    assert states(n.silent()) == [("m1", "offline", ns(30))]
    assert n.source_offline("plc-1", T0 + timedelta(seconds=40)) != []  # m2 goes offline; m1 already is
    n.source_online("plc-1", T0 + timedelta(seconds=100))
    clock.t = 101
    # a value kept from before the outage (older source time): back no earlier than the link
    assert states(n.feed(s("m1", "temp", 3.0, 50))) == [("m1", "running", ns(100))]
