"""The test oracle: reads the simulators' ground-truth ledger (docs/architecture.md) independently of core/."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def parse_t(s: str) -> datetime:
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    assert t.tzinfo is not None, f"ledger time without offset: {s}"
    return t


def read_ledger(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            rec["_t"] = parse_t(rec["t"])
            out.append(rec)
    return out


@dataclass
class PartCounts:
    good: Counter[str] = field(default_factory=Counter)
    scrap: Counter[str] = field(default_factory=Counter)


def part_counts(records: list[dict[str, Any]], start: datetime, end: datetime) -> PartCounts:
    """Good and scrap parts per machine with start <= t < end."""
    c = PartCounts()
    for r in records:
        if r.get("kind") == "part" and start <= r["_t"] < end:
            (c.good if r["good"] else c.scrap)[r["machine"]] += 1
    return c


def line_totals(records: list[dict[str, Any]], start: datetime, end: datetime,
                output: str, machines: list[str]) -> tuple[int, int]:
    """A line's good (its output machine's) and scrap (all its machines') in [start, end)."""
    c = part_counts(records, start, end)
    return c.good[output], sum(c.scrap[m] for m in machines)


def last_time(records: list[dict[str, Any]]) -> datetime | None:
    return max((r["_t"] for r in records), default=None)


# ---- state stretches and product counts (written for the tests, independent of core/) -------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(t: datetime) -> int:
    """Exact epoch milliseconds of an aware datetime (ledger times are whole milliseconds)."""
    return (t - _EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class LedgerStretch:
    """A machine's (state, reason) from ``since_ms`` until its next different state record
    (``until_ms`` None: still in it when the ledger ends)."""

    since_ms: int
    until_ms: int | None
    state: str
    reason: int | None


def state_stretches(records: list[dict[str, Any]], machine: str) -> list[LedgerStretch]:
    """The machine's state stretches in ledger order; repeated identical records make one stretch."""
    changes: list[tuple[int, str, int | None]] = []
    for r in sorted((r for r in records if r.get("kind") == "state" and r.get("machine") == machine),
                    key=lambda r: r["_t"]):
        key = (r["state"], r.get("reason"))
        if changes and (changes[-1][1], changes[-1][2]) == key:
            continue
        changes.append((ms(r["_t"]), *key))
    return [LedgerStretch(t, changes[i + 1][0] if i + 1 < len(changes) else None, st, rs)
            for i, (t, st, rs) in enumerate(changes)]


def clipped_ms(s: LedgerStretch, start: datetime, end: datetime) -> int:
    """Milliseconds of a stretch inside ``[start, end)``."""
    until = ms(end) if s.until_ms is None else min(s.until_ms, ms(end))
    return max(0, until - max(s.since_ms, ms(start)))


def state_seconds_between(records: list[dict[str, Any]], machine: str, start: datetime,
                          end: datetime) -> tuple[dict[str, float], dict[tuple[str, int | None], float]]:
    """Seconds per state and per (state, reason) of one machine inside ``[start, end)``."""
    by_state: Counter[str] = Counter()
    by_reason: Counter[tuple[str, int | None]] = Counter()
    for s in state_stretches(records, machine):
        n = clipped_ms(s, start, end)
        if n:
            by_state[s.state] += n
            by_reason[(s.state, s.reason)] += n
    return ({k: v / 1000 for k, v in by_state.items()}, {k: v / 1000 for k, v in by_reason.items()})


def parts_by_product(records: list[dict[str, Any]], machine: str, start: datetime,
                     end: datetime) -> dict[str | None, tuple[int, int]]:
    """(good, scrap) per product of one machine's parts with start <= t < end."""
    good: Counter[str | None] = Counter()
    scrap: Counter[str | None] = Counter()
    for r in records:
        if r.get("kind") == "part" and r.get("machine") == machine and start <= r["_t"] < end:
            (good if r["good"] else scrap)[r.get("product")] += 1
    return {p: (good[p], scrap[p]) for p in set(good) | set(scrap)}


def micro_flags(stretches: list[LedgerStretch], micro_ms: float) -> list[bool]:
    """Per stretch: is it part of a micro-stop? A stop runs from a non-running state to the next
    running or planned one, whatever states and reasons change inside; it is a micro-stop when only
    down/idle and shorter than ``micro_ms`` as a whole (a stop still open when the ledger ends is not)."""
    out = [False] * len(stretches)
    i = 0
    while i < len(stretches):
        if stretches[i].state in ("running", "planned"):
            i += 1
            continue
        j = i
        while j + 1 < len(stretches) and stretches[j + 1].state not in ("running", "planned"):
            j += 1
        until = stretches[j].until_ms
        micro = (until is not None and until - stretches[i].since_ms < micro_ms
                 and all(x.state in ("down", "idle") for x in stretches[i:j + 1]))
        for k in range(i, j + 1):
            out[k] = micro
        i = j + 1
    return out


Run = tuple[str, datetime, datetime | None]  # machine, down from, until (None: still down)


def down_runs(records: list[dict[str, Any]]) -> list[Run]:
    """Each machine's stretches of `down` (whatever the reasons inside) per the ledger."""
    out: list[Run] = []
    open_: dict[str, datetime] = {}
    for r in records:
        if r.get("kind") != "state":
            continue
        m, down = r["machine"], r["state"] == "down"
        if down and m not in open_:
            open_[m] = r["_t"]
        elif not down and m in open_:
            out.append((m, open_.pop(m), r["_t"]))
    out.extend((m, t, None) for m, t in open_.items())
    return out
