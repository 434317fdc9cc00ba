"""Import raw samples from a file through the same normalize → store path as live data.

Files (docs/architecture.md, "Time and formats"): CSV with the header ``time,machine,signal,value``
(``.csv``), or JSON Lines with those keys (``.jsonl`` / ``.json``). Times are ISO-8601 *with* an
offset; a time without one is a bad row.

Two passes, so a bad file stores nothing:

1. every row is parsed and checked against the plant (known machine and signal, a value of the
   right type for the signal, a state code in the map, time not going backwards for its signal)
   and dry-run through a throwaway normalizer with the collector's checks (source time from 2000
   to ``max_clock_ahead_s`` past now, counter steps that fit 64 bits), and every fact it makes
   through the stores' own fact check: a row that would fail at write time fails here, before
   anything is written. Bad rows are collected with their line numbers;
2. if there are bad rows and not ``skip_bad``, :class:`ImportRejected` is raised and nothing is
   written; otherwise the good rows go through a fresh :class:`~core.normalize.Normalizer` and
   ``store.write`` in batches.

As with a collector that starts without saved state, each counter's first value in the file is
its baseline. A ``StoreUnavailable`` during pass 2 propagates: batches already written stay (writes
are idempotent by key, so importing the same file again is safe).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from collector.sources import BadValue, coerce_value, signal_kind
from core.model import Fact, Sample
from core.normalize import DEFAULT_MAX_CLOCK_AHEAD_S, NormalizeError, Normalizer
from core.plant import Plant
from core.store.base import Store, fact_problem

HEADER = ("time", "machine", "signal", "value")
SOURCE = "import"


@dataclass
class ImportReport:
    rows: int = 0  # data rows read (blank JSONL lines are not rows)
    imported: int = 0  # rows fed to the normalizer
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason) of bad rows
    facts_written: int = 0


class ImportRejected(Exception):
    """The file has bad rows and ``skip_bad`` was not given: nothing was stored."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report
        first = "; ".join(f"line {n}: {why}" for n, why in report.skipped[:3])
        more = f" (and {len(report.skipped) - 3} more)" if len(report.skipped) > 3 else ""
        super().__init__(f"{len(report.skipped)} bad rows of {report.rows}: {first}{more}")


class ImportFileError(ValueError):
    """The file as a whole cannot be read (unknown extension, wrong CSV header, not UTF-8)."""


async def import_samples(
    plant: Plant, store: Store, path: Path, *, skip_bad: bool = False, batch_size: int = 5000,
    max_clock_ahead_s: float = DEFAULT_MAX_CLOCK_AHEAD_S, clock: Callable[[], int] = time.time_ns,
) -> ImportReport:
    """Validate then import ``path``; see the module docstring. Raises :class:`ImportRejected`
    (nothing stored) or :class:`ImportFileError`."""
    path = Path(path)
    report = ImportReport()
    bad: set[int] = set()
    fed: set[int] = set()  # bad rows the dry run fed to its normalizer (they may have moved a baseline)
    # one "now" for both passes, so they judge every row alike
    now = clock()
    check = _Checker(plant, lambda: now, max_clock_ahead_s)
    for line_no, sample, error in _rows(path, plant):
        report.rows += 1
        if error is None:
            assert sample is not None
            error, was_fed = check(sample)
            if error is not None and was_fed:
                fed.add(line_no)
        if error is not None:
            report.skipped.append((line_no, error))
            bad.add(line_no)
    if report.skipped and not skip_bad:
        raise ImportRejected(report)

    normalizer = Normalizer(plant, clock=lambda: now, max_clock_ahead_s=max_clock_ahead_s)
    batch: list[Fact] = []
    for line_no, sample, _ in _rows(path, plant):
        if sample is None or (line_no in bad and line_no not in fed):
            continue
        try:
            facts = normalizer.feed(sample)
        except Exception as e:
            if line_no not in bad:  # cannot happen after the dry run; keep the report honest if it does
                report.skipped.append((line_no, str(e)))
            continue
        if line_no in bad:
            continue  # fed as in the dry run (same baselines), but its facts are not stored
        report.imported += 1
        batch.extend(facts)
        if len(batch) >= batch_size:
            await store.write(batch)
            report.facts_written += len(batch)
            batch = []
    if batch:
        await store.write(batch)
        report.facts_written += len(batch)
    report.skipped.sort()
    return report


