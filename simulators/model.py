"""A seeded discrete-event model of the plant on a virtual clock.

Time is integer epoch milliseconds throughout: the ledger's times are milliseconds and a raw
sample's time must equal its ledger record's time exactly, so nothing is ever rounded twice.

The kernel is a heap of process wake-ups ``(t_ms, seq, process, version)``. Each machine is
one process with exactly one pending wake-up: the earliest of its next part, its next stop,
the end of a stop and the next calendar boundary. Gauges are processes of their own. Every
process draws from its own ``random.Random`` seeded from ``(seed, machine id[, signal])``
through SHA-256, so adding a machine changes nothing about the others, and a run over a longer
window is the same run as a shorter one, only longer. Machines do not interact yet; buffers
between stations will be processes that wake machines (``PlantModel.reschedule`` and the
version number exist so that a wake-up can be moved).

What the PLC shows (raw register values) is computed here too, once: every event carries
``raw``, the registers it changes in the order a PLC would write them (the reason before the
state), so the fast-forward CSV, the OPC UA server and the MQTT publisher agree by
construction.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
import time as _time
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from core.calendar import planned_intervals
from core.model import COUNTER_SIGNALS, MEANINGFUL_SIGNALS, PRODUCT_SIGNAL, REASON_SIGNAL, STATE_SIGNAL, to_ns
from core.plant import Line, Machine, Plant

EventKind = Literal["part", "state", "gauge", "product"]
RawValue = int | float | str
SimState = Literal["running", "idle", "down", "changeover", "planned"]

INF = 1 << 62
DAY_MS = 86_400_000

# which canonical state a stop of each reason category puts the machine in
CATEGORY_STATE: dict[str, SimState] = {
    "breakdown": "down",
    "changeover": "changeover",
    "quality": "down",
    "other": "down",
    "starved": "idle",
    "blocked": "idle",
    "planned": "planned",
    "micro_stop": "down",
}
# categories that are not drawn as random stops: micro-stops have their own process, speed
# losses are not stops at all
NOT_A_RANDOM_STOP = frozenset({"micro_stop", "speed"})
# when a machine's state map cannot show a state, what the PLC shows instead
STATE_FALLBACK: dict[str, tuple[SimState, ...]] = {
    "running": (),
    "down": ("idle",),
    "idle": ("down",),
    "changeover": ("down", "idle"),
    "planned": ("idle", "down"),
}


# ---- time ---------------------------------------------------------------------------------------


def to_ms(t: datetime) -> int:
    """Epoch milliseconds of an aware datetime (sub-millisecond parts are dropped)."""
    return to_ns(t) // 1_000_000


def from_ms(ms: int) -> datetime:
    """Aware UTC datetime of epoch milliseconds."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def iso_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and 'Z', e.g. ``2026-11-27T08:00:00.000Z``."""
    sec, milli = divmod(ms, 1000)
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(sec)) + f".{milli:03d}Z"


