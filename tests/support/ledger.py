"""The test oracle: reads the simulators' ground-truth ledger (DESIGN.md format) independently of core/."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
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
