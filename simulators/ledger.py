"""The ground-truth ledger: what the simulated plant really did, as JSONL.

One object a line, times ISO-8601 UTC to the millisecond with 'Z' (see DESIGN.md, "Time and
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
    good: int = 0
    scrap: int = 0
    state_s: dict[str, float] = field(default_factory=dict)  # seconds in each state inside the window


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


def summarize(records: Iterable[LedgerRecord], start: datetime | int, end: datetime | int) -> Summary:
    """Good and scrap parts per machine with ``start <= t < end``, and the seconds each machine
    spent in each state inside ``[start, end)``.

    A state lasts until the machine's next state record; the last one lasts until ``end`` (so
    ``end`` should not lie past the end of the run that wrote the ledger). Time before a
    machine's first state record is not counted.
    """
    s = start if isinstance(start, int) else to_ms(start)
    e = end if isinstance(end, int) else to_ms(end)
    out = Summary(s, e)
    current: dict[str, tuple[int, str]] = {}

    def close(machine: str, until: int) -> None:
        since, state = current[machine]
        a, b = max(since, s), min(until, e)
        if b > a:
            tot = out.machines.setdefault(machine, MachineTotals())
            tot.state_s[state] = tot.state_s.get(state, 0.0) + (b - a) / 1000.0

    for r in sorted(records, key=lambda r: r.t_ms):  # stable: equal times keep file order
        if r.machine is None:
            continue
        if r.kind == "part":
            tot = out.machines.setdefault(r.machine, MachineTotals())
            if s <= r.t_ms < e:
                if r.good:
                    tot.good += 1
                else:
                    tot.scrap += 1
        elif r.kind == "state" and r.state is not None:
            out.machines.setdefault(r.machine, MachineTotals())
            if r.machine in current:
                close(r.machine, r.t_ms)
            current[r.machine] = (r.t_ms, r.state)
    for m in current:
        close(m, e)
    return out


def summarize_file(path: Path, start: datetime | int, end: datetime | int) -> Summary:
    return summarize(iter_ledger(path), start, end)
