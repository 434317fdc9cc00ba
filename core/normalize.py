"""Normalize: raw samples → production facts, once, at the edge.

Rules (docs/architecture.md, "Normalize rules"):

- **Counters** (``good``, ``scrap``, ``total``) become increments. The first value a counter
  reports is a baseline (no fact) unless restored state holds one. A value that drops wrapped
  if ``(new - old) mod 2**bits <= max_step`` (increment = that difference), otherwise the
  counter was reset (increment = new). An increase is an increase (increment = new - old) as
  long as the machine could have made it (a collector that was away for a while legitimately
  sees a big step; see "Counter steps" below for what is too big).
  :meth:`Normalizer.source_restarted` marks the non-retentive counters of a source's machines
  so that their next value is taken as counting from 0 (increment = new), even if it did not
  drop. An increment of 0 makes no fact.
- **State**: the raw code is mapped through the signal's ``map`` to a canonical state; the
  ``reason`` signal carries the stop-reason code (0, None or "" mean "no reason"). A state fact
  (``value`` = state, ``reason`` = the current reason, None while running) is emitted when the
  state or that effective reason changes; the first state sample always emits.
  A source may deliver the state and the reason of one event in either order, with the same
  source time: a reason sample whose source time is not after the last state fact's source time
  belongs to that fact, which is emitted again with the same ``time_ns`` (same key, so the store
  overwrites it); a reason that arrives first is remembered and goes with the next state fact;
  and a state sample carrying the same source time as a state fact that a reason change just
  made replaces that fact (same key) rather than stacking a second fact on it.
- **Product**: ``value`` = the product code (str), emitted when it changes.
- **Gauges** (any other signal): ``value`` = float, ``unit`` from the plant file.
- Samples of quality ``bad`` make no fact and change no baseline.
- **Source times** must be sane: not before 2000-01-01 and not more than ``max_clock_ahead_s``
  (default one hour) ahead of the collector's clock. Any other sample is refused (``bad_time``)
  before it is stamped, so one PLC with a wrong clock can never move a signal's later facts to
  its future (keys are kept increasing per signal, see below). A saved state holding a time
  beyond that bound (from a version without this check) is dropped on restore for the same reason.
- **Counter steps** must be parts the machine could have made. An increment (a forward step, a
  wrap, a drop read as a reset, or the first value after a PLC restart) is *implausible* when it
  is more than ``max(max_step, ceil(elapsed / ideal cycle * STEP_MARGIN))``, ``elapsed`` being the
  source time since the counter's last value (0 when that is unknown or later), or 2**63 or more
  (what the stores' signed 64-bit integers cannot hold). An implausible step is no production
  (a PLC whose counter was preset, set back or reset to a high value while the collector was
  away, a counter that jumped): the counter is re-baselined on the new value and the sample
  refused (``implausible_step``), so the counts after it are right again. This holds for the
  first reading after a collector restart from saved state too (the saved baseline carries its
  source time). The ideal cycle is the machine's ``ideal_cycle_s``; for a machine with a
  ``product`` signal it is the fastest of that and the plant's ``products`` ideal cycles (the
  bound must hold whatever it makes). ``STEP_MARGIN`` (2) lets a machine beat its ideal cycle by
  half (jitter between the counter's and the sample's times, rounded ideal cycles); beyond that
  the count is not believable. A machine with no ideal cycle at all has no rate bound: only the
  64-bit bound applies (its speed is unknown, and refusing real production would lose it), and
  the collector warns about it once at start.
- **Outages**: :meth:`Normalizer.source_offline` makes the machines of an unreachable source
  ``offline`` (one state fact each at the moment of loss); :meth:`Normalizer.source_online`
  records when it came back, and the first state after that is stamped no earlier than the
  recovery, so the store shows ``offline`` for exactly the time the collector had no link.
  Counts made during the outage arrive with the first reading after it (counters are
  cumulative), at that reading's source time. :meth:`Normalizer.machines_offline` /
  :meth:`Normalizer.machines_online` do the same for some machines of a source that stays up
  (a Sparkplug B device's ``DDEATH`` and its next ``DBIRTH``).
- **Silence**: :meth:`Normalizer.silent` makes a machine with ``stale_after_s`` ``offline`` when
  no sample of it was accepted for that long (the collector calls it periodically); data coming
  back ends it (see there).

Keys are replay-stable: ``time_ns`` is the sample's source time, bumped to ``last + 1`` when it is
not after the last fact emitted for the same (machine, signal), so keys are unique within a
stream (except the deliberate same-key re-emits above) and a replay from the same saved state
lands on the same keys. :meth:`Normalizer.snapshot` / :meth:`Normalizer.restore` carry all of
this across a collector restart.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.model import (
    COUNTER_SIGNALS,
    PRODUCT_SIGNAL,
    REASON_SIGNAL,
    STATE_SIGNAL,
    Fact,
    Quality,
    Sample,
    from_ns,
    to_ns,
)
from core.plant import Machine, Plant, Signal

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
OFFLINE = "offline"
MIN_SOURCE_NS = 946_684_800 * 1_000_000_000  # 2000-01-01T00:00:00Z: no plant data is older
DEFAULT_MAX_CLOCK_AHEAD_S = 3600.0
MAX_INCREMENT = (1 << 63) - 1  # what a signed 64-bit integer (both stores) holds
# how much faster than its ideal cycle a machine is believed to count (see "Counter steps" above)
STEP_MARGIN = 2.0


class NormalizeError(Exception):
    """A sample that cannot become a fact.

    ``kind`` is one of ``unknown_machine``, ``unknown_signal``, ``bad_value``, ``bad_time``,
    ``unmapped_state``, ``implausible_step``; ``message`` says which machine, signal and value.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(slots=True)
