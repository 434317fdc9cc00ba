"""The collector pipeline: sources → normalize → spool → store, in one TaskGroup.

    with Spool("spool/") as spool:
        collector = Collector(plant, store, spool=spool)
        await collector.run(stop)        # returns after ``stop`` is set and the spool is drained (or kept)

Tasks (all in one ``asyncio.TaskGroup``, all named):

- ``source:<id>``, one per plant source that serves a selected line: iterates the source and
  feeds the one :class:`~core.normalize.Normalizer` (sync, so the sources never race on it);
  a :class:`~collector.sources.SampleBatch` (what arrived together) goes in row by row through
  ``Normalizer.feed_ns``, its facts queued in one go.
  Markers arrive in order with the samples: :class:`~collector.sources.SourceRestarted` goes to
  ``Normalizer.source_restarted`` (the first value after a PLC restart counts from 0),
  :class:`~collector.sources.SourceOffline` / :class:`~collector.sources.SourceOnline` to
  ``Normalizer.source_offline`` / ``source_online`` (the source's machines are ``offline`` in
  the store for the outage), :class:`~collector.sources.MachinesOffline` /
  :class:`~collector.sources.MachinesOnline` to ``Normalizer.machines_offline`` /
  ``machines_online`` (some machines of a source that stays up, e.g. a Sparkplug B device's
  ``DDEATH`` and next ``DBIRTH``), :class:`~collector.sources.AckPoint` waits for the next commit.
- ``silence``, when a selected machine has ``stale_after_s``: every tenth of the shortest one
  (within 50 ms .. 1 s) asks ``Normalizer.silent`` which machines sent nothing for that long and
  spools their ``offline`` facts (a broker does not tell when one machine stops publishing).
- ``committer``: every ``commit_interval_s`` (group commit) appends the facts made since the last
  commit to the spool **together with what changed in the normalizer state** (rows by key:
  counter baselines, last fact times, last states) in one transaction, flushes the
  dead-letter file, and only then acknowledges the MQTT messages those facts came from. After a
  crash the saved state matches the spooled facts exactly, and whatever was not acknowledged is
  re-delivered by the broker; OPC UA counters are cumulative, so the first reading after a
  restart carries whatever the lost moments counted.
- ``writer`` (:class:`~collector.writer.StoreWriter`): reads the oldest spooled batches (up to
  ``batch_size`` facts, or what is there once the oldest waited ``flush_interval_s``, or at
  once when the last write left facts waiting: a backlog's tail does not wait), writes
  them to the store, and deletes them from the
  spool only once the store confirmed. A store outage leaves them in the spool and is retried with
  capped, jittered backoff; fact keys are replay-stable and store writes idempotent, so a batch
  written twice (crash between write and confirm) is stored once. A batch the store refuses
  (:class:`~core.store.base.FactRefused`: it cannot hold some fact) is halved until the refused
  facts are alone; those go to the spool's quarantine in the transaction that confirms the
  batch, the rest is written, and nothing behind them waits. Any other store error is retried
  like an outage.
- ``stopper``: on ``stop``, closes the sources, commits what is left, lets the writer drain for
  up to ``drain_timeout_s``; what the store did not take stays in a durable spool for next time.

Backpressure: when the spool is full under ``when_full="block"`` the committer retries and the
sources stop being read once ``max_unspooled`` facts wait in memory; MQTT messages then stay
unacknowledged at the broker (which stops sending after its in-flight window and queues the
rest). Without a spool (``spool=None``) an unbounded in-memory :class:`MemorySpool` stands in:
nothing survives the process (for tests and one-shot runs; ``mieruka collect`` always spools).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol, Unpack

from collector.config import CollectorConfig, CollectorKnobs
from collector.sources import (
    AckPoint,
    Backoff,
    DeadLetterSink,
    MachinesOffline,
    MachinesOnline,
    OncePerKind,
    SampleBatch,
    SampleSource,
    SourceOffline,
    SourceOnline,
    SourceRestarted,
)
from collector.spool import SpoolFull, SpoolStats
from collector.stats import CollectorStats, SpoolLike
from collector.writer import GiveUp, StoreWriter
from core.model import COUNTER_SIGNALS, Fact, Sample, from_ns
from core.normalize import (
    NormalizeError,
    Normalizer,
    entries_from_snapshot,
    fastest_cycle_s,
    snapshot_from_entries,
)
from core.plant import Plant
from core.store.base import Store

log = logging.getLogger(__name__)

__all__ = ["Collector", "CollectorConfig", "CollectorStats", "MemorySpool", "SourcesFactory", "SpoolLike",
           "build_sources"]

STATE_VERSION = 1
META_KEY = "collector"  # the collector's own state entry (version, OPC UA start times) among the normalizer's


class MemorySpool:
    """An unbounded in-memory stand-in for :class:`~collector.spool.Spool` (not durable)."""

    durable = False

    def __init__(self) -> None:
        self._batches: deque[tuple[int, list[Fact], datetime]] = deque()
        self._seq = 0
        self._entries: dict[str, Any] = {}
        self.quarantine: list[tuple[Fact, str]] = []  # refused by the store; gone with the process
        self._stats = SpoolStats(facts=0, batches=0, bytes=0, max_bytes=0, oldest_spooled_at=None)

    @property
    def stats(self) -> SpoolStats:
        self._stats.oldest_spooled_at = self._batches[0][2] if self._batches else None
        return self._stats

    def append(self, facts: Sequence[Fact], state: dict[str, Any] | None = None,
               entries: dict[str, Any] | None = None) -> int | None:
        self._entries.update(entries or {})
        if not facts:
            return None
        self._seq += 1
        self._batches.append((self._seq, list(facts), datetime.now(UTC)))
        self._stats.facts += len(facts)
        self._stats.batches += 1
        self._stats.appended_facts += len(facts)
        return self._seq

    def peek(self, max_facts: int) -> list[tuple[int, list[Fact]]]:
        out: list[tuple[int, list[Fact]]] = []
        n = 0
        for seq, facts, _ in self._batches:
            if out and n + len(facts) > max_facts:
                break
            out.append((seq, facts))
            n += len(facts)
        return out

    def confirm(self, upto_seq: int, quarantine: Sequence[tuple[Fact, str]] = ()) -> None:
        self.quarantine.extend(quarantine)
        self._stats.quarantined += len(quarantine)
        self._stats.quarantined_total += len(quarantine)
        while self._batches and self._batches[0][0] <= upto_seq:
            _, facts, _ = self._batches.popleft()
            self._stats.facts -= len(facts)
            self._stats.batches -= 1
            self._stats.confirmed_facts += len(facts)

    def load_entries(self) -> dict[str, Any]:
        return dict(self._entries)


class SourcesFactory(Protocol):
    """What makes a collector's sources (:func:`build_sources`; a test or an embedding may pass its own)."""

    def __call__(self, plant: Plant, lines: Collection[str] | None = None, *, client_id: str | None = None,
                 start_times: dict[str, datetime] | None = None,
                 dead_letters: DeadLetterSink | None = None) -> list[SampleSource]: ...


