"""A seeded discrete-event model of the plant on a virtual clock.

Time is integer epoch milliseconds throughout: the ledger's times are milliseconds and a raw
sample's time must equal its ledger record's time exactly, so nothing is ever rounded twice.

**The line.** Each line is a series of stations (its machines in flow order) with a buffer
after every station but the last (``simulation.buffer_capacity`` parts). A station takes a part
from the buffer before it (the first station from unlimited raw material), works on it for one
cycle, and at the end of the cycle counts it good or scrap. A good part goes into the buffer
after it (the last station's leaves the line); scrap goes nowhere. A station with nothing to take
is ``idle`` and *starved*; one whose finished good part does not fit into a full buffer is
``idle`` and *blocked* and holds the part until there is room. So a stopped station starves the
ones after it once their buffers are empty and blocks the ones before it once theirs are full.

**Losses.** Cycle times vary (lognormal, ``cycle_cv``) and now and then a cycle is slow
(``slow_cycle_rate`` × ``slow_cycle_factor``). Breakdowns come after an exponential running
time (``mtbf_s``, counted only while working) and last a lognormal time around ``mttr_s``;
micro-stops (``micro_stop_rate_per_h``) are shorter than ``calendar.micro_stop_s``. Both
interrupt the cycle, which resumes after them.

**Products.** A line whose first station has ``product_mix`` (or, without it, a line with a
``product`` signal in a plant with ``products``) makes runs of one product after another; the
first station plans them (``run_length`` parts on average). Parts carry their product through
the buffers, and each station changes over (``changeover`` for about ``changeover_s``) when the
first part of a new product reaches it. The ``product`` register switches when the changeover
*begins* (the operator selects the new program, then sets up), in the same millisecond and
written just before the state. Cycle times follow the product's ``ideal_cycle_s`` on stations
with a ``product`` signal (that is what the figures will assume), else the machine's.

**The calendar** overrides everything: breaks and time outside shifts are ``planned`` for every
station at once, nothing moves then. A breakdown or micro-stop still open when planned time
begins is over when it ends; a changeover resumes where it was; a cycle resumes where it was.

**The kernel** is a heap of process wake-ups ``(t_ms, seq, process, version)``. Each station is
one process with exactly one pending wake-up (the end of its cycle or stop, the next calendar
boundary); a station that changes a buffer wakes the neighbour waiting on it at the same
millisecond (``PlantModel.reschedule``). All wake-ups of one millisecond are run before any
state is announced, so a station starved and fed again in the same millisecond shows no
zero-length ``idle``: the states of a millisecond are settled at its end. Gauges are processes
of their own. Every station draws from its own ``random.Random`` seeded from ``(seed, machine
id)`` through SHA-256 (a line's product plan from ``(seed, line id)``), so adding a line changes
nothing about the others, and a run over a longer window is the same run as a shorter one, only
longer.

What the PLC shows (raw register values) is computed here too, once: every event carries
``raw``, the registers it changes in the order a PLC would write them (the reason before the
state), so the fast-forward CSV, the OPC UA server and the MQTT publisher agree by
construction.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import math
import random
import time as _time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from core.calendar import planned_intervals
from core.model import COUNTER_SIGNALS, MEANINGFUL_SIGNALS, PRODUCT_SIGNAL, REASON_SIGNAL, STATE_SIGNAL, to_ns
from core.plant import Line, Machine, Plant, PlantFileError, Problem

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
# the categories a random breakdown draws its reason from; the others have their own cause
# (changeovers: a new product; starved/blocked: the line; planned: the calendar; speed: no stop)
BREAKDOWN_CATEGORIES = frozenset({"breakdown", "quality", "other"})
# when a machine's state map cannot show a state, what the PLC shows instead
STATE_FALLBACK: dict[str, tuple[SimState, ...]] = {
    "running": (),
    "down": ("idle",),
    "idle": ("down",),
    "changeover": ("down", "idle"),
    "planned": ("idle", "down"),
}
log = logging.getLogger(__name__)


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

    def reschedule(self, idx: int, t_ms: int) -> None: ...

    def touch(self, machine: MachineSim) -> None: ...


def reason_codes(plant: Plant, machine: Machine, categories: Iterable[str]) -> list[int]:
    """The stop-reason codes of ``categories`` a machine uses: those in its ``simulation.reasons``
    (all of the catalogue when it has none), else, when that list has none of these categories,
    the catalogue's."""
    cats = frozenset(categories)

    def category(code: int) -> str:
        r = plant.reasons.get(code)
        return r.category if r is not None else "other"

    own = machine.simulation.reasons if machine.simulation.reasons is not None else sorted(plant.reasons)
    picked = [c for c in own if category(c) in cats]
    return picked or [c for c in sorted(plant.reasons) if plant.reasons[c].category in cats]