def derive_seed(seed: int, *parts: str) -> int:
    """A 64-bit seed from the run's seed and names (stable across processes, unlike ``hash``)."""
    text = "/".join((str(seed), *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


# ---- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened at ``t_ms`` on one machine.

    - ``part``: a part was completed; ``good`` says whether it is good, ``product`` what it is
      (only for machines with a ``product`` signal).
    - ``state``: the machine entered ``state`` with ``reason`` (None: no reason). ``initial``
      marks the snapshot at the start of a run, whose ``raw`` holds every register.
    - ``gauge``: a process value was sampled.
    - ``product``: the machine switched to ``product``.

    ``raw``: the PLC registers (signal name, raw value) this event writes, in write order.
    """

    t_ms: int
    line: str
    machine: str
    kind: EventKind
    raw: tuple[tuple[str, RawValue], ...] = ()
    good: bool | None = None
    product: str | None = None
    state: SimState | None = None
    reason: int | None = None
    initial: bool = False

    @property
    def time(self) -> datetime:
        return from_ms(self.t_ms)


# ---- calendar -----------------------------------------------------------------------------------


class CalendarTimeline:
    """Planned (non-production) intervals of the plant's calendar as merged millisecond
    intervals, computed lazily a week at a time from ``origin_ms`` on."""

    CHUNK_MS = 7 * DAY_MS

    def __init__(self, plant: Plant, origin_ms: int) -> None:
        self._plant = plant
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._horizon = origin_ms

    def _extend(self) -> None:
        a, b = self._horizon, self._horizon + self.CHUNK_MS
        for s, e in planned_intervals(self._plant, from_ms(a), from_ms(b)):
            s_ms, e_ms = to_ms(s), to_ms(e)
            if self._ends and self._ends[-1] == s_ms:
                self._ends[-1] = e_ms  # a planned stretch across the chunk edge is one interval
            else:
                self._starts.append(s_ms)
                self._ends.append(e_ms)
        self._horizon = b

    def _lookup(self, t_ms: int) -> tuple[bool, int]:
        i = bisect_right(self._starts, t_ms) - 1
        if i >= 0 and t_ms < self._ends[i]:
            return True, self._ends[i]
        if i + 1 < len(self._starts):
            return False, self._starts[i + 1]
        return False, self._horizon

    def status(self, t_ms: int) -> tuple[bool, int]:
        """(planned at ``t_ms``?, when that may change). The second value can be a mere
        re-check point (the lookahead horizon) where nothing changes."""
        while t_ms >= self._horizon:
            self._extend()
        planned, until = self._lookup(t_ms)
        if until >= self._horizon:
            self._extend()  # look one chunk further before calling the horizon a boundary
            planned, until = self._lookup(t_ms)
        return planned, until


# ---- processes ----------------------------------------------------------------------------------


class Process(Protocol):
    def wake(self, t_ms: int) -> int | None:
        """Do what is due at ``t_ms``; return when to wake next (None: never)."""


class _Kernel(Protocol):
    calendar: CalendarTimeline
    micro_stop_ms: int

    def emit(self, event: Event) -> None: ...


Mode = Literal["running", "stopped", "planned"]


class MachineSim:
    """One machine: cycles, scrap, random stops, micro-stops and the calendar."""

    def __init__(self, kernel: _Kernel, plant: Plant, line: Line, machine: Machine, seed: int) -> None:
        self.k = kernel
        self.line = line.id
        self.id = machine.id
        self.rng = random.Random(derive_seed(seed, machine.id))
        sim = machine.simulation
        self.sim = sim
        sig = machine.signals

        # registers the PLC has
        self.counters: dict[str, int] = {n: s.counter_bits or 32 for n, s in sig.items() if n in COUNTER_SIGNALS}
        state_sig = sig.get(STATE_SIGNAL)
        self.state_codes: dict[str, int] = {}
        if state_sig is not None and state_sig.map:
            for code, st in state_sig.map.items():
                self.state_codes.setdefault(st, code)
        self.has_reason = REASON_SIGNAL in sig
        self.products: list[str] = sorted(plant.products) if PRODUCT_SIGNAL in sig else []
        self.gauges = [n for n in sig if n not in MEANINGFUL_SIGNALS]

        # stop reasons
        codes = sim.reasons if sim.reasons is not None else sorted(plant.reasons)
        cats = {c: (plant.reasons[c].category if c in plant.reasons else "other") for c in codes}
        self.stop_reasons = [c for c in codes if cats[c] not in NOT_A_RANDOM_STOP]
        self.stop_state = {c: self._effective(CATEGORY_STATE.get(cats[c], "down")) for c in self.stop_reasons}
        self.changeover_reasons = frozenset(c for c in self.stop_reasons if cats[c] == "changeover")
        micro = [c for c in codes if cats[c] == "micro_stop"]
        if not micro:
            micro = [c for c, r in sorted(plant.reasons.items()) if r.category == "micro_stop"]
        self.micro_reason: int | None = micro[0] if micro else None

        self.ideal_s = {p: plant.ideal_cycle_s(machine, p) or machine.ideal_cycle_s or 60.0 for p in self.products}
        self.machine_ideal_s = machine.ideal_cycle_s or (
            next(iter(plant.products.values())).ideal_cycle_s if plant.products else 60.0)

        # dynamic state
        self.good_n = 0
        self.scrap_n = 0
        self.product: str | None = self.rng.choice(self.products) if self.products else None
        self.mode: Mode = "running"
        self.state: SimState = "running"
        self.reason: int | None = None
        self.since = 0
        self.stop_end = 0
        self.cycle_left = self._cycle_ms()
        self.ttf = self._ttf_ms()
        self.ttm = self._ttm_ms()

    # -- random draws ---------------------------------------------------------------------------
    def _cycle_ms(self) -> int:
        ideal = self.ideal_s.get(self.product, self.machine_ideal_s) if self.product else self.machine_ideal_s
        # a real machine runs a little slower than its ideal cycle on average, rarely faster
        mean = ideal * 1.05
        cv = self.sim.cycle_cv
        if cv <= 0:
            s = mean
        else:
            sigma2 = math.log1p(cv * cv)
            s = self.rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))
            s = max(s, ideal * 0.9)
        return max(1, round(s * 1000))

    def _ttf_ms(self) -> int:
        return max(1, round(self.rng.expovariate(1.0 / self.sim.mtbf_s) * 1000))

    def _ttm_ms(self) -> int:
        rate = self.sim.micro_stop_rate_per_h
        if rate <= 0 or self.k.micro_stop_ms <= 1:
            return INF
        return max(1, round(self.rng.expovariate(rate / 3600.0) * 1000))

    def _repair_ms(self) -> int:
        mean = self.sim.mttr_s
        sigma2 = math.log1p(0.5 * 0.5)
        s = self.rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))
        return max(1, round(s * 1000))

    def _micro_ms(self) -> int:
        # strictly shorter than calendar.micro_stop_s: that is what makes it a micro-stop
        return max(1, min(self.k.micro_stop_ms - 1, round(self.rng.uniform(0.1, 0.9) * self.k.micro_stop_ms)))

    # -- registers ------------------------------------------------------------------------------
    def _effective(self, state: SimState) -> SimState:
        if not self.state_codes or state in self.state_codes:
            return state
        for alt in STATE_FALLBACK[state]:
            if alt in self.state_codes:
                return alt
        return state

    def counter_raw(self, name: str) -> int:
        n = {"good": self.good_n, "scrap": self.scrap_n, "total": self.good_n + self.scrap_n}[name]
        return (self.sim.counter_start + n) % (1 << self.counters[name])

    def _state_raw(self) -> list[tuple[str, RawValue]]:
        out: list[tuple[str, RawValue]] = []
        if self.has_reason:
            out.append((REASON_SIGNAL, self.reason or 0))
        code = self.state_codes.get(self.state)
        if code is not None:
            out.append((STATE_SIGNAL, code))
        return out

    def snapshot(self, t_ms: int) -> Event:
        raw: list[tuple[str, RawValue]] = [(n, self.counter_raw(n)) for n in self.counters]
        if self.products and self.product is not None:
            raw.append((PRODUCT_SIGNAL, self.product))
        raw.extend(self._state_raw())
        return Event(t_ms, self.line, self.id, "state", tuple(raw), state=self.state, reason=self.reason,
                     initial=True)

    # -- transitions ----------------------------------------------------------------------------
    def _set_state(self, t_ms: int, state: SimState, reason: int | None) -> None:
        if state == self.state and reason == self.reason:
            return
        self.state, self.reason = state, reason
        self.k.emit(Event(t_ms, self.line, self.id, "state", tuple(self._state_raw()), state=state, reason=reason))

    def _part(self, t_ms: int) -> None:
        good = self.rng.random() >= self.sim.scrap_rate
        if good:
            self.good_n += 1
        else:
            self.scrap_n += 1
        raw = tuple((n, self.counter_raw(n)) for n in self.counters if n == "total" or (n == "good") == good)
        self.k.emit(Event(t_ms, self.line, self.id, "part", raw, good=good,
                          product=self.product if self.products else None))

    def _stop(self, t_ms: int, micro: bool) -> None:
        if micro:
            reason, state, dur = self.micro_reason, self._effective("down"), self._micro_ms()
        elif self.stop_reasons:
            reason = self.rng.choice(self.stop_reasons)
            state, dur = self.stop_state[reason], self._repair_ms()
        else:
            reason, state, dur = None, self._effective("down"), self._repair_ms()
        if reason in self.changeover_reasons and len(self.products) > 1 and self.product is not None:
            self.product = self.products[(self.products.index(self.product) + 1) % len(self.products)]
            self.k.emit(Event(t_ms, self.line, self.id, "product", ((PRODUCT_SIGNAL, self.product),),
                              product=self.product))
        self.mode = "stopped"
        self.stop_end = t_ms + dur
        self._set_state(t_ms, state, reason)

    def begin(self, t_ms: int) -> int:
        """Set the state at the start of the run (no event) and return the first wake-up."""
        self.since = t_ms
        planned, until = self.k.calendar.status(t_ms)
        if planned:
            self.mode, self.state = "planned", self._effective("planned")
            return until
        return min(t_ms + min(self.cycle_left, self.ttf, self.ttm), until)

    def wake(self, t_ms: int) -> int:
        if self.mode == "running":
            elapsed = t_ms - self.since
            self.cycle_left -= elapsed
            self.ttf -= elapsed
            self.ttm -= elapsed
        self.since = t_ms
        if self.mode == "running" and self.cycle_left <= 0:
            self._part(t_ms)
            self.cycle_left = self._cycle_ms()
        planned, until = self.k.calendar.status(t_ms)
        if planned:
            # the calendar overrides: a stop still open at the start of a break is over after it
            if self.mode != "planned":
                self.mode = "planned"
                self._set_state(t_ms, self._effective("planned"), None)
            return until
        if self.mode == "planned" or (self.mode == "stopped" and t_ms >= self.stop_end):
            self.mode = "running"
        if self.mode == "running":
            # decide on a stop before announcing "running", so no state lasts zero milliseconds
            if self.ttf <= 0:
                self.ttf = self._ttf_ms()
                if self.ttm <= 0:
                    self.ttm = self._ttm_ms()
                self._stop(t_ms, micro=False)
            elif self.ttm <= 0:
                self.ttm = self._ttm_ms()
                self._stop(t_ms, micro=True)
            else:
                self._set_state(t_ms, "running", None)
        if self.mode == "stopped":
            return min(self.stop_end, until)
        return min(t_ms + min(self.cycle_left, self.ttf, self.ttm), until)

    @property
    def producing(self) -> bool:
        return self.mode == "running"


# gauge profiles: (name or unit fragments) -> (level when not running, level when running,
# noise standard deviation, time constant in seconds)
_GAUGE_PROFILES: tuple[tuple[tuple[str, ...], tuple[float, float, float, float]], ...] = (
    (("temp", "°c", "degc"), (24.0, 58.0, 0.3, 300.0)),
    (("pressure", "mpa", "bar"), (0.4, 18.0, 0.25, 5.0)),
    (("power", "kw"), (0.8, 32.0, 0.6, 5.0)),
    (("current", "amp"), (1.0, 25.0, 0.4, 5.0)),
    (("speed", "rpm"), (0.0, 12000.0, 40.0, 10.0)),
    (("vib", "mm/s"), (0.2, 2.5, 0.05, 10.0)),
)


def gauge_profile(name: str, unit: str | None) -> tuple[float, float, float, float]:
    keys = (name.lower(), (unit or "").lower())
    for frags, prof in _GAUGE_PROFILES:
        if any(f in k for f in frags for k in keys if k):
            return prof
    return (0.0, 100.0, 1.0, 30.0)


class GaugeSim:
    """A process value that follows its machine's state, sampled every 10–30 s."""

    def __init__(self, kernel: _Kernel, machine: MachineSim, signal: str, unit: str | None, seed: int) -> None:
        self.k = kernel
        self.m = machine
        self.signal = signal
        self.rng = random.Random(derive_seed(seed, machine.id, "gauge", signal))
        self.low, self.high, self.noise, self.tau_s = gauge_profile(signal, unit)
        self.x = self.high if machine.producing else self.low
        self.last = 0
        self.digits = 1 if self.high >= 1000 else 2

    def _value(self) -> float:
        return round(self.x + self.rng.gauss(0.0, self.noise), self.digits)

    def begin(self, t_ms: int) -> tuple[Event, int]:
        self.last = t_ms
        ev = Event(t_ms, self.m.line, self.m.id, "gauge", ((self.signal, self._value()),))
        return ev, t_ms + self._period_ms()

    def _period_ms(self) -> int:
        return round(self.rng.uniform(10.0, 30.0) * 1000)

    def wake(self, t_ms: int) -> int:
        target = self.high if self.m.producing else self.low
        dt = (t_ms - self.last) / 1000.0
        self.x += (target - self.x) * (1.0 - math.exp(-dt / self.tau_s))
        self.last = t_ms
        self.k.emit(Event(t_ms, self.m.line, self.m.id, "gauge", ((self.signal, self._value()),)))
        return t_ms + self._period_ms()


# ---- the plant ----------------------------------------------------------------------------------


class PlantModel:
    """The whole plant on a virtual clock starting at ``start``.

    ``initial_events()`` is the snapshot at the start (every machine's registers and state);
    ``advance(t)`` runs the clock to ``t`` and returns the events in time order.
    """

    def __init__(self, plant: Plant, seed: int, start: datetime | int) -> None:
        self.plant = plant
        self.seed = seed
        self.start_ms = start if isinstance(start, int) else to_ms(start)
        self.now_ms = self.start_ms
        self.calendar = CalendarTimeline(plant, self.start_ms)
        self.micro_stop_ms = round(plant.calendar.micro_stop_s * 1000)
        self._heap: list[tuple[int, int, int, int]] = []
        self._seq = itertools.count()
        self._procs: list[Process] = []
        self._versions: list[int] = []
        self._out: list[Event] = []
        self.machines: dict[str, MachineSim] = {}
        self._initial: list[Event] = []
        for line, machine in plant.machines():
            m = MachineSim(self, plant, line, machine, seed)
            self.machines[m.id] = m
            self._add(m, m.begin(self.start_ms))
            self._initial.append(m.snapshot(self.start_ms))
            for g in m.gauges:
                gs = GaugeSim(self, m, g, machine.signals[g].unit, seed)
                ev, first = gs.begin(self.start_ms)
                self._initial.append(ev)
                self._add(gs, first)

    # -- kernel ---------------------------------------------------------------------------------
    def _add(self, proc: Process, first: int | None) -> int:
        self._procs.append(proc)
        self._versions.append(0)
        idx = len(self._procs) - 1
        if first is not None:
            heapq.heappush(self._heap, (first, next(self._seq), idx, 0))
        return idx

    def reschedule(self, idx: int, t_ms: int) -> None:
        """Move process ``idx``'s pending wake-up to ``t_ms`` (for processes that wake others)."""
        self._versions[idx] += 1
        heapq.heappush(self._heap, (max(t_ms, self.now_ms), next(self._seq), idx, self._versions[idx]))

    def emit(self, event: Event) -> None:
        self._out.append(event)

    def initial_events(self) -> list[Event]:
        return list(self._initial)

    def advance(self, until_ms: int, *, inclusive: bool = False) -> list[Event]:
        """Run every wake-up before ``until_ms`` (or at it, if ``inclusive``); return the events."""
        heap = self._heap
        procs, versions = self._procs, self._versions
        limit = until_ms + 1 if inclusive else until_ms
        while heap and heap[0][0] < limit:
            t, _, idx, version = heapq.heappop(heap)
            if version != versions[idx]:
                continue
            self.now_ms = t
            nxt = procs[idx].wake(t)
            if nxt is not None:
                heapq.heappush(heap, (max(nxt, t), next(self._seq), idx, version))
        self.now_ms = max(self.now_ms, until_ms)
        out, self._out = self._out, []
        return out

    def run(self, end: datetime | int, chunk_ms: int = 3_600_000) -> Iterator[Event]:
        """Every event in ``[start, end)``, generated an hour at a time."""
        end_ms = end if isinstance(end, int) else to_ms(end)
        t = self.now_ms
        while t < end_ms:
            t = min(t + chunk_ms, end_ms)
            yield from self.advance(t)
