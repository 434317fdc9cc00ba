"""The collector's knobs, in one place (see :class:`collector.pipeline.Collector`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

from core.normalize import DEFAULT_MAX_CLOCK_AHEAD_S

__all__ = ["CollectorConfig", "CollectorKnobs"]


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    """How a collector batches, commits, retries and stops. ``ValueError`` for a value that
    cannot work (checked here, once, rather than where it is used)."""

    batch_size: int = 5000  # facts per store write at most
    flush_interval_s: float = 1.0  # the oldest spooled fact waits at most this long for a fuller batch
    commit_interval_s: float = 0.02  # group commit: facts gather this long before one spool transaction
    max_unspooled: int = 100_000  # facts waiting in memory before the sources stop being read
    retry_initial_s: float = 0.2  # store retries: first backoff ...
    retry_max_s: float = 10.0  # ... and its cap
    drain_timeout_s: float = 30.0  # at stop: how long the store may take to drain the spool
    max_clock_ahead_s: float = DEFAULT_MAX_CLOCK_AHEAD_S  # source times further ahead are bad_time

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.max_unspooled < 1:
            raise ValueError("max_unspooled must be at least 1")
        for name in ("flush_interval_s", "commit_interval_s", "retry_initial_s", "retry_max_s", "drain_timeout_s"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= 0, not {v!r}")


class CollectorKnobs(TypedDict, total=False):
    """:class:`CollectorConfig`'s fields as keyword arguments of :class:`~collector.pipeline.Collector`."""

    batch_size: int
    flush_interval_s: float
    commit_interval_s: float
    max_unspooled: int
    retry_initial_s: float
    retry_max_s: float
    drain_timeout_s: float
    max_clock_ahead_s: float