class _Counter:
    last: int | None = None  # last raw value seen (the baseline for the next increment)
    restarted: bool = False  # the source restarted: the next value counts from 0
    src_ns: int | None = None  # source time of ``last``


@dataclass(slots=True)
class _StateFact:
    """The last state fact emitted for a machine."""

    state: str
    reason: int | None
    src_ns: int  # source time of the sample that made it
    time_ns: int  # the fact's (possibly bumped) time, i.e. its key
    by_reason: bool  # made by a reason change rather than a state sample


@dataclass(slots=True)
class _MachineState:
    reason: int | None = None  # current raw reason (as the PLC last reported it)
    last: _StateFact | None = None
    product: str | None = None
    resume_ns: int | None = None  # source back after an outage: the next state fact is not earlier
    # offline because it went silent (see Normalizer.silent): the state it was in, given back when data returns
    before_silence: str | None = None


def _counter_entry(c: _Counter) -> dict[str, Any]:
    return {"last": c.last, "restarted": c.restarted, "src_ns": c.src_ns}


def _machine_entry(ms: _MachineState) -> dict[str, Any]:
    last = None
    if ms.last is not None:
        last = {"state": ms.last.state, "reason": ms.last.reason, "src_ns": ms.last.src_ns,
                "time_ns": ms.last.time_ns, "by_reason": ms.last.by_reason}
    return {"reason": ms.reason, "last_state": last, "product": ms.product, "resume_ns": ms.resume_ns,
            "before_silence": ms.before_silence}


def snapshot_from_entries(entries: dict[str, Any]) -> dict[str, Any]:
    """A :meth:`Normalizer.snapshot` from the entries :meth:`Normalizer.changes` returned over
    time (later values replacing earlier ones per key). ``ValueError`` for a key it cannot read."""
    counters: dict[str, dict[str, Any]] = {}
    times: dict[str, dict[str, int]] = {}
    machines: dict[str, Any] = {}
    for key, value in entries.items():
        kind, _, rest = key.partition("/")
        if kind == "m" and rest:
            machines[rest] = value
            continue
        m, _, sig = rest.partition("/")
        if not (m and sig) or kind not in ("c", "t"):
            raise ValueError(f"not a normalizer state entry: {key!r}")
        (counters if kind == "c" else times).setdefault(m, {})[sig] = value
    return {"version": SNAPSHOT_VERSION, "counters": counters, "times": times, "machines": machines}


