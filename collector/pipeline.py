"""The collector pipeline: sources → normalize → (spool, later) → store, in one TaskGroup.

    collector = Collector(plant, store)
    await collector.run(stop)            # returns after ``stop`` is set and pending facts are written

Tasks (all in one ``asyncio.TaskGroup``, all named):

- ``source:<id>``, one per plant source that serves a selected line: iterates the source and
  feeds the one :class:`~core.normalize.Normalizer` (sync, so the sources never race on it).
  A :class:`~collector.sources.SourceRestarted` marker goes to ``Normalizer.source_restarted``
  in order with the samples, so the first value after a PLC restart is seen as a reset.
- ``writer``: batches facts (``batch_size`` or ``flush_interval_s``, whichever first) into
  ``store.write``; on ``StoreUnavailable`` it keeps the batch and retries with capped, jittered
  backoff while new facts keep queueing behind it.
- ``stopper``: on ``stop``, closes the sources, then lets the writer drain and return.

Facts waiting for the store are held **in memory** for now: a collector that dies while the
store is down loses them, and memory grows with the outage. The durable, bounded on-disk spool
(with MQTT acks only once data is in it) replaces this queue later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from collector.sources import Backoff, OncePerKind, SampleSource, SourceRestarted
from core.model import Fact, Sample
from core.normalize import NormalizeError, Normalizer
from core.plant import Plant
from core.store.base import Store, StoreError, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class CollectorStats:
    """Live counters of a :class:`Collector`; wait on them with :meth:`Collector.wait_until`."""

    samples_in: int = 0  # samples taken from the sources
    facts_out: int = 0  # facts the normalizer made
    facts_written: int = 0  # facts the store confirmed
    pending: int = 0  # facts made but not yet confirmed by the store (in flight included)
    batches_written: int = 0
    write_failures: int = 0  # store.write attempts that raised StoreUnavailable
    facts_rejected: int = 0  # facts in batches the store refused outright (StoreError): dropped
    facts_dropped: int = 0  # facts given up at shutdown because the store stayed down
    restarts: int = 0  # source restart markers handed to the normalizer
    dead_letters: Counter[str] = field(default_factory=Counter)  # samples normalize refused, by kind
    last_flush: datetime | None = None  # when the store last confirmed a batch


class _GiveUp(Exception):
    pass


def build_sources(plant: Plant, lines: Collection[str] | None = None) -> list[SampleSource]:
    """One source per plant source serving a machine of ``lines`` (all lines when None), each
    with just those machines' signals. ``ValueError`` for an unknown line id.

    An MQTT source gets the plant's ``client_id`` (persistent session) suffixed with the line
    ids when ``lines`` is given, since two collectors sharing one client id would keep
    disconnecting each other; without a ``client_id`` paho picks a random one."""
    from collector.sources.mqtt import MqttSource
    from collector.sources.opcua import OpcUaSource

    if lines is not None:
        unknown = sorted(set(lines) - {ln.id for ln in plant.lines})
        if unknown:
            raise ValueError(f"unknown line(s) {', '.join(unknown)}; the plant has "
                             f"{', '.join(ln.id for ln in plant.lines)}")
    out: list[SampleSource] = []
    for source_id, spec in plant.sources.items():
        machines = [m for ln, m in plant.machines_of_source(source_id) if lines is None or ln.id in lines]
        if not machines:
            continue
        if spec.opcua is not None:
            out.append(OpcUaSource(source_id, spec.opcua, [
                (m.id, name, sig.node, sig) for m in machines for name, sig in m.signals.items() if sig.node]))
        elif spec.mqtt is not None:
            if spec.mqtt.payload != "json":
                raise ValueError(f"source '{source_id}' sends {spec.mqtt.payload} payloads, which the collector "
                                 "does not read yet (it reads MQTT JSON); collect the other lines with --lines, "
                                 "or publish JSON")
            client_id = spec.mqtt.client_id
            if client_id and lines is not None:
                client_id = f"{client_id}-{'+'.join(sorted(lines))}"
            out.append(MqttSource(source_id, spec.mqtt, [
                (m.id, name, sig) for m in machines for name, sig in m.signals.items()], client_id=client_id))
    return out


class Collector:
    """Collects the plant's (or ``lines``') signals into ``store`` until stopped.

    ``sources`` replaces the sources built from the plant (a test seam). ``normalizer_state``
    is a :meth:`Normalizer.snapshot` to continue from (counter baselines across restarts)."""

    def __init__(
        self,
        plant: Plant,
        store: Store,
        *,
        batch_size: int = 5000,
        flush_interval_s: float = 1.0,
        lines: set[str] | None = None,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 10.0,
        drain_timeout_s: float = 30.0,
        normalizer_state: dict[str, Any] | None = None,
        sources: Sequence[SampleSource] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.plant = plant
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.lines = lines
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.drain_timeout_s = drain_timeout_s
        self.normalizer = Normalizer(plant)
        if normalizer_state is not None:
            self.normalizer.restore(normalizer_state)
        self.sources: dict[str, SampleSource] = {
            s.source_id: s for s in (sources if sources is not None else build_sources(plant, lines))}
        self.stats = CollectorStats()
        self._dead = OncePerKind(log, self.stats.dead_letters)
        self._pending: deque[Fact] = deque()
        self._oldest_at = 0.0  # monotonic time the oldest pending fact was queued
        self._wake = asyncio.Event()  # writer: first fact queued, a full batch, or closing
        self._progress = asyncio.Event()  # any stats change, for wait_until
        self._closing = False
        self._give_up_at = float("inf")
        self._store_down = False
        self._ran = False

    # ---- running ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Collect until ``stop`` is set; then close the sources, write what is pending, return."""
        if self._ran:
            raise RuntimeError("a Collector runs once")
        self._ran = True
        log.info("collector: %d sources (%s), batches of %d or every %.1fs", len(self.sources),
                 ", ".join(self.sources) or "none", self.batch_size, self.flush_interval_s)
        async with asyncio.TaskGroup() as tg:
            source_tasks = [tg.create_task(self._run_source(s), name=f"source:{sid}")
                            for sid, s in self.sources.items()]
            tg.create_task(self._writer(), name="writer")
            tg.create_task(self._stopper(stop, source_tasks), name="stopper")
        log.info("collector stopped: %d samples in, %d facts written", self.stats.samples_in,
                 self.stats.facts_written)

    async def _stopper(self, stop: asyncio.Event, source_tasks: list[asyncio.Task[None]]) -> None:
        await stop.wait()
        # cancelling a child task by hand does not cancel the TaskGroup; each source leaves its
        # `async with` (disconnecting) on the way out
        for t in source_tasks:
            t.cancel()
        if source_tasks:
            await asyncio.wait(source_tasks)
        log.info("collector stopping: writing %d pending facts", self.stats.pending)
        self._closing = True
        self._give_up_at = time.monotonic() + self.drain_timeout_s
        self._wake.set()

    async def _run_source(self, source: SampleSource) -> None:
        feed = self.normalizer.feed
        n = 0
        async with source:
            async for item in source:
                if isinstance(item, SourceRestarted):
                    self.normalizer.source_restarted(item.source)
                    self.stats.restarts += 1
                    continue
                self._take(item, feed)
                n += 1
                if n % 1000 == 0:
                    # a source with a backlog answers __anext__ without ever suspending; without
                    # this the writer (and every other task) would starve while it drains
                    await asyncio.sleep(0)

    def _take(self, sample: Sample, feed: Callable[[Sample], list[Fact]]) -> None:
        self.stats.samples_in += 1
        try:
            facts = feed(sample)
        except NormalizeError as e:
            self._dead(e.kind, "dropping sample from %s: %s", sample.source or "?", e.message)
        else:
            if facts:
                self._enqueue(facts)
        self._progress.set()

    def _enqueue(self, facts: list[Fact]) -> None:
        if not self._pending:
            self._oldest_at = time.monotonic()
            self._wake.set()
        self._pending.extend(facts)
        self.stats.facts_out += len(facts)
        self.stats.pending += len(facts)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    # ---- writing ---------------------------------------------------------------------------
    async def _writer(self) -> None:
        while True:
            self._wake.clear()
            if not self._pending:
                if self._closing:
                    return
                await self._wake.wait()
                continue
            if len(self._pending) < self.batch_size and not self._closing:
                remaining = self._oldest_at + self.flush_interval_s - time.monotonic()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await self._wake.wait()
                    continue
            n = min(self.batch_size, len(self._pending))
            batch = [self._pending.popleft() for _ in range(n)]
            self._oldest_at = time.monotonic()
            try:
                await self._write(batch)
            except _GiveUp:
                lost = len(batch) + len(self._pending)
                self._pending.clear()
                self.stats.facts_dropped += lost
                self.stats.pending = 0
                self._progress.set()
                log.error("store still unavailable %.0fs after stop: %d facts are lost", self.drain_timeout_s, lost)
                return

    async def _write(self, batch: list[Fact]) -> None:
        backoff = Backoff(self.retry_initial_s, self.retry_max_s)
        while True:
            try:
                await self.store.write(batch)
            except StoreUnavailable as e:
                self.stats.write_failures += 1
                self._progress.set()
                if not self._store_down:
                    self._store_down = True
                    log.warning("store unavailable (%s); holding %d facts and retrying", e, self.stats.pending)
                if self._closing and time.monotonic() >= self._give_up_at:
                    raise _GiveUp from e
                await asyncio.sleep(backoff.next())
                continue
            except StoreError as e:
                # not a connectivity problem: retrying the same batch would fail forever
                self.stats.facts_rejected += len(batch)
                self.stats.pending -= len(batch)
                self._progress.set()
                log.error("store refused a batch of %d facts, dropping it: %s", len(batch), e)
                return
            if self._store_down:
                self._store_down = False
                log.info("store available again; %d facts pending", self.stats.pending)
            self.stats.facts_written += len(batch)
            self.stats.pending -= len(batch)
            self.stats.batches_written += 1
            self.stats.last_flush = datetime.now(UTC)
            self._progress.set()
            return

    # ---- waiting (tests, health) -------------------------------------------------------------
    # No timeout parameters: bound them at the call site, `async with asyncio.timeout(10): ...`.
    async def wait_until(self, predicate: Callable[[CollectorStats], bool]) -> None:
        """Return once ``predicate(self.stats)`` holds (re-checked on every change of the stats)."""
        while not predicate(self.stats):
            self._progress.clear()
            await self._progress.wait()

    async def wait_idle(self) -> None:
        """Return once every fact made so far is confirmed by the store (or given up)."""
        await self.wait_until(lambda s: s.pending == 0)

    async def wait_ready(self) -> None:
        """Return once every source is connected and subscribed (call while :meth:`run` runs)."""
        for s in self.sources.values():
            await s.wait_ready()
