"""The shift report (日報): what one shift of every line made, against its plan, and what stopped it.

:meth:`core.readside.Figures.shift_report` builds it from the read side's own figures (OEE and losses,
throughput with targets, downtime events), so the report shows exactly what the figure routes show for
the same shift window; this module holds its shape and the one place operator input enters it
(:func:`operator_annotations`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from core import oee as om
from core.calendar import ShiftWindow
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
class Annotations:
    """What operators added to a line's window: who named each stop, keyed by (machine, the stop's
    start), and their notes in time order."""

    named_by: Mapping[tuple[str, datetime], str]
    notes: tuple[Note, ...]


NOTHING_ANNOTATED = Annotations({}, ())


async def operator_annotations(fig: Figures, line: Line, w: Window) -> Annotations:
    """Who named each stop of ``line`` in ``w`` and the operators' notes of that window.

    The one seam between the report and operator input (stop reasons named by operators, line
    notes): those live behind the read side's "stops of a window" and "notes of a window", which this
    function is to call. Until they exist here, nothing is named and there are no notes, so a report
    says ``named_by: null`` and ``notes: []`` rather than guessing."""
    del fig, line, w
    return NOTHING_ANNOTATED


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