def build_sources(plant: Plant, lines: Collection[str] | None = None, *, client_id: str | None = None,
                  start_times: dict[str, datetime] | None = None,
                  dead_letters: DeadLetterSink | None = None) -> list[SampleSource]:
    """One source per plant source serving a machine of ``lines`` (all lines when None), each
    with just those machines' signals. ``ValueError`` for an unknown line id.

    An MQTT source's client id (persistent session) is ``client_id`` when given, else the plant's
    ``client_id``; the latter is suffixed with the line ids when ``lines`` is given, since two
    collectors sharing one client id would keep disconnecting each other. Without either, paho
    picks a random id and the session is clean. ``start_times`` are the OPC UA servers' start
    times saved with the normalizer state (a PLC restart while the collector was down is seen)."""
    # imported when used: asyncua alone takes ~0.3 s to import, a start-up an MQTT-only collector
    # need not pay (it drains a broker's backlog from its first second)
    from collector.sources.mqtt import MqttSource

    if lines is not None:
        unknown = sorted(set(lines) - {ln.id for ln in plant.lines})
        if unknown:
            raise ValueError(f"unknown line(s) {', '.join(unknown)}; the plant has "
                             f"{', '.join(ln.id for ln in plant.lines)}")
    mqtt_sources = [sid for sid, spec in plant.sources.items() if spec.mqtt is not None]
    out: list[SampleSource] = []
    for source_id, spec in plant.sources.items():
        machines = [m for ln, m in plant.machines_of_source(source_id) if lines is None or ln.id in lines]
        if not machines:
            continue
        if spec.opcua is not None:
            from collector.sources.opcua import OpcUaSource

            out.append(OpcUaSource(source_id, spec.opcua, [
                (m.id, name, sig.node, sig) for m in machines for name, sig in m.signals.items() if sig.node],
                start_time=(start_times or {}).get(source_id), dead_letters=dead_letters))
        elif spec.mqtt is not None:
            cid = spec.mqtt.client_id
            if client_id is not None:
                # one id per broker: a collector may read several brokers
                cid = client_id if len(mqtt_sources) == 1 else f"{client_id}-{source_id}"
            elif cid and lines is not None:
                cid = f"{cid}-{'+'.join(sorted(lines))}"
            out.append(MqttSource(source_id, spec.mqtt, [
                (m.id, name, sig) for m in machines for name, sig in m.signals.items()], client_id=cid,
                dead_letters=dead_letters))
    return out


