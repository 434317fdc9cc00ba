"""The ground-truth ledger: what the simulated plant really did, as JSONL.

One object a line, times ISO-8601 UTC to the millisecond with 'Z' (docs/architecture.md, "Time and
formats"):

    {"t": "...", "line": "...", "machine": "...", "kind": "part", "good": true, "product": "..."}
    {"t": "...", "line": "...", "machine": "...", "kind": "state", "state": "down", "reason": 20}

``product`` is there only for machines with a ``product`` signal, ``reason`` only when there is
one. The state of every machine at the start of a run is recorded too. The reader keeps records
of other kinds (``fault``, later) and the summarizer ignores them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from core.model import CANONICAL_STATES
from core.plant import Plant, label
from simulators.model import Event, iso_ms, to_ms


def ledger_record(event: Event) -> dict[str, Any] | None:
    """The ledger object of an event, or None for events the ledger does not hold (gauges, products)."""
    if event.kind == "part":
        rec: dict[str, Any] = {"t": iso_ms(event.t_ms), "line": event.line, "machine": event.machine,
                               "kind": "part", "good": bool(event.good)}
        if event.product is not None:
            rec["product"] = event.product
        return rec
    if event.kind == "state":
        rec = {"t": iso_ms(event.t_ms), "line": event.line, "machine": event.machine, "kind": "state",
               "state": event.state}
        if event.reason is not None:
            rec["reason"] = event.reason
        return rec
    return None


def ledger_line(event: Event) -> str | None:
    rec = ledger_record(event)
    return None if rec is None else json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n"


class LedgerWriter:
    """Writes ledger lines to a file; ``flush_each`` makes every line visible at once (live mode)."""

    def __init__(self, path: Path, *, flush_each: bool = False) -> None:
        self.path = Path(path)
        self.flush_each = flush_each
        self._f: IO[str] | None = None
        self.records = 0

    def open(self) -> LedgerWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8", newline="\n")
        return self

    def write(self, event: Event) -> None:
        line = ledger_line(event)
        if line is None:
            return
        if self._f is None:
            raise RuntimeError("ledger is not open")
        self._f.write(line)
        self.records += 1
        if self.flush_each:
            self._f.flush()

    def write_fault(self, t_ms: int, fields: dict[str, Any]) -> None:
        """A ``{"t", "kind": "fault", "fault", ...}`` record (see simulators.faults)."""
        if self._f is None:
            raise RuntimeError("ledger is not open")
        rec = {"t": iso_ms(t_ms), "kind": "fault", **fields}
        self._f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.records += 1
        if self.flush_each:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> LedgerWriter:
        return self.open()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# ---- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    t_ms: int
    kind: str
    line: str | None = None
    machine: str | None = None
    good: bool | None = None
    product: str | None = None
    state: str | None = None
    reason: int | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the whole object, for kinds added later


def parse_time_ms(text: str) -> int:
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError(f"ledger time without offset: {text}")
    return to_ms(t)


def iter_ledger(path: Path) -> Iterator[LedgerRecord]:
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                yield LedgerRecord(
                    t_ms=parse_time_ms(obj["t"]), kind=str(obj["kind"]), line=obj.get("line"),
                    machine=obj.get("machine"), good=obj.get("good"), product=obj.get("product"),
                    state=obj.get("state"), reason=obj.get("reason"), data=obj)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a ledger record: {e}") from None


def read_ledger(path: Path) -> list[LedgerRecord]:
    return list(iter_ledger(path))


# ---- the oracle ---------------------------------------------------------------------------------


@dataclass
class MachineTotals:
    line: str | None = None
    good: int = 0
    scrap: int = 0
    state_s: dict[str, float] = field(default_factory=dict)  # seconds in each state inside the window
    reason_s: dict[int, float] = field(default_factory=dict)  # seconds with each stop reason inside it
    # exact sums, in milliseconds (the seconds above are made from these once, at the end)
    state_ms: dict[str, int] = field(default_factory=dict, repr=False)
    reason_ms: dict[int, int] = field(default_factory=dict, repr=False)


@dataclass
class Summary:
    start_ms: int
    end_ms: int
    machines: dict[str, MachineTotals] = field(default_factory=dict)

    def good(self, machine: str) -> int:
        m = self.machines.get(machine)
        return m.good if m else 0

    def scrap(self, machine: str) -> int:
        m = self.machines.get(machine)
        return m.scrap if m else 0

    def state_s(self, machine: str, state: str) -> float:
        m = self.machines.get(machine)
        return m.state_s.get(state, 0.0) if m else 0.0

    def reason_s(self, machine: str, reason: int) -> float:
        m = self.machines.get(machine)
        return m.reason_s.get(reason, 0.0) if m else 0.0


def summarize(records: Iterable[LedgerRecord], start: datetime | int, end: datetime | int) -> Summary:
    """Good and scrap parts per machine with ``start <= t < end``, and the seconds each machine
    spent in each state, and with each stop reason, inside ``[start, end)``.

    A state lasts until the machine's next state record; the last one lasts until ``end`` (so
    ``end`` should not lie past the end of the run that wrote the ledger). A state that began
    before the window counts from the window's start. Time before a machine's first state record
    is not counted. Machines are in the order they first appear in the ledger.
    """
    s = start if isinstance(start, int) else to_ms(start)
    e = end if isinstance(end, int) else to_ms(end)
    out = Summary(s, e)
    current: dict[str, tuple[int, str, int | None]] = {}

    def totals(r: LedgerRecord) -> MachineTotals:
        assert r.machine is not None
        tot = out.machines.setdefault(r.machine, MachineTotals())
        if tot.line is None:
            tot.line = r.line
        return tot

    def close(machine: str, until: int) -> None:
        since, state, reason = current[machine]
        a, b = max(since, s), min(until, e)
        if b > a:
            tot = out.machines[machine]
            tot.state_ms[state] = tot.state_ms.get(state, 0) + (b - a)
            if reason is not None:
                tot.reason_ms[reason] = tot.reason_ms.get(reason, 0) + (b - a)

    for r in sorted(records, key=lambda r: r.t_ms):  # stable: equal times keep file order
        if r.machine is None:
            continue
        if r.kind == "part":
            tot = totals(r)
            if s <= r.t_ms < e:
                if r.good:
                    tot.good += 1
                else:
                    tot.scrap += 1
        elif r.kind == "state" and r.state is not None:
            totals(r)
            if r.machine in current:
                close(r.machine, r.t_ms)
            current[r.machine] = (r.t_ms, r.state, r.reason)
    for m in current:
        close(m, e)
    for tot in out.machines.values():
        tot.state_s = {k: v / 1000.0 for k, v in tot.state_ms.items()}
        tot.reason_s = {k: v / 1000.0 for k, v in sorted(tot.reason_ms.items())}
    return out


def summarize_file(path: Path, start: datetime | int, end: datetime | int) -> Summary:
    return summarize(iter_ledger(path), start, end)


# ---- `mieruka truth summarize` ------------------------------------------------------------------


def summary_dict(summary: Summary, plant: Plant | None = None) -> dict[str, Any]:
    """The JSON shape of ``mieruka truth summarize --json`` (README, "Ground-truth ledger tools").

    ``machines``: every machine of the ledger (with a plant: the plant's machines first, in plant
    order), each with ``good``, ``scrap``, ``states`` (seconds in every canonical state, zeros
    included) and ``reasons`` (seconds per stop-reason code, as a string key). ``lines`` only
    with a plant, which says which machines are a line's output: ``good`` is the output
    machines' good, ``scrap`` all its machines' scrap.
    """
    order = list(summary.machines)
    lines_of: dict[str, str | None] = {m: t.line for m, t in summary.machines.items()}
    if plant is not None:
        in_plant = [m.id for _, m in plant.machines()]
        known = set(in_plant)
        order = in_plant + [m for m in order if m not in known]
        for line, m in plant.machines():
            if lines_of.get(m.id) is None:
                lines_of[m.id] = line.id
    machines = []
    for mid in order:
        tot = summary.machines.get(mid, MachineTotals())
        states: dict[str, float] = {st: tot.state_s.get(st, 0.0) for st in CANONICAL_STATES}
        states.update({st: v for st, v in tot.state_s.items() if st not in states})
        machines.append({"machine": mid, "line": lines_of.get(mid), "good": tot.good, "scrap": tot.scrap,
                         "states": states, "reasons": {str(k): v for k, v in tot.reason_s.items()}})
    out: dict[str, Any] = {"start": iso_ms(summary.start_ms), "end": iso_ms(summary.end_ms),
                           "seconds": (summary.end_ms - summary.start_ms) / 1000.0, "machines": machines}
    if plant is not None:
        out["lines"] = [{"line": ln.id, "output": [m.id for m in ln.output_machines],
                         "good": sum(summary.good(m.id) for m in ln.output_machines),
                         "scrap": sum(summary.scrap(m.id) for m in ln.machines)} for ln in plant.lines]
    return out


def summary_text(summary: Summary, plant: Plant | None = None) -> str:
    """The readable form of :func:`summary_dict`: a table of lines (with a plant), a table of
    machines (parts and seconds per state) and each machine's seconds per stop reason."""
    d = summary_dict(summary, plant)
    seconds = f"{d['seconds']:.3f}".rstrip("0").rstrip(".")
    out = [f"ground truth {d['start']} .. {d['end']} ({seconds} s)", ""]
    if "lines" in d:
        w = max([4, *(len(ln["line"]) for ln in d["lines"])])
        out.append(f"{'line':<{w}}  {'good':>7}  {'scrap':>6}  output")
        for ln in d["lines"]:
            out.append(f"{ln['line']:<{w}}  {ln['good']:>7}  {ln['scrap']:>6}  {', '.join(ln['output'])}")
    else:
        out.append("(line figures need --plant: the ledger does not say which machine is a line's output)")
    out.append("")
    states = list(dict.fromkeys(st for m in d["machines"] for st in m["states"]))
    wm = max([7, *(len(m["machine"]) for m in d["machines"])])
    wl = max([4, *(len(m["line"] or "-") for m in d["machines"])])
    out.append(f"{'machine':<{wm}}  {'line':<{wl}}  {'good':>7}  {'scrap':>6}  "
               + "  ".join(f"{st:>10}" for st in states) + "   (seconds)")
    for m in d["machines"]:
        out.append(f"{m['machine']:<{wm}}  {m['line'] or '-':<{wl}}  {m['good']:>7}  {m['scrap']:>6}  "
                   + "  ".join(f"{m['states'][st]:>10.1f}" for st in states))
    out.append("")
    out.append("stop reasons (seconds)")
    for m in d["machines"]:
        parts = []
        for code, sec in m["reasons"].items():
            name = ""
            if plant is not None and int(code) in plant.reasons:
                name = f" {label(plant.reasons[int(code)].name, plant.site.locale, code)}"
            parts.append(f"{code}{name}: {sec:.1f}")
        out.append(f"{m['machine']:<{wm}}  " + ("; ".join(parts) if parts else "-"))
    return "\n".join(out) + "\n"