class ProductMix:
    """A line's product plan: runs of one product, ``run_length`` parts on average (±50 %), the
    next product drawn by weight among the others. The run at the start is already under way."""

    def __init__(self, mix: dict[str, float], run_length: float, rng: random.Random) -> None:
        self.codes = list(mix)
        self.weights = [mix[c] for c in self.codes]
        self.run_length = run_length
        self.rng = rng
        self.current: str = rng.choices(self.codes, self.weights)[0]
        self.left = rng.randint(1, self._run())

    def _run(self) -> int:
        return max(1, round(self.rng.uniform(0.5, 1.5) * self.run_length))

    def next(self) -> str:
        """The product of the next part the first station starts."""
        if self.left <= 0:
            others = [(c, w) for c, w in zip(self.codes, self.weights, strict=True) if c != self.current]
            if others:
                self.current = self.rng.choices([c for c, _ in others], [w for _, w in others])[0]
            self.left = self._run()
        self.left -= 1
        return self.current


class Buffer:
    """The parts (their products) between two stations, oldest first."""

    __slots__ = ("capacity", "downstream", "parts", "upstream")

    def __init__(self, capacity: int, upstream: MachineSim, downstream: MachineSim) -> None:
        self.capacity = capacity
        self.parts: deque[str | None] = deque()
        self.upstream = upstream
        self.downstream = downstream

    @property
    def full(self) -> bool:
        return len(self.parts) >= self.capacity


# what a station is doing: waiting for a part, changing over, working on one, stopped (breakdown
# or micro-stop) with one loaded, or waiting to put a finished good part into the next buffer
Phase = Literal["need", "setup", "work", "stop", "unload"]