class Collector:
    """Collects the plant's (or ``lines``') signals into ``store`` through ``spool`` until stopped.

    Three parts: its configuration (``config``, a :class:`CollectorConfig`; any of its fields
    may also be given as a keyword, which overrides it), its sources (made by
    ``sources_factory``, default :func:`build_sources`; ``sources`` replaces them outright, a
    test seam) and its :class:`~collector.writer.StoreWriter` (``self.writer``). The normalizer
    continues from the state saved in the spool (or ``normalizer_state``, a
    :meth:`Normalizer.snapshot`, when given). ``dead_letters`` receives refused input with its
    reason and raw bytes. ``on_write(seconds, ok)`` is called after every store write attempt
    (metrics). Source times more than ``max_clock_ahead_s`` ahead of ``clock`` (epoch ns) are
    refused (``bad_time``)."""

    def __init__(
        self,
        plant: Plant,
        store: Store,
        *,
        config: CollectorConfig | None = None,
        spool: SpoolLike | None = None,
        lines: set[str] | None = None,
        client_id: str | None = None,
        normalizer_state: dict[str, Any] | None = None,
        sources: Sequence[SampleSource] | None = None,
        sources_factory: SourcesFactory = build_sources,
        dead_letters: DeadLetterSink | None = None,
        on_write: Callable[[float, bool], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
        **knobs: Unpack[CollectorKnobs],
    ) -> None:
        # the knobs given one by one override ``config`` (CollectorConfig checks them)
        self.config = replace(config or CollectorConfig(), **knobs)
        cfg = self.config
        self.plant = plant
        self.store = store
        self.spool: SpoolLike = spool if spool is not None else MemorySpool()
        self.lines = lines
        self.dead_letters = dead_letters
        self.normalizer = Normalizer(plant, clock=clock, max_clock_ahead_s=cfg.max_clock_ahead_s)
        unbounded = sorted(m.id for ln, m in plant.machines() if (lines is None or ln.id in lines)
                           and COUNTER_SIGNALS & m.signals.keys() and fastest_cycle_s(plant, m) is None)
        if unbounded:
            # said once: without an ideal cycle a preset or set-back counter cannot be told from production
            log.warning("machines without ideal_cycle_s: their counter steps are not checked against what "
                        "they could make (docs/architecture.md, \"Normalize rules\"): %s", ", ".join(unbounded))
        self._start_times: dict[str, datetime] = {}
        self._full_state_due = False  # the next commit saves the whole state, not just its changes
        saved = self.spool.load_entries() if normalizer_state is None else {}
        if saved:
            self._restore(saved)
        elif normalizer_state is not None:
            self.normalizer.restore(normalizer_state)
            self._full_state_due = True
        # machines watched for silence (Normalizer.silent), and how often: a tenth of the shortest
        # stale_after_s, within [50 ms, 1 s]; the offline fact carries the exact time either way
        self._watched = [m.id for ln, m in plant.machines() if (lines is None or ln.id in lines)
                         and m.stale_after_s is not None]
        stale = [m.stale_after_s for _, m in plant.machines() if m.id in self._watched and m.stale_after_s]
        self.silence_check_s = min(1.0, max(0.05, min(stale) / 10)) if stale else 0.0
        self.sources: dict[str, SampleSource] = {
            s.source_id: s for s in (sources if sources is not None else sources_factory(
                plant, lines, client_id=client_id, start_times=self._start_times, dead_letters=dead_letters))}
        self.stats = CollectorStats()
        counts = getattr(dead_letters, "counts", None)
        if isinstance(counts, Counter):
            self.stats.dead_letters = counts  # one count per dead letter, whoever records it
        self._dead = OncePerKind(log, self.stats.dead_letters)
        self._unspooled: list[Fact] = []
        self._acks: list[AckPoint] = []
        self._dirty = asyncio.Event()  # committer: something to commit, or closing
        self._room = asyncio.Event()  # sources: the unspooled backlog went below max_unspooled
        self._progress = asyncio.Event()  # any stats change, for wait_until
        self._closing = False
        self._give_up_at = float("inf")
        self.writer = StoreWriter(store, self.spool, cfg, self.stats, on_write=on_write, progress=self._progress.set,
                                  sync_pending=self._sync_pending, unspooled=lambda: len(self._unspooled))
        self._spool_full_logged = False
        self._ran = False
        self._sync_pending()

    def _restore(self, saved: dict[str, Any]) -> None:
        entries = dict(saved)
        meta = entries.pop(META_KEY, None)
        if not isinstance(meta, dict) or meta.get("version") != STATE_VERSION:
            found = meta.get("version") if isinstance(meta, dict) else None
            raise ValueError(f"the spool holds collector state of another version ({found!r}); "
                             "drain it with the collector that wrote it, or move the spool directory away")
        self.normalizer.restore(snapshot_from_entries(entries))
        for sid, t in (meta.get("start_times") or {}).items():
            self._start_times[sid] = datetime.fromisoformat(t)
        log.info("collector: continuing from saved state (%d facts waiting in the spool)", self.spool.stats.facts)

    def _state_entries(self) -> dict[str, Any]:
        """What changed in the state since the last commit (everything, the first time after an
        explicit ``normalizer_state``), with the collector's own small record."""
        entries = self.normalizer.changes()
        if self._full_state_due:
            entries = entries_from_snapshot(self.normalizer.snapshot())
            self._full_state_due = False
        entries[META_KEY] = {"version": STATE_VERSION,
                             "start_times": {sid: t.isoformat() for sid, t in sorted(self._start_times.items())}}
        return entries

    def _sync_pending(self) -> None:
        self.stats.pending = len(self._unspooled) + self.spool.stats.facts

    # ---- running ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Collect until ``stop`` is set; then close the sources, commit and write what is pending, return."""
        if self._ran:
            raise RuntimeError("a Collector runs once")
        self._ran = True
        log.info("collector: %d sources (%s), batches of %d or every %.1fs, %s spool", len(self.sources),
                 ", ".join(self.sources) or "none", self.config.batch_size, self.config.flush_interval_s,
                 "durable" if self.spool.durable else "in-memory")
        self._room.set()
        async with asyncio.TaskGroup() as tg:
            source_tasks = [tg.create_task(self._run_source(s), name=f"source:{sid}")
                            for sid, s in self.sources.items()]
            if self._watched:
                # stopped with the sources: nothing is declared silent while the collector closes
                source_tasks.append(tg.create_task(self._silence_watch(), name="silence"))
            tg.create_task(self._committer(), name="committer")
            tg.create_task(self.writer.run(), name="writer")
            tg.create_task(self._stopper(stop, source_tasks), name="stopper")
        log.info("collector stopped: %d samples in, %d facts written, %d left in the spool", self.stats.samples_in,
                 self.stats.facts_written, self.spool.stats.facts)

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
        self._give_up_at = time.monotonic() + self.config.drain_timeout_s
        self.writer.close(self._give_up_at)
        self._dirty.set()
        self._room.set()

    async def _run_source(self, source: SampleSource) -> None:
        feed = self.normalizer.feed
        n = 0
        async with source:
            async for item in source:
                if isinstance(item, SampleBatch):
                    self._take_batch(item)
                    n += len(item.rows) - 1
                elif isinstance(item, Sample):
                    self._take(item, feed)
                elif isinstance(item, AckPoint):
                    self._acks.append(item)
                    self._dirty.set()
                elif isinstance(item, SourceRestarted):
                    self.normalizer.source_restarted(item.source)
                    self.stats.restarts += 1
                elif isinstance(item, SourceOffline):
                    facts = self.normalizer.source_offline(item.source, item.since)
                    if facts:
                        log.warning("%s unreachable since %s (%s): %d machines offline", item.source,
                                    item.since.isoformat(timespec="seconds"), item.reason, len(facts))
                        self.stats.offline_facts += len(facts)
                        self._enqueue(item.source, facts)
                elif isinstance(item, SourceOnline):
                    self.normalizer.source_online(item.source, item.at)
                    if item.start_time is not None:
                        self._start_times[item.source] = item.start_time
                    self._dirty.set()
                elif isinstance(item, MachinesOffline):
                    facts = self.normalizer.machines_offline(item.machines, item.since)
                    if facts:
                        log.warning("%s: %s offline since %s (%s)", item.source, ", ".join(item.machines),
                                    item.since.isoformat(timespec="seconds"), item.reason)
                        self.stats.offline_facts += len(facts)
                        self._enqueue(item.source, facts)
                elif isinstance(item, MachinesOnline):
                    self.normalizer.machines_online(item.machines, item.at)
                    self._dirty.set()
                n += 1
                if len(self._unspooled) >= self.config.max_unspooled:
                    self._room.clear()
                    await self._room.wait()  # the spool is full ("block") or slow: stop reading
                elif n >= 1000:
                    # a source with a backlog answers __anext__ without ever suspending; without
                    # this the committer (and every other task) would starve while it drains
                    n = 0
                    await asyncio.sleep(0)

    async def _silence_watch(self) -> None:
        """Machines that stopped publishing while their source stays up (a broker does not tell):
        ``offline`` once silent for their ``stale_after_s`` (Normalizer.silent)."""
        machines = {m.id: m for _, m in self.plant.machines()}
        while True:
            await asyncio.sleep(self.silence_check_s)
            for f in self.normalizer.silent(self._watched):
                m = machines[f.machine]
                log.warning("%s silent for %gs: offline since %s until data returns", m.id, m.stale_after_s,
                            f.time.isoformat(timespec="seconds"))
                self.stats.silent_facts += 1
                self._enqueue(m.source, [f])

    def _take(self, sample: Sample, feed: Callable[[Sample], list[Fact]]) -> None:
        self.stats.samples_in += 1
        try:
            facts = feed(sample)
        except Exception as e:
            self._refused(e, sample.source, sample.machine, sample.signal, sample.value, sample.time.isoformat())
        else:
            if facts:
                self._enqueue(sample.source, facts)
        self._progress.set()

    def _take_batch(self, batch: SampleBatch) -> None:
        """:meth:`_take` for a batch's rows: their facts join the queue in one go, in order."""
        feed = self.normalizer.feed_ns
        out: list[Fact] = []
        for machine, signal, value, src_ns, quality in batch.rows:
            try:
                facts = feed(machine, signal, value, src_ns, quality)
            except Exception as e:
                self._refused(e, batch.source, machine, signal, value, _iso_ns(src_ns))
            else:
                if facts:
                    out += facts
        self.stats.samples_in += len(batch.rows)
        if out:
            self._enqueue(batch.source, out)
        self._progress.set()

    def _refused(self, e: Exception, source: str, machine: str, signal: str, value: object, when: str) -> None:
        # one sample nobody foresaw (or a bug it triggers) costs that sample, never the collector:
        # the broker would re-deliver it to every restart
        if isinstance(e, NormalizeError):
            kind, message = e.kind, e.message
        else:
            kind, message = "normalize_failed", f"{machine}.{signal}: {type(e).__name__}: {e}"
            log.debug("normalizer failed on %s.%s = %r at %s", machine, signal, value, when, exc_info=True)
        if self.dead_letters is not None:
            self.dead_letters.record(kind, message, source=source, raw=f"{machine},{signal},{value!r},{when}")
        else:
            self._dead(kind, "dropping sample from %s: %s", source or "?", message)

    def _enqueue(self, source: str, facts: list[Fact]) -> None:
        self._unspooled.extend(facts)
        self.stats.facts_out += len(facts)
        self.stats.facts_by_source[source] += len(facts)
        self.stats.pending += len(facts)
        self._dirty.set()

    # ---- committing ------------------------------------------------------------------------
    async def _committer(self) -> None:
        while True:
            if not (self._unspooled or self._acks or self._dirty.is_set()):
                if self._closing:
                    break
                await self._dirty.wait()
                continue
            if not self._closing:
                await asyncio.sleep(self.config.commit_interval_s)  # group commit: let a burst gather
            self._dirty.clear()
            # facts, acks and state taken at one instant (no await in between): consistent
            facts, self._unspooled = self._unspooled, []
            acks, self._acks = self._acks, []
            state = self._state_entries()
            try:
                await self._append(facts, state)
            except GiveUp:
                # stopping, and the spool stayed full ("block") with the store down: MQTT messages
                # behind these facts were never acknowledged, so the broker delivers them again;
                # OPC UA counters carry the lost increments into the first reading after a restart
                lost = len(facts) + len(self._unspooled)
                self.stats.facts_dropped += lost
                self._unspooled = []
                self._sync_pending()
                log.error("spool still full %.0fs after stop: %d facts not spooled (unacknowledged MQTT messages "
                          "are delivered again at the next start)", self.config.drain_timeout_s, lost)
                break
            if self.dead_letters is not None:
                flush = getattr(self.dead_letters, "flush", None)
                if flush is not None:
                    await asyncio.to_thread(flush)
            for a in acks:
                src = self.sources.get(a.source)
                if src is not None:
                    src.ack(a.token)
            if acks:
                self.stats.acks = sum(getattr(s.stats, "acks", 0) for s in self.sources.values())
            self.stats.commits += 1
            self.stats.facts_spooled += len(facts)
            self._sync_pending()
            if len(self._unspooled) < self.config.max_unspooled:
                self._room.set()
            if facts:
                self.writer.wake()
            self._progress.set()
        self.writer.all_committed()

    async def _append(self, facts: list[Fact], entries: dict[str, Any]) -> None:
        backoff = Backoff(0.05, 1.0)
        while True:
            try:
                await asyncio.to_thread(self.spool.append, facts, None, entries)
            except SpoolFull:
                if self._closing and time.monotonic() >= self._give_up_at:
                    raise GiveUp from None
                if not self._spool_full_logged:
                    self._spool_full_logged = True
                    st = self.spool.stats
                    log.warning("spool full (%d facts, %d of %d bytes): not taking new data until the store "
                                "drains it (policy 'block')", st.facts, st.bytes, st.max_bytes)
                self._progress.set()
                await asyncio.sleep(backoff.next())
                continue
            if self._spool_full_logged:
                self._spool_full_logged = False
                log.info("spool has room again")
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


def _iso_ns(ns: int) -> str:
    """An epoch-ns source time for a dead letter (one too far out for a datetime, as a number)."""
    try:
        return from_ns(ns).isoformat()
    except (OverflowError, ValueError):
        return f"{ns} ns since the epoch"