class _Checker:
    """Pass-1 checks that need history: time order per signal, a dry-run normalizer, and the
    stores' check of every fact it makes."""

    def __init__(self, plant: Plant, clock: Callable[[], int], max_clock_ahead_s: float) -> None:
        self._dry = Normalizer(plant, clock=clock, max_clock_ahead_s=max_clock_ahead_s)
        self._last: dict[tuple[str, str], datetime] = {}

    def __call__(self, s: Sample) -> tuple[str | None, bool]:
        """(why the row is bad or None, whether it went through the dry-run normalizer)."""
        key = (s.machine, s.signal)
        prev = self._last.get(key)
        if prev is not None and s.time < prev:
            # counters become increments in row order: rows out of order would count garbage
            return (f"time {s.time.isoformat()} goes back before {prev.isoformat()} "
                    f"of the previous {s.machine}.{s.signal} row"), False
        try:
            facts = self._dry.feed(s)
        except NormalizeError as e:
            return e.message, True
        except Exception as e:  # a row nobody foresaw is a bad row, not a traceback
            return f"{s.machine}.{s.signal}: cannot be normalized: {type(e).__name__}: {e}", True
        for f in facts:
            problem = fact_problem(f)
            if problem is not None:
                return f"{s.machine}.{s.signal}: no store can hold its fact: {problem}", True
        self._last[key] = s.time
        return None, False


def _rows(path: Path, plant: Plant) -> Iterator[tuple[int, Sample | None, str | None]]:
    """(line number, sample or None, reason it is bad or None) per data row."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path, plant)
    elif suffix in (".jsonl", ".json"):
        yield from _jsonl_rows(path, plant)
    else:
        raise ImportFileError(f"{path}: unknown file type '{path.suffix}'; use .csv or .jsonl")


def _csv_rows(path: Path, plant: Plant) -> Iterator[tuple[int, Sample | None, str | None]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if sorted(header) != sorted(HEADER):
                raise ImportFileError(f"{path}: line 1: the header must be '{','.join(HEADER)}' "
                                      f"(any order), got {','.join(header)!r}")
            col = [header.index(k) for k in HEADER]
            for row in reader:
                line_no = reader.line_num  # the row's last physical line (quoted newlines)
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 4:
                    yield line_no, None, f"expected 4 columns (time,machine,signal,value), got {len(row)}"
                    continue
                yield (line_no, *_sample(plant, *(row[i] for i in col)))
    except UnicodeDecodeError as e:
        raise ImportFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _jsonl_rows(path: Path, plant: Plant) -> Iterator[tuple[int, Sample | None, str | None]]:
    try:
        with path.open(encoding="utf-8-sig") as f:
            for line_no, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except ValueError as e:
                    yield line_no, None, f"not JSON: {e}"
                    continue
                if not isinstance(obj, dict):
                    yield line_no, None, "not a JSON object"
                    continue
                missing = [k for k in HEADER if k not in obj]
                if missing:
                    yield line_no, None, f"missing key(s) {', '.join(missing)}"
                    continue
                extra = sorted(set(obj) - set(HEADER))
                if extra:
                    yield line_no, None, f"unknown key(s) {', '.join(extra)}"
                    continue
                yield (line_no, *_sample(plant, obj["time"], obj["machine"], obj["signal"], obj["value"]))
    except UnicodeDecodeError as e:
        raise ImportFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _sample(plant: Plant, t: object, machine: object, signal: object,
            value: object) -> tuple[Sample | None, str | None]:
    if not isinstance(t, str):
        return None, f"time must be an ISO-8601 string, got {t!r}"
    try:
        when = datetime.fromisoformat(t.strip())
    except ValueError:
        return None, f"time {t!r} is not ISO-8601"
    if when.tzinfo is None:
        return None, f"time {t!r} has no offset (write e.g. {t.strip()}+09:00 or {t.strip()}Z)"
    if not isinstance(machine, str) or not isinstance(signal, str):
        return None, "machine and signal must be strings"
    machine, signal = machine.strip(), signal.strip()
    m = plant.machine(machine)
    if m is None:
        return None, f"unknown machine {machine!r}"
    sig = m.signals.get(signal)
    if sig is None:
        return None, f"machine {machine!r} has no signal {signal!r} (it has {', '.join(m.signals)})"
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"{machine}.{signal}: value {value!r} is not finite"
    try:
        v = coerce_value(signal, sig, value)
    except BadValue as e:
        return None, f"{machine}.{signal}: {e.message}"
    if signal_kind(signal) == "state" and sig.map is not None and v not in sig.map:
        known = ", ".join(f"{k}: {s}" for k, s in sorted(sig.map.items()))
        return None, f"{machine}.state: code {v} is not in the map ({known})"
    return Sample(machine, signal, v, when.astimezone(UTC), "good", SOURCE), None
