"""The shift report (日報): what one shift of every line made, against its plan, and what stopped it.

:meth:`core.readside.Figures.shift_report` builds it from the read side's own figures (OEE and losses,
throughput with targets, downtime events), so the report shows exactly what the figure routes show for
the same shift window; this module holds its shape and the one place operator input enters it
(:func:`operator_annotations`: the read side's stop list and notes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from core import oee as om
from core.calendar import ShiftWindow
from core.model import from_ns
from core.plant import Line

if TYPE_CHECKING:
    from core.readside import Figures, ParetoShare, TargetPoint, Window

TOP_STOPS = 10  # the longest downtime events a report lists per line


@dataclass(frozen=True, slots=True)
class Note:
    """An operator's note on a line (the operator-input contract's note fields)."""

    time: datetime
    text: str
    author: str | None
    recorded: datetime | None


@dataclass(frozen=True, slots=True)
class NamedPart:
    """A stop (part) whose reason an operator named: ``[start, end)`` (``end`` None: still open)."""

    machine: str
    start: datetime
    end: datetime | None
    author: str


@dataclass(frozen=True, slots=True)
class Annotations:
    """What operators added to a line's window: the stop parts they named, and their notes in time
    order."""

    named: tuple[NamedPart, ...]
    notes: tuple[Note, ...]

    def named_by(self, machine: str, at: datetime) -> str | None:
        """Who named the stop (part) of ``machine`` that holds the instant ``at``; None when the reason
        there is the machine's own."""
        for p in self.named:
            if p.machine == machine and p.start <= at and (p.end is None or at < p.end):
                return p.author
        return None


NOTHING_ANNOTATED = Annotations((), ())


async def operator_annotations(fig: Figures, line: Line, w: Window) -> Annotations:
    """Who named each stop of ``line`` in ``w`` and the operators' notes of that window: the read
    side's own stop list (:meth:`core.readside.Figures.stop_list`) and notes
    (:meth:`core.readside.Figures.notes`), the ones the operator routes answer with."""
    stops = await fig.stop_list(line, w)
    named = tuple(NamedPart(r.part.machine, from_ns(r.part.start_ns),
                            None if r.part.end_ns is None else from_ns(r.part.end_ns), r.part.entry.author)
                  for r in stops if r.part.entry is not None)
    notes = tuple(Note(from_ns(n.time_ns), n.text or "", n.author, from_ns(n.recorded_ns))
                  for n in await fig.notes(line, w))
    return Annotations(named, notes)


@dataclass(frozen=True, slots=True)
class StopRow:
    """One downtime event (a (state, reason) stretch of a stop, not a micro-stop) of a report."""

    event: om.DowntimeEvent
    named_by: str | None  # the operator who named its reason; None: the machine's own reason (or unnamed)


@dataclass(frozen=True, slots=True)
class LineReport:
    line: Line
    oee: om.LineOee  # the line over the shift (so far), with its stations
    target: float  # the plan for the shift so far: target_per_hour × production time (breaks excluded)
    shift_target: float  # the plan for the whole shift
    hours: tuple[TargetPoint, ...]  # 1 h buckets: good, scrap and target add up to the line's totals
    top_stops: tuple[StopRow, ...]  # the longest downtime events, longest first
    pareto: tuple[ParetoShare, ...]
    notes: tuple[Note, ...]


@dataclass(frozen=True, slots=True)
class ShiftReport:
    shift: ShiftWindow
    window: Window  # the shift cut at as_of
    complete: bool  # False: the shift was still running at as_of, the report is "so far"
    lines: tuple[LineReport, ...]