class MachineSim:
    """One station of a line: cycles, scrap, breakdowns, micro-stops, changeovers, buffers and
    the calendar. ``state``/``reason`` are what it is doing now; they are announced (a state
    event) when the kernel settles the millisecond."""

    def __init__(self, kernel: _Kernel, plant: Plant, line: Line, machine: Machine, seed: int,
                 mix: ProductMix | None = None, first_product: str | None = None) -> None:
        self.k = kernel
        self.line = line.id
        self.id = machine.id
        self.rng = random.Random(derive_seed(seed, machine.id))
        sim = machine.simulation
        self.sim = sim
        sig = machine.signals
        self.mix = mix  # the first station of a line with products plans them
        self.up: Buffer | None = None  # None: the first station, unlimited raw material
        self.down: Buffer | None = None  # None: the last station, its parts leave the line
        self.pidx = -1  # the kernel's process index
        self.order = 0  # position in the plant, for settling in a stable order
        self.dirty = False

        # registers the PLC has
        self.counters: dict[str, int] = {n: s.counter_bits or 32 for n, s in sig.items() if n in COUNTER_SIGNALS}
        state_sig = sig.get(STATE_SIGNAL)
        self.state_codes: dict[str, int] = {}
        if state_sig is not None and state_sig.map:
            for code, st in state_sig.map.items():
                self.state_codes.setdefault(st, code)
        self.has_reason = REASON_SIGNAL in sig
        self.has_product = PRODUCT_SIGNAL in sig and first_product is not None
        self.gauges = [n for n in sig if n not in MEANINGFUL_SIGNALS]

        # stop reasons
        self.breakdown_reasons = reason_codes(plant, machine, BREAKDOWN_CATEGORIES)
        micro = reason_codes(plant, machine, ("micro_stop",))
        self.micro_reason: int | None = micro[0] if micro else None
        first = {cat: (codes[0] if (codes := reason_codes(plant, machine, (cat,))) else None)
                 for cat in ("changeover", "starved", "blocked")}
        self.changeover_reason = first["changeover"]
        self.starved_reason = first["starved"]
        self.blocked_reason = first["blocked"]

        self.machine_ideal_s = machine.ideal_cycle_s or (
            next(iter(plant.products.values())).ideal_cycle_s if plant.products else 60.0)
        self.product_ideal_s = {p: pr.ideal_cycle_s for p, pr in plant.products.items()} if self.has_product else {}

        # dynamic state
        self.good_n = 0
        self.scrap_n = 0
        self.setup: str | None = first_product  # the product the station is set up for
        self.loaded: str | None = None  # the product of the part in the machine (phases setup, work, stop)
        self.held: str | None = None  # the finished good part waiting for room (phase unload)
        self.phase: Phase = "need"
        self.planned = False
        self.state: SimState = "running"
        self.reason: int | None = None
        self.stop_status: tuple[SimState, int | None] = ("down", None)
        self.shown: tuple[SimState, int | None] = ("running", None)  # the last announced state
        self.shown_product: str | None = first_product
        self.since = 0
        self.stop_end = 0
        self.setup_left = 0
        self.cycle_left = 0
        self.ttf = self._ttf_ms()
        self.ttm = self._ttm_ms()

    # -- random draws ---------------------------------------------------------------------------
    def _ideal_s(self) -> float:
        if self.setup is not None and self.setup in self.product_ideal_s:
            return self.product_ideal_s[self.setup]
        return self.machine_ideal_s

    def _cycle_ms(self) -> int:
        ideal = self._ideal_s()
        mean = ideal * self.sim.cycle_factor
        cv = self.sim.cycle_cv
        if cv <= 0:
            s = mean
        else:
            sigma2 = math.log1p(cv * cv)
            s = self.rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))
            s = max(s, ideal * 0.9)
        if self.sim.slow_cycle_rate > 0 and self.rng.random() < self.sim.slow_cycle_rate:
            s *= self.sim.slow_cycle_factor
        return max(1, round(s * 1000))

    def _ttf_ms(self) -> int:
        return max(1, round(self.rng.expovariate(1.0 / self.sim.mtbf_s) * 1000))

    def _ttm_ms(self) -> int:
        rate = self.sim.micro_stop_rate_per_h
        if rate <= 0 or self.k.micro_stop_ms <= 1:
            return INF
        return max(1, round(self.rng.expovariate(rate / 3600.0) * 1000))

    def _lognormal_ms(self, mean_s: float, cv: float) -> int:
        sigma2 = math.log1p(cv * cv)
        s = self.rng.lognormvariate(math.log(mean_s) - sigma2 / 2, math.sqrt(sigma2))
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
        if self.has_product and self.setup is not None:
            raw.append((PRODUCT_SIGNAL, self.setup))
        raw.extend(self._state_raw())
        return Event(t_ms, self.line, self.id, "state", tuple(raw), state=self.state, reason=self.reason,
                     initial=True)

    # -- announcing -----------------------------------------------------------------------------
    def _status(self, state: SimState, reason: int | None) -> None:
        state = self._effective(state)
        if (state, reason) != (self.state, self.reason):
            self.state, self.reason = state, reason
            self.k.touch(self)

    def settle(self, t_ms: int) -> None:
        """Announce what changed in this millisecond: the product, then the state."""
        if self.has_product and self.setup != self.shown_product and self.setup is not None:
            self.shown_product = self.setup
            self.k.emit(Event(t_ms, self.line, self.id, "product", ((PRODUCT_SIGNAL, self.setup),),
                              product=self.setup))
        if (self.state, self.reason) != self.shown:
            self.shown = (self.state, self.reason)
            self.k.emit(Event(t_ms, self.line, self.id, "state", tuple(self._state_raw()), state=self.state,
                              reason=self.reason))

    # -- transitions ----------------------------------------------------------------------------
    def _complete(self, t_ms: int) -> None:
        good = self.rng.random() >= self.sim.scrap_rate
        if good:
            self.good_n += 1
        else:
            self.scrap_n += 1
        raw = tuple((n, self.counter_raw(n)) for n in self.counters if n == "total" or (n == "good") == good)
        self.k.emit(Event(t_ms, self.line, self.id, "part", raw, good=good,
                          product=self.loaded if self.has_product else None))
        if good and self.down is not None:
            self.held, self.phase = self.loaded, "unload"
        else:
            self.phase = "need"
        self.loaded = None

    def _load(self, t_ms: int, product: str | None) -> None:
        self.loaded = product
        if product != self.setup:
            self.setup = product
            self.k.touch(self)
            if self.sim.changeover_s > 0:
                self.phase = "setup"
                self.stop_end = t_ms + self._lognormal_ms(self.sim.changeover_s, 0.3)
                self.stop_status = ("changeover", self.changeover_reason)
                self.cycle_left = self._cycle_ms()
                return
        self.phase = "work"
        self.cycle_left = self._cycle_ms()

    def _stop(self, t_ms: int, micro: bool) -> None:
        if micro:
            reason, dur = self.micro_reason, self._micro_ms()
        else:
            reason = self.rng.choice(self.breakdown_reasons) if self.breakdown_reasons else None
            dur = self._lognormal_ms(self.sim.mttr_s, 0.5)
        self.phase = "stop"
        self.stop_end = t_ms + dur
        self.stop_status = ("down", reason)

    def _take(self, t_ms: int) -> tuple[bool, str | None]:
        """The next part: (got one?, its product)."""
        if self.up is None:
            return True, (self.mix.next() if self.mix is not None else self.setup)
        if not self.up.parts:
            return False, None
        product = self.up.parts.popleft()
        prev = self.up.upstream
        if prev.phase == "unload":  # it was blocked: there is room now
            self.k.reschedule(prev.pidx, t_ms)
        return True, product

    def _step(self, t_ms: int) -> None:
        """Run through everything due at ``t_ms`` in production time, up to what the station
        waits for next."""
        while True:
            ph = self.phase
            if ph == "work":
                if self.cycle_left <= 0:
                    self._complete(t_ms)
                    continue
                # decide on a stop before announcing "running", so no state lasts zero milliseconds
                if self.ttf <= 0:
                    self.ttf = self._ttf_ms()
                    if self.ttm <= 0:
                        self.ttm = self._ttm_ms()
                    self._stop(t_ms, micro=False)
                    continue
                if self.ttm <= 0:
                    self.ttm = self._ttm_ms()
                    self._stop(t_ms, micro=True)
                    continue
                self._status("running", None)
                return
            if ph == "stop" or ph == "setup":
                if t_ms < self.stop_end:
                    self._status(*self.stop_status)
                    return
                self.phase = "work"
                continue
            if ph == "unload":
                d = self.down
                if d is not None:
                    if d.full:
                        self._status("idle", self.blocked_reason)
                        return
                    d.parts.append(self.held)
                    if d.downstream.phase == "need":  # it was starved: there is a part now
                        self.k.reschedule(d.downstream.pidx, t_ms)
                self.held = None
                self.phase = "need"
                continue
            got, product = self._take(t_ms)
            if not got:
                self._status("idle", self.starved_reason)
                return
            self._load(t_ms, product)

    def _next_ms(self, t_ms: int) -> int:
        if self.phase == "work":
            return t_ms + min(self.cycle_left, self.ttf, self.ttm)
        if self.phase in ("stop", "setup"):
            return self.stop_end
        return INF  # waiting for a neighbour, who will wake this station

    def begin(self, t_ms: int) -> int:
        """Take the first part and set the state at the start of the run (no event, no
        neighbour woken: every station is set up for the line's first product, and the buffers
        start with ``buffer_initial`` parts of it); return the first wake-up."""
        self.since = t_ms
        got, product = self._take_initial()
        if got:
            self.loaded, self.phase, self.cycle_left = product, "work", self._cycle_ms()
        planned, until = self.k.calendar.status(t_ms)
        self.planned = planned
        st: tuple[SimState, int | None] = (("planned", None) if planned else
                                          ("running", None) if got else ("idle", self.starved_reason))
        self.state, self.reason = self._effective(st[0]), st[1]
        self.shown = (self.state, self.reason)
        return until if planned else min(self._next_ms(t_ms), until)

    def _take_initial(self) -> tuple[bool, str | None]:
        if self.up is None:
            return True, (self.mix.next() if self.mix is not None else self.setup)
        if not self.up.parts:
            return False, None
        return True, self.up.parts.popleft()

    def wake(self, t_ms: int) -> int:
        if not self.planned and self.phase == "work":
            elapsed = t_ms - self.since
            self.cycle_left -= elapsed
            self.ttf -= elapsed
            self.ttm -= elapsed
        self.since = t_ms
        planned, until = self.k.calendar.status(t_ms)
        if planned:
            if not self.planned:
                if self.phase == "work" and self.cycle_left <= 0:
                    self._complete(t_ms)  # a cycle that ends as planned time begins still counts
                if self.phase == "stop":
                    self.phase = "work"  # the calendar overrides: a stop open at a break is over after it
                elif self.phase == "setup":
                    self.setup_left = max(0, self.stop_end - t_ms)  # a changeover goes on after it
                self.planned = True
                self._status("planned", None)
            return until
        if self.planned:
            self.planned = False
            if self.phase == "setup":
                self.stop_end = t_ms + self.setup_left
        self._step(t_ms)
        return min(self._next_ms(t_ms), until)

    @property
    def producing(self) -> bool:
        return self.state == "running"


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
        self._dirty: list[MachineSim] = []
        self.machines: dict[str, MachineSim] = {}
        self.buffers: dict[str, Buffer] = {}  # by the id of the station before the buffer
        self._initial: list[Event] = []
        for li, line in enumerate(plant.lines):
            mix = self._line_mix(li, line)
            first_product = mix.current if mix is not None else None
            sims = [MachineSim(self, plant, line, m, seed, mix=mix if i == 0 else None, first_product=first_product)
                    for i, m in enumerate(line.machines)]
            for i, m in enumerate(line.machines):
                if i > 0 and m.simulation.product_mix is not None:
                    log.warning("%s: simulation.product_mix is read from a line's first machine only; "
                                "ignored on '%s'", line.id, m.id)
            for i in range(len(sims) - 1):
                sim = line.machines[i].simulation
                buf = Buffer(sim.buffer_capacity, sims[i], sims[i + 1])
                initial = sim.buffer_initial if sim.buffer_initial is not None else (sim.buffer_capacity + 1) // 2
                buf.parts.extend([first_product] * initial)
                sims[i].down = sims[i + 1].up = buf
                self.buffers[sims[i].id] = buf
            for sim_m, machine in zip(sims, line.machines, strict=True):
                sim_m.order = len(self.machines)
                self.machines[sim_m.id] = sim_m
                sim_m.pidx = self._add(sim_m, sim_m.begin(self.start_ms))
                self._initial.append(sim_m.snapshot(self.start_ms))
                for g in sim_m.gauges:
                    gs = GaugeSim(self, sim_m, g, machine.signals[g].unit, seed)
                    ev, first = gs.begin(self.start_ms)
                    self._initial.append(ev)
                    self._add(gs, first)

    def _line_mix(self, li: int, line: Line) -> ProductMix | None:
        first = line.machines[0]
        mix = first.simulation.product_mix
        if mix is None:
            if not self.plant.products or not any(PRODUCT_SIGNAL in m.signals for m in line.machines):
                return None
            mix = {p: 1.0 for p in sorted(self.plant.products)}
        unknown = [p for p in mix if p not in self.plant.products]
        if unknown:
            known = ", ".join(self.plant.products) or "(none)"
            raise PlantFileError("plant file", [Problem(
                f"lines[{li}].machines[0].simulation.product_mix", f"unknown product '{unknown[0]}'",
                f"declare it under 'products:' or use one of: {known}")])
        rng = random.Random(derive_seed(self.seed, "line", line.id, "products"))
        return ProductMix(mix, first.simulation.run_length, rng)

    # -- kernel ---------------------------------------------------------------------------------
    def _add(self, proc: Process, first: int | None) -> int:
        self._procs.append(proc)
        self._versions.append(0)
        idx = len(self._procs) - 1
        if first is not None:
            heapq.heappush(self._heap, (first, next(self._seq), idx, 0))
        return idx

    def reschedule(self, idx: int, t_ms: int) -> None:
        """Move process ``idx``'s pending wake-up to ``t_ms`` (a station waking a neighbour)."""
        self._versions[idx] += 1
        heapq.heappush(self._heap, (max(t_ms, self.now_ms), next(self._seq), idx, self._versions[idx]))

    def touch(self, machine: MachineSim) -> None:
        """``machine``'s state or product changed in this millisecond: settle it at its end."""
        if not machine.dirty:
            machine.dirty = True
            self._dirty.append(machine)

    def emit(self, event: Event) -> None:
        self._out.append(event)

    def initial_events(self) -> list[Event]:
        return list(self._initial)

    def advance(self, until_ms: int, *, inclusive: bool = False) -> list[Event]:
        """Run every wake-up before ``until_ms`` (or at it, if ``inclusive``); return the events.
        A millisecond is always run whole, then settled."""
        heap = self._heap
        procs, versions = self._procs, self._versions
        limit = until_ms + 1 if inclusive else until_ms
        while heap and heap[0][0] < limit:
            t = heap[0][0]
            self.now_ms = t
            while heap and heap[0][0] == t:
                _, _, idx, version = heapq.heappop(heap)
                if version != versions[idx]:
                    continue
                nxt = procs[idx].wake(t)
                if nxt is not None:
                    heapq.heappush(heap, (max(nxt, t), next(self._seq), idx, version))
            if self._dirty:
                dirty, self._dirty = sorted(self._dirty, key=lambda m: m.order), []
                for m in dirty:
                    m.dirty = False
                    m.settle(t)
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
