"""The collector's store writer: spooled facts → the store, deleted from the spool only once the
store confirmed them (docs in :mod:`collector.pipeline`, task ``writer``).

It shares three things with the rest of the pipeline, all explicit: the :class:`CollectorStats`
it updates, the spool it reads, and callbacks for "stats changed" (``progress``), "recount the
pending facts" (``sync_pending``) and "how many facts are still unspooled" (``unspooled``).
The committer wakes it with :meth:`wake`; the stopper ends it with :meth:`close` and the
committer's :meth:`all_committed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from collector.config import CollectorConfig
from collector.sources import Backoff
from collector.stats import CollectorStats, SpoolLike
from core.model import Fact
from core.store.base import FactRefused, Store, StoreError, StoreUnavailable

__all__ = ["GiveUp", "StoreWriter"]

log = logging.getLogger("collector.pipeline")  # one logger for the pipeline's parts, as before the split


class GiveUp(Exception):
    """Stopping, and the drain time is over: what is left stays in a durable spool (or is lost)."""


class StoreWriter:
    """Writes the spool's oldest batches to ``store`` (see :meth:`run`)."""

    def __init__(self, store: Store, spool: SpoolLike, config: CollectorConfig, stats: CollectorStats, *,
                 on_write: Callable[[float, bool], None] | None, progress: Callable[[], None],
                 sync_pending: Callable[[], None], unspooled: Callable[[], int]) -> None:
        self.store = store
        self.spool = spool
        self.config = config
        self.stats = stats
        self.on_write = on_write
        self._progress = progress
        self._sync_pending = sync_pending
        self._unspooled = unspooled
        self._spooled = asyncio.Event()  # a commit added facts, or closing
        self._closing = False
        self._committed_all = False
        self._give_up_at = float("inf")
        self._behind = False  # the last write left facts waiting: a backlog is being worked off

    def wake(self) -> None:
        """A commit added facts."""
        self._spooled.set()

    def close(self, give_up_at: float) -> None:
        """Stopping: write what there is at once, and give up at ``give_up_at`` (monotonic)."""
        self._closing = True
        self._give_up_at = give_up_at
        self._spooled.set()

    def all_committed(self) -> None:
        """The committer is done: once the spool is empty (or given up), :meth:`run` returns."""
        self._committed_all = True
        self._spooled.set()

    async def run(self) -> None:
        """Write spooled batches until the committer is done and the spool is empty (or given up)."""
        while True:
            self._spooled.clear()
            st = self.spool.stats
            if st.facts == 0:
                if self._committed_all:
                    return
                await self._spooled.wait()
                continue
            # a partial batch waits (up to flush_interval_s) for a fuller one, unless the last
            # write left facts waiting: then the writer is working off a backlog, and what it
            # finds now is its tail, which waiting would only hold back (up to a whole flush
            # interval at the end of a drain after an outage)
            if (st.facts < self.config.batch_size and not self._closing and not self._behind
                    and st.oldest_spooled_at is not None):
                age = (datetime.now(UTC) - st.oldest_spooled_at).total_seconds()
                if age < self.config.flush_interval_s:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.config.flush_interval_s - age):
                            while self.spool.stats.facts < self.config.batch_size and not self._closing:
                                self._spooled.clear()
                                await self._spooled.wait()
                    continue
            dropped_before = self.spool.stats.dropped_batches
            batches = await asyncio.to_thread(self.spool.peek, self.config.batch_size)
            if not batches:
                continue
            facts = [f for _, fs in batches for f in fs]
            first_seq = batches[0][0]
            behind = self.spool.stats.facts > len(facts)  # more was waiting than one write takes

            async def still_spooled(dropped_before: int = dropped_before, first_seq: int = first_seq) -> bool:
                # "drop-oldest" may delete these batches while the store is down: then they are
                # counted as dropped and must not be written after all
                if self.spool.stats.dropped_batches == dropped_before:
                    return True
                head = await asyncio.to_thread(self.spool.peek, 1)
                return bool(head) and head[0][0] <= first_seq

            refused: list[tuple[Fact, str]] = []
            try:
                # one spool batch (a group commit) may hold more than batch_size facts
                written = True
                for i in range(0, len(facts), self.config.batch_size):
                    if not await self._write_isolating(facts[i:i + self.config.batch_size], refused, still_spooled):
                        written = False
                        break
                if not written:
                    continue
            except GiveUp:
                left = self.spool.stats.facts
                if self.spool.durable:
                    log.error("store still unavailable %.0fs after stop: %d facts stay in the spool for the next "
                              "start", self.config.drain_timeout_s, left)
                else:
                    self.stats.facts_dropped += left + self._unspooled()
                    self.stats.pending = 0
                    log.error("store still unavailable %.0fs after stop: %d facts are lost (no spool directory)",
                              self.config.drain_timeout_s, left)
                self._progress()
                return
            await asyncio.to_thread(self.spool.confirm, batches[-1][0], refused)
            self._behind = behind
            if refused:
                self.stats.facts_rejected += len(refused)
                log.error("store refused %d facts (first: %s); they are in the spool's quarantine (%d there now), "
                          "the others are written", len(refused), refused[0][1], self.spool.stats.quarantined)
            self._sync_pending()
            self._progress()

    async def _write_isolating(self, batch: list[Fact], refused: list[tuple[Fact, str]],
                               still_wanted: Callable[[], Awaitable[bool]] | None) -> bool:
        """Write ``batch``; when the store refuses it (:class:`FactRefused`), halve it until the
        refused facts are alone and add those to ``refused``. Writes are idempotent by key, so
        writing again the half that had been fine costs a request, never a double count. False
        as :meth:`_write`."""
        parts = [batch]
        while parts:
            part = parts.pop()
            try:
                if not await self._write(part, still_wanted):
                    return False
            except FactRefused as e:
                if len(part) == 1:
                    refused.append((part[0], str(e)))
                else:
                    mid = len(part) // 2
                    parts += [part[mid:], part[:mid]]  # first half first
        return True

    async def _write(self, batch: list[Fact], still_wanted: Callable[[], Awaitable[bool]] | None = None) -> bool:
        """Write ``batch``, retrying while the store is unavailable; False if ``still_wanted``
        said no before a retry (the batch left the spool meanwhile)."""
        backoff = Backoff(self.config.retry_initial_s, self.config.retry_max_s)
        while True:
            t0 = time.perf_counter()
            try:
                await self.store.write(batch)
            except FactRefused:
                if self.on_write is not None:
                    self.on_write(time.perf_counter() - t0, False)
                raise
            except StoreError as e:
                # unavailable, or another failure that is not about these facts (credentials, a
                # missing database, a broken file): retrying is all we can do, and nothing is lost
                if self.on_write is not None:
                    self.on_write(time.perf_counter() - t0, False)
                self.stats.write_failures += 1
                self._progress()
                if self.stats.store_up:
                    self.stats.store_up = False
                    if isinstance(e, StoreUnavailable):
                        log.warning("store unavailable (%s); %d facts wait in the spool, retrying", e,
                                    self.stats.pending)
                    else:
                        log.error("store failed the write (%s); %d facts wait in the spool, retrying", e,
                                  self.stats.pending)
                if self._closing and time.monotonic() >= self._give_up_at:
                    raise GiveUp from e
                await asyncio.sleep(backoff.next())
                if still_wanted is not None and not await still_wanted():
                    return False
                continue
            if self.on_write is not None:
                self.on_write(time.perf_counter() - t0, True)
            if not self.stats.store_up:
                self.stats.store_up = True
                log.info("store available again; %d facts pending", self.stats.pending)
            self.stats.facts_written += len(batch)
            self.stats.batches_written += 1
            self.stats.last_flush = datetime.now(UTC)
            return True