def entries_from_snapshot(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The entries (as :meth:`Normalizer.changes` names them) of a whole :meth:`Normalizer.snapshot`."""
    out: dict[str, Any] = {}
    for m, sigs in snapshot.get("counters", {}).items():
        for sig, v in sigs.items():
            out[f"c/{m}/{sig}"] = v
    for m, sigs in snapshot.get("times", {}).items():
        for sig, v in sigs.items():
            out[f"t/{m}/{sig}"] = v
    for m, v in snapshot.get("machines", {}).items():
        out[f"m/{m}"] = v
    return out


def fastest_cycle_s(plant: Plant, machine: Machine) -> float | None:
    """The shortest ideal cycle ``machine`` may run at (see "Counter steps" above), or None."""
    cycles = [machine.ideal_cycle_s] if machine.ideal_cycle_s is not None else []
    if PRODUCT_SIGNAL in machine.signals:
        cycles += [p.ideal_cycle_s for p in plant.products.values()]
    return min(cycles) if cycles else None


def step_allowance(elapsed_ns: int, cycle_s: float, max_step: int) -> int:
    """The largest believable counter step in ``elapsed_ns`` of source time at ``cycle_s``."""
    return max(max_step, math.ceil(elapsed_ns * STEP_MARGIN / (cycle_s * 1e9)))


def _iso(ns: int) -> str:
    try:
        return from_ns(ns).isoformat()
    except (ValueError, OverflowError, OSError):
        return f"{ns} ns since the epoch"


def _int_like(value: object) -> int | None:
    """An int from an int, an integral float or a numeric string; None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        s = value.strip()
        try:
            return int(s)
        except ValueError:
            pass
        try:
            f = float(s)
        except ValueError:
            return None
        return int(f) if math.isfinite(f) and f.is_integer() else None
    return None


class Normalizer:
    """Turns :class:`~core.model.Sample` s into :class:`~core.model.Fact` s for one plant.

    ``clock`` (epoch ns, default :func:`time.time_ns`) is what "now" is for the source-time
    check, ``max_clock_ahead_s`` how far ahead of it a source time may be. Not thread-safe; one
    instance per collector pipeline.
    """

    def __init__(self, plant: Plant, *, clock: Callable[[], int] = time.time_ns,
                 max_clock_ahead_s: float = DEFAULT_MAX_CLOCK_AHEAD_S) -> None:
        if not (max_clock_ahead_s >= 0 and math.isfinite(max_clock_ahead_s)):
            raise ValueError(f"max_clock_ahead_s must be a finite number >= 0, not {max_clock_ahead_s!r}")
        self._plant = plant
        self._clock = clock
        self._ahead_ns = int(max_clock_ahead_s * 1_000_000_000)
        self._machines: dict[str, tuple[str, Machine]] = {m.id: (ln.id, m) for ln, m in plant.machines()}
        self._cycles: dict[str, float | None] = {m.id: fastest_cycle_s(plant, m) for _, m in plant.machines()}
        self._counters: dict[tuple[str, str], _Counter] = {}
        self._times: dict[tuple[str, str], int] = {}
        self._mstate: dict[str, _MachineState] = {}
        self._dirty: set[str] = set()  # entry keys changed since the last changes() (see there)
        self._dirty_times: set[tuple[str, str]] = set()  # the t/ entries among them (one per fact: kept apart)
        # silence (see silent()): collector-clock ns of each machine's last accepted sample, not
        # saved: after a restart the watch starts over from the start, so data a broker kept for
        # a persistent session arrives before anything is declared silent
        self._started_ns = clock()
        self._seen: dict[str, int] = {}

    # ---- public -------------------------------------------------------------------------
    def feed(self, sample: Sample) -> list[Fact]:
        """The facts one sample makes (often none); raises :class:`NormalizeError`."""
        try:
            src_ns = to_ns(sample.time)
        except (ValueError, TypeError, AttributeError) as e:
            self._signal(sample.machine, sample.signal)  # an unknown machine or signal is named first
            if sample.quality == "bad":
                return []
            raise NormalizeError("bad_time", f"{sample.machine}.{sample.signal}: {e}") from None
        return self.feed_ns(sample.machine, sample.signal, sample.value, src_ns, sample.quality)

    def feed_ns(self, machine_id: str, signal: str, value: object, src_ns: int,
                quality: Quality = "good") -> list[Fact]:
        """:meth:`feed` for a sample given by its parts, with its source time in epoch ns: a
        source that reads times as numbers builds no datetime and no :class:`Sample` per value."""
        line, machine, sig = self._signal(machine_id, signal)
        if quality == "bad":
            return []
        now = self._clock()
        if not MIN_SOURCE_NS <= src_ns <= now + self._ahead_ns:
            raise NormalizeError("bad_time", f"{machine.id}.{signal}: source time {self._time_problem(src_ns, now)}")
        facts = self._dispatch(line, machine.id, signal, sig, value, src_ns)
        # an accepted sample is data: a silent machine is back (a refused one leaves it silent)
        self._seen[machine.id] = now
        ms = self._mstate.get(machine.id)
        if ms is not None and ms.before_silence is not None:
            if signal == STATE_SIGNAL:
                ms.before_silence = None  # its own state says where it is now (or that it is offline)
                self._dirty.add(f"m/{machine.id}")
            else:
                facts += self._heard_again(line, machine.id, ms, src_ns)
        return facts

    def _dispatch(self, line: str, machine: str, name: str, sig: Signal, value: object, src_ns: int) -> list[Fact]:
        if name in COUNTER_SIGNALS:
            return self._counter(line, machine, name, sig, value, src_ns)
        if name == STATE_SIGNAL:
            return self._state(line, machine, sig, value, src_ns)
        if name == REASON_SIGNAL:
            return self._reason(line, machine, value, src_ns)
        if name == PRODUCT_SIGNAL:
            return self._product(line, machine, value, src_ns)
        return self._gauge(line, machine, name, sig, value, src_ns)

    def silent(self, machines: Collection[str] | None = None) -> list[Fact]:
        """Machines (of ``machines``, default all) with ``stale_after_s`` and a ``state`` signal
        that have sent no accepted sample for that long (by the collector's clock, counted from
        this normalizer's start at the earliest) become ``offline``: one state fact each, at the
        moment the silence reached ``stale_after_s``. When data returns, the machine is back in
        the state it was in (or the one its new state sample says), stamped at that data's source
        time and never before the offline fact. A machine never heard of has no state to leave."""
        now = self._clock()
        out: list[Fact] = []
        for machine_id in self._machines if machines is None else machines:
            entry = self._machines.get(machine_id)
            if entry is None:
                continue
            line, m = entry
            ms = self._mstate.get(m.id)
            if m.stale_after_s is None or STATE_SIGNAL not in m.signals or ms is None or ms.last is None:
                continue
            if ms.last.state == OFFLINE:
                continue  # silent already, or its source unreachable
            since = max(self._seen.get(m.id, self._started_ns), self._started_ns) + int(m.stale_after_s * 1e9)
            if now < since:
                continue
            t = self._stamp(m.id, STATE_SIGNAL, since)
            ms.before_silence, ms.resume_ns = ms.last.state, None
            ms.last = _StateFact(OFFLINE, None, since, t, by_reason=False)
            self._dirty.add(f"m/{m.id}")
            out.append(Fact("state", t, line, m.id, STATE_SIGNAL, OFFLINE))
        return out

    def _heard_again(self, line: str, machine: str, ms: _MachineState, src_ns: int) -> list[Fact]:
        before, ms.before_silence = ms.before_silence, None
        self._dirty.add(f"m/{machine}")
        last = ms.last
        if before is None or last is None or last.state != OFFLINE:
            return []
        reason = None if before == "running" else ms.reason
        if ms.resume_ns is not None:
            # its source was also unreachable meanwhile: not before it came back (as _state does)
            src_ns, ms.resume_ns = max(src_ns, ms.resume_ns), None
        t = self._stamp(machine, STATE_SIGNAL, src_ns)  # after the offline fact: never backdated over it
        ms.last = _StateFact(before, reason, src_ns, t, by_reason=False)
        log.info("%s: data again after silence; back %s", machine, before)
        return [Fact("state", t, line, machine, STATE_SIGNAL, before, reason=reason)]

    def time_problem(self, src_ns: int) -> str | None:
        """Why a source time (epoch ns) is not sane now, or None when it is."""
        return self._time_problem(src_ns, self._clock())

    def _time_problem(self, src_ns: int, now: int) -> str | None:
        if src_ns < MIN_SOURCE_NS:
            return f"{_iso(src_ns)} is before 2000-01-01"
        latest = now + self._ahead_ns
        if src_ns > latest:
            return (f"{_iso(src_ns)} is more than {self._ahead_ns / 1e9:g}s ahead of the collector's clock "
                    f"({_iso(latest - self._ahead_ns)})")
        return None

    def source_restarted(self, source_id: str) -> None:
        """The PLC behind ``source_id`` restarted: its non-retentive counters now count from 0."""
        for _, m in self._plant.machines_of_source(source_id):
            for name, sig in m.signals.items():
                if name in COUNTER_SIGNALS and not sig.retentive:
                    self._counters.setdefault((m.id, name), _Counter()).restarted = True
                    self._dirty.add(f"c/{m.id}/{name}")

    def source_offline(self, source_id: str, since: datetime) -> list[Fact]:
        """``source_id`` became unreachable at ``since``: its machines (those with a ``state``
        signal) are ``offline`` from then on, one state fact each (none for a machine already
        offline). Reasons reported meanwhile are remembered but make no fact."""
        return self.machines_offline([m.id for _, m in self._plant.machines_of_source(source_id)], since)

    def machines_offline(self, machines: Collection[str], since: datetime) -> list[Fact]:
        """``machines`` (ids; unknown ones are skipped) are unreachable since ``since`` while
        their source stays up (a Sparkplug B device's ``DDEATH``): as :meth:`source_offline`,
        for just these machines."""
        since_ns = to_ns(since)
        out: list[Fact] = []
        for machine_id in machines:
            entry = self._machines.get(machine_id)
            if entry is None:
                continue
            line, m = entry
            if STATE_SIGNAL not in m.signals:
                continue
            ms = self._mstate.setdefault(m.id, _MachineState())
            self._dirty.add(f"m/{m.id}")
            ms.resume_ns = None
            if ms.last is not None and ms.last.state == OFFLINE:
                continue
            t = self._stamp(m.id, STATE_SIGNAL, since_ns)
            ms.last = _StateFact(OFFLINE, None, since_ns, t, by_reason=False)
            out.append(Fact("state", t, line, m.id, STATE_SIGNAL, OFFLINE))
        return out

    def source_online(self, source_id: str, at: datetime) -> None:
        """``source_id`` is reachable again since ``at``: the first state of each of its offline
        machines is stamped no earlier than ``at`` (a value unchanged since before the outage
        carries an old source time, which must not erase the outage)."""
        self.machines_online([m.id for _, m in self._plant.machines_of_source(source_id)], at)

    def machines_online(self, machines: Collection[str], at: datetime) -> None:
        """``machines`` are reachable again since ``at`` (a Sparkplug B device's next ``DBIRTH``):
        as :meth:`source_online`, for just these machines."""
        at_ns = to_ns(at)
        for machine_id in machines:
            ms = self._mstate.get(machine_id)
            if ms is not None and ms.last is not None and ms.last.state == OFFLINE:
                ms.resume_ns = at_ns
                self._dirty.add(f"m/{machine_id}")

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: counter baselines, last fact times, last states, reasons and products."""
        counters: dict[str, dict[str, Any]] = {}
        for (m, s), c in sorted(self._counters.items()):
            counters.setdefault(m, {})[s] = _counter_entry(c)
        times: dict[str, dict[str, int]] = {}
        for (m, s), t in sorted(self._times.items()):
            times.setdefault(m, {})[s] = t
        machines = {m: _machine_entry(ms) for m, ms in sorted(self._mstate.items())}
        return {"version": SNAPSHOT_VERSION, "counters": counters, "times": times, "machines": machines}

    def changes(self) -> dict[str, Any]:
        """The state entries changed since the last call, as ``{key: JSON-able value}``: keys
        ``c/<machine>/<signal>`` (a counter), ``t/<machine>/<signal>`` (the last fact time of a
        signal), ``m/<machine>`` (state, reason, product). Kept as rows by key (replacing older
        values), they add up to the whole state: :func:`snapshot_from_entries` turns them into a
        :meth:`snapshot`. A collector saves these with every spool commit, so what it writes
        grows with what changed, not with the size of the plant."""
        out: dict[str, Any] = {}
        for key in sorted(self._dirty):
            kind, _, rest = key.partition("/")
            if kind == "m":
                ms = self._mstate.get(rest)
                if ms is not None:
                    out[key] = _machine_entry(ms)
                continue
            m, _, sig = rest.partition("/")
            if kind == "c":
                c = self._counters.get((m, sig))
                if c is not None:
                    out[key] = _counter_entry(c)
            else:
                # None: forgotten (see _drop_future), so the saved row stops holding the old time
                out[key] = self._times.get((m, sig))
        times = self._times
        for m, sig in self._dirty_times:
            out[f"t/{m}/{sig}"] = times.get((m, sig))
        self._dirty.clear()
        self._dirty_times.clear()
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot`; entries for machines no longer in the plant are dropped.

        Raises ``ValueError`` for a snapshot this version cannot read."""
        if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"not a normalizer snapshot of version {SNAPSHOT_VERSION}")
        counters: dict[tuple[str, str], _Counter] = {}
        times: dict[tuple[str, str], int] = {}
        mstate: dict[str, _MachineState] = {}
        try:
            for m, sigs in state["counters"].items():
                for s, c in sigs.items():
                    if self._known(m, s):
                        last = c["last"]
                        src = c.get("src_ns")
                        counters[(m, s)] = _Counter(None if last is None else int(last), bool(c["restarted"]),
                                                    None if src is None else int(src))
            for m, sigs in state["times"].items():
                for s, t in sigs.items():
                    if self._known(m, s) and t is not None:
                        times[(m, s)] = int(t)
            for m, d in state["machines"].items():
                if m not in self._machines:
                    continue
                ls = d["last_state"]
                last = None
                if ls is not None:
                    last = _StateFact(str(ls["state"]), None if ls["reason"] is None else int(ls["reason"]),
                                      int(ls["src_ns"]), int(ls["time_ns"]), bool(ls["by_reason"]))
                reason = d["reason"]
                product = d["product"]
                resume = d.get("resume_ns")
                silent = d.get("before_silence")  # absent from states saved before silence was watched
                mstate[m] = _MachineState(None if reason is None else int(reason), last,
                                          None if product is None else str(product),
                                          None if resume is None else int(resume),
                                          None if silent is None else str(silent))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed normalizer snapshot: {e!r}") from None
        dropped = self._drop_future(counters, times, mstate)
        self._counters, self._times, self._mstate = counters, times, mstate
        self._dirty.clear()
        self._dirty_times.clear()
        self._dirty.update(dropped)  # saved again without them with the next commit

    def _drop_future(self, counters: dict[tuple[str, str], _Counter], times: dict[tuple[str, str], int],
                     mstate: dict[str, _MachineState]) -> set[str]:
        """Forget the times of a saved state that lie beyond what :meth:`time_problem` accepts now
        (saved by a version that took any source time): kept, they would stamp every later fact
        of their signal after them. Returns the entry keys it changed."""
        latest = self._clock() + self._ahead_ns
        changed: set[str] = set()
        for (m, s), t in list(times.items()):
            if t > latest:
                del times[(m, s)]
                changed.add(f"t/{m}/{s}")
        for (m, s), c in counters.items():
            if c.src_ns is not None and c.src_ns > latest:
                c.src_ns = None
                changed.add(f"c/{m}/{s}")
        for m, ms in mstate.items():
            if ms.last is not None and max(ms.last.src_ns, ms.last.time_ns) > latest:
                ms.last = None  # the next state sample makes a fact, as after a fresh start
                changed.add(f"m/{m}")
            if ms.resume_ns is not None and ms.resume_ns > latest:
                ms.resume_ns = None
                changed.add(f"m/{m}")
        if changed:
            log.warning("saved normalizer state held %d entries with times beyond %s (a bad clock seen by an "
                        "older version); they are forgotten so later facts keep their own times",
                        len(changed), _iso(latest))
        return changed

    # ---- helpers ------------------------------------------------------------------------
    def _signal(self, machine_id: str, signal: str) -> tuple[str, Machine, Signal]:
        """(line id, machine, signal spec) of a sample, or :class:`NormalizeError` naming what is unknown."""
        entry = self._machines.get(machine_id)
        if entry is None:
            raise NormalizeError("unknown_machine", f"unknown machine '{machine_id}' (not in the plant file)")
        line, machine = entry
        sig = machine.signals.get(signal)
        if sig is None:
            raise NormalizeError("unknown_signal",
                                 f"machine '{machine.id}' has no signal '{signal}' in the plant file")
        return line, machine, sig

    def _known(self, machine: str, signal: str) -> bool:
        entry = self._machines.get(machine)
        return entry is not None and signal in entry[1].signals

    def _stamp(self, machine: str, signal: str, src_ns: int) -> int:
        key = (machine, signal)
        prev = self._times.get(key)
        t = src_ns if prev is None or src_ns > prev else prev + 1
        self._times[key] = t
        self._dirty_times.add(key)
        return t

    def _counter(self, line: str, machine: str, name: str, sig: Signal, value: object, src_ns: int) -> list[Fact]:
        new = _int_like(value)
        bits = sig.counter_bits or 64
        if new is None or new < 0 or new >= 1 << bits:
            raise NormalizeError("bad_value", f"{machine}.{name}: {value!r} is not a {bits}-bit counter value")
        c = self._counters.setdefault((machine, name), _Counter())
        self._dirty.add(f"c/{machine}/{name}")
        if (c.src_ns is not None and src_ns < c.src_ns and not c.restarted and c.last is not None
                and not 0 < (new - c.last) % (1 << bits) <= sig.max_step):
            # an older value than the one we have that does not count on from it: a QoS 1
            # re-delivery after a reconnect, or a late message. Counters are cumulative, so the
            # newer value already holds its count; reading it as a reset would count it again.
            # (A plausible step with an older time is a PLC clock set back: it counts.)
            return []
        old, restarted, old_ns = c.last, c.restarted, c.src_ns
        c.last, c.restarted, c.src_ns = new, False, src_ns
        if restarted:
            inc = new
        elif old is None:
            return []  # baseline
        elif new >= old:
            inc = new - old
        else:
            wrapped = (new - old) % (1 << bits)
            inc = wrapped if wrapped <= sig.max_step else new
        if inc == 0:
            return []
        elapsed_ns = 0 if old_ns is None else max(0, src_ns - old_ns)
        problem = self._implausible(inc, elapsed_ns, self._cycles.get(machine), sig.max_step)
        if problem is not None:
            # the new value is the baseline now (set above): the counts after it are right again
            was = "restart" if restarted else old
            raise NormalizeError("implausible_step", f"{machine}.{name}: {was} -> {new} {problem}; "
                                 "taken as the new baseline, no parts counted")
        return [Fact("count", self._stamp(machine, name, src_ns), line, machine, name, inc)]

    @staticmethod
    def _implausible(inc: int, elapsed_ns: int, cycle_s: float | None, max_step: int) -> str | None:
        """Why an increment made in ``elapsed_ns`` of source time cannot be production, or None."""
        if inc > MAX_INCREMENT:
            return f"is a step of {inc}, more than a signed 64-bit integer holds"
        if cycle_s is not None:
            allowed = step_allowance(elapsed_ns, cycle_s, max_step)
            if inc > allowed:
                return (f"is a step of {inc} in {elapsed_ns / 1e9:g}s, more than the {allowed} a machine with a "
                        f"{cycle_s:g}s ideal cycle can make (x{STEP_MARGIN:g}, at least max_step {max_step})")
        return None

    def _state(self, line: str, machine: str, sig: Signal, value: object, src_ns: int) -> list[Fact]:
        code = _int_like(value)
        if code is None:
            raise NormalizeError("bad_value", f"{machine}.state: {value!r} is not a state code")
        state = (sig.map or {}).get(code)
        if state is None:
            known = ", ".join(f"{k}: {v}" for k, v in sorted((sig.map or {}).items()))
            raise NormalizeError("unmapped_state", f"{machine}.state: code {code} is not in the map ({known})")
        ms = self._mstate.setdefault(machine, _MachineState())
        self._dirty.add(f"m/{machine}")
        reason = None if state == "running" else ms.reason
        last = ms.last
        if last is not None and last.state == OFFLINE and state != OFFLINE:
            if ms.resume_ns is not None:
                src_ns = max(src_ns, ms.resume_ns)
            ms.resume_ns = None
        if last is not None and last.state == state and last.reason == reason:
            return []
        if last is not None and last.by_reason and last.src_ns == src_ns:
            # the reason of this very event came first and already made a fact at this time: replace it
            t = last.time_ns
        else:
            t = self._stamp(machine, STATE_SIGNAL, src_ns)
        ms.last = _StateFact(state, reason, src_ns, t, by_reason=False)
        return [Fact("state", t, line, machine, STATE_SIGNAL, state, reason=reason)]

    def _reason(self, line: str, machine: str, value: object, src_ns: int) -> list[Fact]:
        if value is None or (isinstance(value, str) and not value.strip()):
            code: int | None = None
        else:
            code = _int_like(value)
            if code is None or code < 0:
                raise NormalizeError("bad_value", f"{machine}.reason: {value!r} is not a reason code")
            code = code or None
        ms = self._mstate.setdefault(machine, _MachineState())
        self._dirty.add(f"m/{machine}")
        ms.reason = code
        last = ms.last
        if last is None or last.state == OFFLINE:
            return []  # remembered for the first state fact (after the outage)
        reason = None if last.state == "running" else code
        if reason == last.reason:
            return []
        if src_ns <= last.src_ns:
            # the reason of the event that made the last state fact: overwrite that fact (same key)
            ms.last = _StateFact(last.state, reason, last.src_ns, last.time_ns, last.by_reason)
            return [Fact("state", last.time_ns, line, machine, STATE_SIGNAL, last.state, reason=reason)]
        t = self._stamp(machine, STATE_SIGNAL, src_ns)
        ms.last = _StateFact(last.state, reason, src_ns, t, by_reason=True)
        return [Fact("state", t, line, machine, STATE_SIGNAL, last.state, reason=reason)]

    def _product(self, line: str, machine: str, value: object, src_ns: int) -> list[Fact]:
        if isinstance(value, bool):
            raise NormalizeError("bad_value", f"{machine}.product: {value!r} is not a product code")
        if isinstance(value, float):
            if not math.isfinite(value):
                raise NormalizeError("bad_value", f"{machine}.product: {value!r} is not a product code")
            code = str(int(value)) if value.is_integer() else repr(value)
        else:
            code = str(value).strip()
        ms = self._mstate.setdefault(machine, _MachineState())
        self._dirty.add(f"m/{machine}")
        if ms.product == code:
            return []
        ms.product = code
        return [Fact("product", self._stamp(machine, PRODUCT_SIGNAL, src_ns), line, machine, PRODUCT_SIGNAL, code)]

    def _gauge(self, line: str, machine: str, name: str, sig: Signal, value: object, src_ns: int) -> list[Fact]:
        try:
            if type(value) is float:  # what sources hand over for a gauge (coerce_value)
                v = value
            elif isinstance(value, str):
                v = float(value.strip())
            elif isinstance(value, int | float):
                v = float(value)
            else:
                raise ValueError
        except ValueError:
            raise NormalizeError("bad_value", f"{machine}.{name}: {value!r} is not a number") from None
        if not math.isfinite(v):
            raise NormalizeError("bad_value", f"{machine}.{name}: {value!r} is not a finite number")
        return [Fact("gauge", self._stamp(machine, name, src_ns), line, machine, name, v, unit=sig.unit)]
