"""The store writer's batching: a backlog's tail goes at once, a trickle waits for a fuller batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

from collector.config import CollectorConfig
from collector.spool import Spool
from collector.stats import CollectorStats
from collector.writer import StoreWriter
from core.model import Fact
from core.store.sqlite import SqliteStore

WITHIN_S = 20.0  # deadline for any one wait
T0 = 1_764_000_000_000_000_000


def counts(n: int, start: int) -> list[Fact]:
    return [Fact("count", T0 + start + i, "l1", "m1", "good", 1) for i in range(n)]


async def test_a_backlogs_tail_is_written_at_once_while_a_trickle_waits_for_a_fuller_batch(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "facts.db")
    await store.open()
    # a flush interval far past the deadline: any wait for a fuller batch would fail the test
    config = CollectorConfig(batch_size=500, flush_interval_s=10 * WITHIN_S)
    stats = CollectorStats()
    progress = asyncio.Event()
    try:
        with Spool(tmp_path / "spool", synchronous="normal") as spool:
            # what an outage leaves: three commits of 300 facts; writes take whole commits of at
            # most batch_size facts, so 300, 300, then a tail of 300 that is less than a batch
            for k in range(3):
                spool.append(counts(300, 300 * k))
            writer = StoreWriter(store, spool, config, stats, on_write=None, progress=progress.set,
                                 sync_pending=lambda: None, unspooled=lambda: 0)
            task = asyncio.create_task(writer.run())
            async with asyncio.timeout(WITHIN_S):
                while stats.facts_written < 900:
                    progress.clear()
                    await progress.wait()
            assert stats.batches_written == 3 and spool.stats.facts == 0
            # a trickle after the backlog waits for a fuller batch (or the flush interval)
            spool.append(counts(10, 900))
            writer.wake()
            await asyncio.sleep(0.5)
            assert stats.facts_written == 900 and spool.stats.facts == 10
            # stopping writes what waits
            writer.close(asyncio.get_running_loop().time() + WITHIN_S)
            writer.all_committed()
            async with asyncio.timeout(WITHIN_S):
                await task
            assert stats.facts_written == 910 and spool.stats.facts == 0
        buckets = await store.count_buckets(["m1"], ["good"], T0, T0 + 10**9, 10**9)
        assert sum(b.total for b in buckets) == 910
    finally:
        await store.close()
