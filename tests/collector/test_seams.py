"""The collector's parts on their own: its configuration, its sources factory and its store writer
(a real spool and a real SQLite store)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.config import CollectorConfig
from collector.pipeline import Collector
from collector.sources import DeadLetterSink, SampleSource
from collector.spool import Spool
from collector.stats import CollectorStats
from collector.writer import StoreWriter
from core.model import Fact, to_ns
from core.plant import Plant
from core.store.sqlite import SqliteStore
from tests.collector.conftest import build_plant
from tests.collector.test_pipeline_spool import FakeSource

T0 = to_ns(datetime(2026, 11, 27, 8, 0, tzinfo=UTC))


def plant() -> Plant:
    return build_plant({"plc": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}}}, [
        ("line-1", "m1", {"source": "plc", "signals": {"good": {"node": "ns=2;s=m1.good", "counter_bits": 16}}}),
        ("line-2", "m2", {"source": "plc", "signals": {"good": {"node": "ns=2;s=m2.good", "counter_bits": 16}}}),
    ])


def test_the_configuration_checks_its_values_and_keywords_override_it() -> None:
    for bad in ({"batch_size": 0}, {"max_unspooled": 0}, {"flush_interval_s": -1.0},
                {"drain_timeout_s": float("inf")}, {"commit_interval_s": float("nan")}):
        with pytest.raises(ValueError):
            CollectorConfig(**bad)  # type: ignore[arg-type]
    base = CollectorConfig(batch_size=10, flush_interval_s=3.0)
    c = Collector(plant(), SqliteStore(":memory:"), config=base, flush_interval_s=0.5, sources=[])
    assert c.config == CollectorConfig(batch_size=10, flush_interval_s=0.5)
    with pytest.raises(ValueError, match="batch_size"):
        Collector(plant(), SqliteStore(":memory:"), batch_size=0, sources=[])


def test_the_sources_factory_makes_the_sources_for_the_selected_lines() -> None:
    calls: list[tuple[Collection[str] | None, str | None]] = []

    def factory(p: Plant, lines: Collection[str] | None = None, *, client_id: str | None = None,
                start_times: dict[str, datetime] | None = None,
                dead_letters: DeadLetterSink | None = None) -> list[SampleSource]:
        calls.append((lines, client_id))
        return [FakeSource("plc")]

    c = Collector(plant(), SqliteStore(":memory:"), lines={"line-2"}, client_id="c1", sources_factory=factory)
    assert calls == [({"line-2"}, "c1")]
    assert list(c.sources) == ["plc"]


async def test_the_writer_writes_what_is_spooled_and_returns_once_all_is_committed(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "facts.db")
    await store.open()
    try:
        with Spool(tmp_path / "spool") as spool:
            facts = [Fact("count", T0 + i, "line-1", "m1", "good", 1) for i in range(7)]
            spool.append(facts[:4])
            spool.append(facts[4:])
            stats, progressed, written = CollectorStats(), [], []
            writer = StoreWriter(store, spool, CollectorConfig(batch_size=3, flush_interval_s=0.0), stats,
                                 on_write=lambda s, ok: written.append(ok), progress=lambda: progressed.append(1),
                                 sync_pending=lambda: None, unspooled=lambda: 0)
            task = asyncio.create_task(writer.run())
            writer.wake()
            writer.all_committed()
            async with asyncio.timeout(10):
                await task
            assert spool.stats.facts == 0
            assert stats.facts_written == 7 and stats.store_up and stats.last_flush is not None
            assert written and all(written) and progressed
        buckets = await store.count_buckets(["m1"], ["good"], 0, T0 + 10**12, 10**12 + T0)
        assert sum(b.total for b in buckets) == 7
    finally:
        await store.close()
