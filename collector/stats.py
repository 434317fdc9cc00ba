"""What the collector's parts share: its live counters and what it needs of a spool."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from collector.spool import SpoolStats
from core.model import Fact

__all__ = ["CollectorStats", "SpoolLike"]


@dataclass
class CollectorStats:
    """Live counters of a :class:`Collector`; wait on them with :meth:`Collector.wait_until`."""

    samples_in: int = 0  # samples taken from the sources
    facts_out: int = 0  # facts the normalizer made
    facts_by_source: Counter[str] = field(default_factory=Counter)  # facts made, by source id
    offline_facts: int = 0  # offline state facts made for source outages
    silent_facts: int = 0  # offline state facts made for machines silent past their stale_after_s
    facts_spooled: int = 0  # facts committed to the spool
    facts_written: int = 0  # facts the store confirmed
    pending: int = 0  # facts made but not yet confirmed by the store (unspooled + spooled)
    batches_written: int = 0
    write_failures: int = 0  # store.write attempts that failed and are retried (unavailable, or another error)
    store_up: bool = True  # the last write attempt succeeded (or none failed yet)
    facts_rejected: int = 0  # facts the store refused (FactRefused): set aside in the spool's quarantine
    facts_dropped: int = 0  # facts lost: memory spool not drained at shutdown
    acks: int = 0  # upstream messages acknowledged after their facts were durable (all sources)
    commits: int = 0  # spool commits
    restarts: int = 0  # source restart markers handed to the normalizer
    dead_letters: Counter[str] = field(default_factory=Counter)  # refused input, by kind
    last_flush: datetime | None = None  # when the store last confirmed a batch


class SpoolLike(Protocol):
    """What the pipeline needs of a spool (:class:`collector.spool.Spool` or :class:`MemorySpool`)."""

    durable: bool

    @property
    def stats(self) -> SpoolStats: ...

    def append(self, facts: Sequence[Fact], state: dict[str, Any] | None = None,
               entries: dict[str, Any] | None = None) -> int | None: ...

    def peek(self, max_facts: int) -> list[tuple[int, list[Fact]]]: ...

    def confirm(self, upto_seq: int, quarantine: Sequence[tuple[Fact, str]] = ()) -> None: ...

    def load_entries(self) -> dict[str, Any]: ...
