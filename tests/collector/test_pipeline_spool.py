"""The collector with a real on-disk spool: a store outage, a full spool, a restart, acks, outages.

Each test runs :class:`~collector.pipeline.Collector` in-process with a real
:class:`~collector.spool.Spool` in ``tmp_path`` and a real SQLite store behind a seam that
refuses writes while ``down``. Samples come from a fake source that yields what the test gives
it: the raw samples of one fast-forwarded hour of the demo plant (``deploy/plants/demo.yaml``),
whose ground-truth ledger is the oracle for the totals.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from collector.pipeline import Collector
from collector.sources import AckPoint, SourceItem, SourceOffline, SourceOnline, SourceStats, coerce_value
from collector.spool import FILE_NAME, Spool, WhenFull
from core.model import Fact, Sample, from_ns, to_ns
from core.normalize import Normalizer
from core.plant import Plant, load_plant
from core.store.base import FactRefused, StoreUnavailable
from core.store.sqlite import SqliteStore
from simulators.fastforward import run_fast_forward
from tests.conftest import DEMO_PLANT
from tests.support.ledger import part_counts, read_ledger
from tests.support.procs import collector_running

START = datetime.fromisoformat("2026-11-26T09:00:00+09:00")  # a Thursday morning: the day shift runs
END = START + timedelta(hours=1)
SPLIT = START + timedelta(minutes=30)
ALL_NS = (0, 4_000_000_000_000_000_000)  # 1970 .. 2096: one bucket holds everything
FAKE = "fake"  # the fake source's id (not a plant source: it carries samples of every machine)
WITHIN_S = 20.0  # deadline for any one wait; the whole file runs in a few seconds


# ---- the hour of demo-plant data ---------------------------------------------------------------


@dataclass(frozen=True)
class Hour:
    plant: Plant
    samples: list[Sample]  # in source-time order, as fast-forward wrote them
    good: Counter[str]  # ledger: good parts per machine in [START, END)
    scrap: Counter[str]
    good_after_split: Counter[str]  # ledger: good parts per machine in [SPLIT, END)
    scrap_after_split: Counter[str]

    @property
    def machines(self) -> list[str]:
        return [m.id for _, m in self.plant.machines()]

    def expected(self) -> dict[str, int]:
        """Ledger totals in the shape of :func:`store_totals` (zero counts left out)."""
        out = {f"{m}.good": n for m, n in self.good.items() if n}
        out.update({f"{m}.scrap": n for m, n in self.scrap.items() if n})
        return out


def read_samples(plant: Plant, path: Path) -> list[Sample]:
    """The fast-forward CSV as samples, values typed as a source would type them."""
    out: list[Sample] = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            m = plant.machine(row["machine"])
            assert m is not None, row
            sig = m.signals[row["signal"]]
            out.append(Sample(m.id, row["signal"], coerce_value(row["signal"], sig, row["value"]),
                              datetime.fromisoformat(row["time"]).astimezone(UTC), "good", m.source))
    return out


@pytest.fixture(scope="module")
def hour(tmp_path_factory: pytest.TempPathFactory) -> Hour:
    plant = load_plant(DEMO_PLANT)
    d = tmp_path_factory.mktemp("hour")
    samples_path, truth = d / "samples.csv", d / "truth.jsonl"
    run_fast_forward(plant, 5, START, END, samples_path, truth)
    records = read_ledger(truth)
    whole, after = part_counts(records, START, END), part_counts(records, SPLIT, END)
    samples = read_samples(plant, samples_path)
    assert len(samples) > 1000 and sum(whole.good.values()) > 500, "an hour with production"
    return Hour(plant, samples, whole.good, whole.scrap, after.good, after.scrap)


# ---- seams -------------------------------------------------------------------------------------


class SwitchableStore:
    """A real SQLite store; while ``down`` every write raises StoreUnavailable and writes nothing.
    Records every fact it did store, once per successful write (a fact written twice shows)."""

    def __init__(self, inner: SqliteStore, *, down: bool = False) -> None:
        self.inner = inner
        self.down = down
        self.failures = 0
        self.written: list[Fact] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, facts: Sequence[Fact]) -> None:
        if self.down:
            self.failures += 1
            raise StoreUnavailable("test: the store is down")
        await self.inner.write(facts)
        self.written.extend(facts)

    def times_written(self) -> Counter[Fact]:
        """How often each fact was stored. (Not by key: the normalizer deliberately re-emits a state
        fact under the same key when the reason of that very event arrives after it.)"""
        return Counter(self.written)


class FakeSource:
    """A :class:`~collector.sources.SampleSource` that yields the items it is given, then waits for
    more. ``ack(token)`` records the token and calls ``on_ack`` (which checks durability)."""

    def __init__(self, source_id: str, items: Iterable[SourceItem] = (),
                 on_ack: Callable[[object], None] | None = None) -> None:
        self.source_id = source_id
        self.stats = SourceStats(connected=True, connects=1)
        self.acked: list[object] = []
        self.on_ack = on_ack
        self._items: asyncio.Queue[SourceItem] = asyncio.Queue()
        self.put(items)

    def put(self, items: Iterable[SourceItem]) -> None:
        for item in items:
            self._items.put_nowait(item)

    @property
    def waiting(self) -> int:
        """Items given but not taken yet."""
        return self._items.qsize()

    async def __aenter__(self) -> FakeSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stats.connected = False

    def __aiter__(self) -> FakeSource:
        return self

    async def __anext__(self) -> SourceItem:
        item = await self._items.get()
        if isinstance(item, Sample):
            self.stats.samples += 1
        return item

    async def wait_ready(self) -> None:
        return None

    def ack(self, token: object) -> None:
        self.acked.append(token)
        self.stats.acks += 1
        if self.on_ack is not None:
            self.on_ack(token)


@asynccontextmanager
async def open_sqlite(path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def wait_for(collector: Collector, what: str, predicate: Callable[[], bool]) -> None:
    """Wait (with a deadline) until ``predicate()`` holds, re-checked whenever the stats change."""
    try:
        async with asyncio.timeout(WITHIN_S):
            await collector.wait_until(lambda _: predicate())
    except TimeoutError:
        raise AssertionError(f"not within {WITHIN_S}s: {what}; stats {collector.stats}, "
                             f"spool {collector.spool.stats}") from None


async def store_totals(store: SqliteStore, machines: list[str], start_ns: int = ALL_NS[0],
                       end_ns: int = ALL_NS[1]) -> dict[str, int]:
    buckets = await store.count_buckets(machines, ["good", "scrap"], start_ns, end_ns, ALL_NS[1])
    out: Counter[str] = Counter()
    for b in buckets:
        out[f"{b.machine}.{b.signal}"] += b.total
    return dict(out)


def durable_facts(spool_dir: Path) -> int:
    """Facts in the spool file as another connection sees it: what is committed, nothing in flight."""
    db = sqlite3.connect(f"file:{spool_dir / FILE_NAME}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT coalesce(sum(facts), 0) FROM batches").fetchone()[0])
    finally:
        db.close()


def reference_facts(plant: Plant, samples: Iterable[Sample]) -> list[Fact]:
    """The facts the samples make, by a normalizer of our own, in order."""
    n = Normalizer(plant)
    return [f for s in samples for f in n.feed(s)]


def with_ack_points(samples: Sequence[Sample], every: int) -> tuple[list[SourceItem], list[int]]:
    """``samples`` with an AckPoint (token i) after every ``every`` of them, and per token the
    number of samples before it."""
    items: list[SourceItem] = []
    before: list[int] = []
    for i in range(0, len(samples), every):
        items.extend(samples[i:i + every])
        before.append(min(i + every, len(samples)))
        items.append(AckPoint(FAKE, len(before) - 1))
    return items, before


def cumulative_facts(plant: Plant, samples: Sequence[Sample], before: list[int]) -> list[int]:
    """Per ack token, the facts made by the samples before it (by our own normalizer)."""
    n = Normalizer(plant)
    out: list[int] = []
    made = fed = 0
    for upto in before:
        for s in samples[fed:upto]:
            made += len(n.feed(s))
        fed = upto
        out.append(made)
    return out


class AckChecker:
    """``on_ack`` for :class:`FakeSource`: at each ack, the spool must already have committed the
    facts of every sample before that AckPoint. Committed = in the spool file as another connection
    sees it, plus what the store confirmed and the spool deleted (read in that order, so a
    deletion between the two reads is counted twice rather than not at all: never a false alarm)."""

    def __init__(self, spool: Spool, expected: list[int]) -> None:
        self.spool = spool
        self.expected = expected
        self.seen: list[tuple[object, int, int]] = []  # (token, facts needed, facts committed)

    def __call__(self, token: object) -> None:
        assert isinstance(token, int)
        in_file = durable_facts(self.spool.directory)
        committed = in_file + self.spool.stats.confirmed_facts
        self.seen.append((token, self.expected[token], committed))

    def early(self) -> list[tuple[object, int, int]]:
        """Acks handed out before their facts were committed."""
        return [(t, need, got) for t, need, got in self.seen if got < need]


def make_collector(plant: Plant, store: SwitchableStore, spool: Spool, *sources: FakeSource,
                   **kw: Any) -> Collector:
    opts: dict[str, Any] = {"flush_interval_s": 0.02, "retry_initial_s": 0.01, "retry_max_s": 0.05,
                            "drain_timeout_s": 5.0}
    opts.update(kw)
    return Collector(plant, store, spool=spool, sources=list(sources), **opts)


def open_spool(path: Path, max_bytes: int = 1 << 30, when_full: WhenFull = "block") -> Spool:
    return Spool(path, max_bytes=max_bytes, when_full=when_full, synchronous="normal")


# ---- 1. a store outage: the spool holds an hour, then drains --------------------------------------


async def test_an_hour_spooled_during_a_store_outage_drains_completely(hour: Hour, tmp_path: Path) -> None:
    n = len(hour.samples)
    async with open_sqlite(tmp_path / "facts.db") as real:
        store = SwitchableStore(real, down=True)
        with open_spool(tmp_path / "spool") as spool:
            src = FakeSource(FAKE, hour.samples)
            collector = make_collector(hour.plant, store, spool, src)
            async with collector_running(collector):
                await wait_for(collector, "every sample normalized and committed to the spool while the store is down",
                               lambda: collector.stats.samples_in == n
                               and collector.stats.facts_spooled == collector.stats.facts_out
                               and store.failures >= 3)
                made = collector.stats.facts_out
                assert made > 1000
                assert spool.stats.facts == made and durable_facts(tmp_path / "spool") == made
                assert collector.stats.facts_written == 0 and store.written == []
                assert await store_totals(real, hour.machines) == {}

                store.down = False
                await wait_for(collector, "the spool drained into the store", lambda: collector.stats.pending == 0)
            assert spool.stats.facts == 0 and spool.stats.batches == 0 and durable_facts(tmp_path / "spool") == 0
            assert spool.stats.dropped_facts == 0 and collector.stats.facts_dropped == 0
            assert collector.stats.facts_written == made
        assert await store_totals(real, hour.machines) == hour.expected()
        assert max(store.times_written().values()) == 1  # each fact written once


# ---- 2. a full spool: "block" and "drop-oldest" ---------------------------------------------------


async def test_a_full_spool_under_block_stops_taking_samples_and_loses_nothing(hour: Hour, tmp_path: Path) -> None:
    n = len(hour.samples)
    spool_dir = tmp_path / "spool"
    items, before = with_ack_points(hour.samples, 50)
    async with open_sqlite(tmp_path / "facts.db") as real:
        store = SwitchableStore(real, down=True)
        # ~70 bytes a fact: room for a few hundred of the hour's thousands of facts
        with open_spool(spool_dir, max_bytes=24_000, when_full="block") as spool:
            checker = AckChecker(spool, cumulative_facts(hour.plant, hour.samples, before))
            src = FakeSource(FAKE, items, on_ack=checker)
            collector = make_collector(hour.plant, store, spool, src, max_unspooled=200)
            async with collector_running(collector):
                await wait_for(collector, "the spool full and the source no longer read",
                               lambda: spool.stats.full_events >= 3 and collector.stats.pending >= 200)
                taken = collector.stats.samples_in
                full = spool.stats.full_events
                # the committer keeps retrying (each retry finds the spool full again): meanwhile
                # not one more sample may be taken
                await wait_for(collector, "five more attempts to append to the full spool",
                               lambda: spool.stats.full_events >= full + 5)
                assert collector.stats.samples_in == taken < n
                assert src.waiting > 0
                assert spool.stats.bytes <= spool.max_bytes and spool.stats.dropped_facts == 0
                acked_before_recovery = len(src.acked)
                assert acked_before_recovery < len(before), "acks for samples that are not spooled yet"

                store.down = False
                await wait_for(collector, "every sample taken and written once the store is back",
                               lambda: collector.stats.samples_in == n and collector.stats.pending == 0
                               and len(src.acked) == len(before))
            assert spool.stats.facts == 0 and spool.stats.dropped_facts == 0 and collector.stats.facts_dropped == 0
            assert collector.stats.facts_written == collector.stats.facts_out
        assert await store_totals(real, hour.machines) == hour.expected()
        assert src.acked == list(range(len(before)))
        assert checker.early() == []


async def test_stop_with_a_full_spool_and_the_store_down_returns_and_keeps_the_spool(
        hour: Hour, tmp_path: Path) -> None:
    """A collector told to stop while "block" holds it (spool full, store down) must not hang:
    it gives up after the drain timeout, counts what it could not spool, keeps what it did."""
    async with open_sqlite(tmp_path / "facts.db") as real:
        store = SwitchableStore(real, down=True)
        with open_spool(tmp_path / "spool", max_bytes=24_000, when_full="block") as spool:
            collector = make_collector(hour.plant, store, spool, FakeSource(FAKE, hour.samples),
                                       max_unspooled=200, drain_timeout_s=0.5)
            stop = asyncio.Event()
            task = asyncio.create_task(collector.run(stop))
            await wait_for(collector, "the spool full", lambda: spool.stats.full_events >= 3)
            spooled = spool.stats.facts
            stop.set()
            async with asyncio.timeout(WITHIN_S):
                await task
            assert collector.stats.facts_dropped > 0  # not spooled: counted
            assert spool.stats.facts == spooled > 0  # what was spooled waits for the next start
            assert durable_facts(tmp_path / "spool") == spooled


async def test_a_full_spool_under_drop_oldest_drops_the_oldest_counts_them_and_keeps_the_newest(
        hour: Hour, tmp_path: Path) -> None:
    n = len(hour.samples)
    made = reference_facts(hour.plant, hour.samples)
    async with open_sqlite(tmp_path / "facts.db") as real:
        store = SwitchableStore(real, down=True)
        with open_spool(tmp_path / "spool", max_bytes=24_000, when_full="drop-oldest") as spool:
            src = FakeSource(FAKE, hour.samples)
            collector = make_collector(hour.plant, store, spool, src, max_unspooled=200)
            async with collector_running(collector):
                await wait_for(collector, "every sample taken and committed while the store is down",
                               lambda: collector.stats.samples_in == n
                               and collector.stats.facts_spooled == collector.stats.facts_out == len(made))
                dropped = spool.stats.dropped_facts
                assert dropped > 0 and spool.stats.dropped_batches > 0
                assert spool.stats.facts + dropped == len(made)  # every fact either spooled or counted as dropped
                assert spool.stats.bytes <= spool.max_bytes
                store.down = False
                await wait_for(collector, "the spool drained", lambda: collector.stats.pending == 0)
            assert spool.stats.dropped_facts == dropped  # nothing more was dropped while draining
        written = store.times_written()
        assert max(written.values()) == 1
        newest, oldest = made[dropped:], set(made[:dropped])
        # the newest facts (all that the spool still held) arrive, in the order they were made
        assert [f for f in made if f in written and f not in oldest] == newest
        # and nothing else arrives but, at most, some of the dropped ones: see the next test
        assert set(written) - set(newest) <= oldest


async def test_facts_counted_as_dropped_never_reach_the_store(hour: Hour, tmp_path: Path) -> None:
    """Minimal reproduction: two gauge readings, a spool that holds one batch, the store down."""
    t = START + timedelta(seconds=1)
    first, second = (Sample("cnc-1", "spindle_temp", v, t + timedelta(seconds=i), "good", "plc-1")
                     for i, v in enumerate((41.0, 42.0)))
    async with open_sqlite(tmp_path / "facts.db") as real:
        store = SwitchableStore(real, down=True)
        with open_spool(tmp_path / "spool", max_bytes=1, when_full="drop-oldest") as spool:
            src = FakeSource(FAKE, [first])
            collector = make_collector(hour.plant, store, spool, src)
            async with collector_running(collector):
                await wait_for(collector, "the writer trying to write the first reading",
                               lambda: collector.stats.facts_spooled == 1 and store.failures >= 1)
                src.put([second])  # its batch does not fit: the first one is dropped to make room
                await wait_for(collector, "the second reading spooled", lambda: collector.stats.facts_spooled == 2)
                assert spool.stats.dropped_facts == 1 and spool.stats.facts == 1
                store.down = False
                await wait_for(collector, "the spool drained", lambda: collector.stats.pending == 0)
        gauges = await real.gauge_buckets("cnc-1", "spindle_temp", *ALL_NS, ALL_NS[1])
    # one reading counted as dropped, one written: the store must hold exactly one
    assert [(g.count, g.mean) for g in gauges] == [(1, 42.0)]


# ---- 3. restart continuity -------------------------------------------------------------------------


async def test_a_new_collector_continues_from_the_spool_left_by_one_stopped_during_an_outage(
        hour: Hour, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    first = [s for s in hour.samples if s.time < SPLIT]
    second = [s for s in hour.samples if s.time >= SPLIT]
    assert first and second
    async with open_sqlite(tmp_path / "facts.db") as real:
        store = SwitchableStore(real, down=True)
        with open_spool(spool_dir) as spool:
            c1 = make_collector(hour.plant, store, spool, FakeSource(FAKE, first), drain_timeout_s=0.2)
            async with collector_running(c1):
                await wait_for(c1, "the first half normalized and committed",
                               lambda: c1.stats.samples_in == len(first)
                               and c1.stats.facts_spooled == c1.stats.facts_out and store.failures >= 1)
            left = c1.stats.facts_out
            assert left > 0 and c1.stats.facts_written == 0 and c1.stats.facts_dropped == 0
            assert spool.stats.facts == left
        assert durable_facts(spool_dir) == left

        store.down = False
        with open_spool(spool_dir) as spool:  # the same directory: the facts and the state are still there
            assert spool.stats.facts == left and spool.load_entries() != {}
            c2 = make_collector(hour.plant, store, spool, FakeSource(FAKE, second))
            async with collector_running(c2):
                await wait_for(c2, "the left-over facts and the second half in the store",
                               lambda: c2.stats.samples_in == len(second) and c2.stats.pending == 0)
            assert spool.stats.facts == 0
            assert c2.stats.facts_written == left + c2.stats.facts_out

        # nothing twice: every fact was stored by exactly one successful write
        assert max(store.times_written().values()) == 1
        assert sum(int(f.value) for f in store.written if f.kind == "count") == sum(hour.expected().values())
        assert await store_totals(real, hour.machines) == hour.expected()
        # not re-baselined: the second half's first reading of each counter counts its increment
        after = {f"{m}.good": k for m, k in hour.good_after_split.items() if k}
        after.update({f"{m}.scrap": k for m, k in hour.scrap_after_split.items() if k})
        assert await store_totals(real, hour.machines, to_ns(SPLIT), to_ns(END)) == after


# ---- 4. acknowledgement after durability ------------------------------------------------------------


async def test_acks_reach_the_source_only_after_the_spool_committed_the_facts_before_them(
        hour: Hour, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    samples = hour.samples[:1500]
    items, before = with_ack_points(samples, 25)
    async with open_sqlite(tmp_path / "facts.db") as real:
        store = SwitchableStore(real, down=True)  # nothing leaves the spool file until every ack is in
        with open_spool(spool_dir) as spool:
            checker = AckChecker(spool, cumulative_facts(hour.plant, samples, before))
            src = FakeSource(FAKE, items, on_ack=checker)
            collector = make_collector(hour.plant, store, spool, src)
            async with collector_running(collector):
                await wait_for(collector, "every ack handed back", lambda: len(src.acked) == len(before))
                assert collector.stats.acks == len(before)
                store.down = False
                await wait_for(collector, "the spool drained", lambda: collector.stats.pending == 0)
    assert src.acked == list(range(len(before)))  # each token once, in order
    assert checker.expected[-1] > 0 and len(checker.seen) == len(before)
    assert checker.early() == [], "acked before the facts of the samples before the AckPoint were committed"


# ---- 5. an outage marker ----------------------------------------------------------------------------


async def test_source_offline_makes_its_machines_offline_in_the_store(hour: Hour, tmp_path: Path) -> None:
    plant = hour.plant
    t0 = START
    t_lost, t_back = t0 + timedelta(seconds=10), t0 + timedelta(seconds=25)
    plc = [m.id for _, m in plant.machines_of_source("plc-1")]
    mqtt = [m.id for _, m in plant.machines_of_source("broker")]
    assert plc and mqtt

    def running_at(machines: list[str], source: str, t: datetime) -> list[SourceItem]:
        return [Sample(m, "state", 1, t, "good", source) for m in machines]

    plc_src = FakeSource("plc-1", [
        *running_at(plc, "plc-1", t0),
        SourceOffline("plc-1", t_lost, "test: connection lost"),
        SourceOnline("plc-1", t_back),
        # an unchanged value read on reconnect carries its old source time: it must not erase the outage
        *running_at(plc, "plc-1", t0),
    ])
    broker_src = FakeSource("broker", running_at(mqtt, "broker", t0))
    async with open_sqlite(tmp_path / "facts.db") as real:
        store = SwitchableStore(real)
        with open_spool(tmp_path / "spool") as spool:
            collector = make_collector(plant, store, spool, plc_src, broker_src)
            async with collector_running(collector):
                await wait_for(collector, "every item taken and written",
                               lambda: plc_src.waiting == 0 and broker_src.waiting == 0
                               and collector.stats.samples_in == 2 * len(plc) + len(mqtt)
                               and collector.stats.pending == 0)
            assert collector.stats.offline_facts == len(plc)
        changes = await real.state_changes(plc + mqtt, *ALL_NS)
    got: dict[str, list[tuple[datetime, str]]] = {}
    for c in changes:
        got.setdefault(c.machine, []).append((from_ns(c.time_ns), c.state))
    for m in plc:
        assert got[m] == [(t0, "running"), (t_lost, "offline"), (t_back, "running")], m
    for m in mqtt:
        assert got[m] == [(t0, "running")], m


# ---- a fact the store refuses: quarantined, the rest written, retried later ------------------------


class RefusingStore(SwitchableStore):
    """A real SQLite store that refuses (FactRefused, nothing written) every write holding a fact
    whose key is in ``refuse``: the seam for "the store cannot hold this one fact"."""

    def __init__(self, inner: SqliteStore, refuse: set[str]) -> None:
        super().__init__(inner)
        self.refuse = refuse
        self.refusals = 0

    async def write(self, facts: Sequence[Fact]) -> None:
        bad = [f.key for f in facts if f.key in self.refuse]
        if bad:
            self.refusals += 1
            raise FactRefused(f"test: cannot hold {bad[0]}")
        await super().write(facts)


async def test_a_refused_fact_is_quarantined_the_facts_behind_it_are_written_and_a_retry_writes_it(
        hour: Hour, tmp_path: Path) -> None:
    ref = reference_facts(hour.plant, hour.samples)
    counts_ = [f for f in ref if f.kind == "count"]
    victims = [counts_[40], next(f for f in ref if f.kind == "state")]
    async with open_sqlite(tmp_path / "facts.db") as real:
        store = RefusingStore(real, {f.key for f in victims})
        with open_spool(tmp_path / "spool") as spool:
            collector = make_collector(hour.plant, store, spool, FakeSource(FAKE, hour.samples), batch_size=500)
            async with collector_running(collector):
                await wait_for(collector, "every fact written or quarantined",
                               lambda: collector.stats.samples_in == len(hour.samples)
                               and collector.stats.pending == 0)
            assert collector.stats.facts_rejected == 2 and spool.stats.quarantined == 2
            assert collector.stats.facts_written == len(ref) - 2
            assert sorted(f.key for _, _, _, f in spool.quarantined()) == sorted(f.key for f in victims)
            assert all("test: cannot hold" in r for _, _, r, _ in spool.quarantined())
            # bisection isolated them: a handful of refused writes, not one per fact
            assert store.refusals <= 2 * 2 * 10
        expected = hour.expected()
        expected[f"{victims[0].machine}.{victims[0].signal}"] -= int(victims[0].value)
        assert await store_totals(real, hour.machines) == {k: v for k, v in expected.items() if v}

        # the cause is fixed: retry (as `mieruka spool retry-quarantine` does) and start again
        store.refuse.clear()
        with open_spool(tmp_path / "spool") as spool:
            assert spool.requeue_quarantine() == 2
        with open_spool(tmp_path / "spool") as spool:
            collector = make_collector(hour.plant, store, spool, FakeSource(FAKE))
            async with collector_running(collector):
                await wait_for(collector, "the requeued facts written", lambda: collector.stats.facts_written == 2)
            assert spool.stats.facts == 0 and spool.stats.quarantined == 0
        assert await store_totals(real, hour.machines) == hour.expected()
        states = await real.state_changes([victims[1].machine], *ALL_NS)
        assert victims[1].time_ns in {c.time_ns for c in states}


async def test_any_exception_from_the_normalizer_makes_a_dead_letter_not_a_dead_collector(
        hour: Hour, tmp_path: Path) -> None:
    from collector.deadletter import DeadLetters

    poison = hour.samples[100]

    class Brittle(Normalizer):
        def feed(self, sample: Sample) -> list[Fact]:
            if sample is poison:
                raise RecursionError("maximum recursion depth exceeded")
            return super().feed(sample)

    async with open_sqlite(tmp_path / "facts.db") as real:
        with open_spool(tmp_path / "spool") as spool, DeadLetters(tmp_path / "dead.jsonl",
                                                                  logging.getLogger("test")) as dead:
            collector = make_collector(hour.plant, SwitchableStore(real), spool, FakeSource(FAKE, hour.samples),
                                       dead_letters=dead)
            collector.normalizer = Brittle(hour.plant)
            async with collector_running(collector) as run:
                await wait_for(collector, "every sample taken", lambda: collector.stats.samples_in == len(hour.samples)
                               and collector.stats.pending == 0)
                assert not run.task.done()
            assert collector.stats.dead_letters["normalize_failed"] == 1
        letter = json.loads((tmp_path / "dead.jsonl").read_text(encoding="utf-8"))
        assert letter["kind"] == "normalize_failed" and "RecursionError" in letter["reason"]
        assert letter["payload"].startswith(f"{poison.machine},{poison.signal},")
