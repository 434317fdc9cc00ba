"""Shared by the API and dashboard tests: known facts in a real SQLite store, and a failing store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from core.model import Fact, to_ns
from core.plant import Plant
from core.store.base import CountBucket, GaugeBucket, ProductChange, StateChange, Store, StoreUnavailable
from core.store.sqlite import SqliteStore

TOKYO = ZoneInfo("Asia/Tokyo")


def jst(*a: int) -> datetime:
    return datetime(*a, tzinfo=TOKYO)  # type: ignore[arg-type,misc,unused-ignore]


def count(plant: Plant, t: datetime, machine: str, signal: str, inc: int) -> Fact:
    line = plant.line_of(machine)
    assert line is not None, machine
    return Fact("count", to_ns(t), line.id, machine, signal, inc)


def shift_facts(plant: Plant) -> list[Fact]:
    """The demo plant on Friday 2026-11-27, day shift (08:00–17:00 JST).

    blade-1 (output inspect-1), 08:00–11:00 in 1h buckets: good 10/20/5, scrap 2/1/0.
    press-2 (output pack-2): good 7 at 08:15, scrap 1 (press-2a)."""
    return [
        count(plant, jst(2026, 11, 27, 8, 5), "inspect-1", "good", 10),
        count(plant, jst(2026, 11, 27, 8, 10), "cnc-1", "good", 99),  # upstream: not line output
        count(plant, jst(2026, 11, 27, 8, 30), "cnc-1", "scrap", 2),
        count(plant, jst(2026, 11, 27, 9, 10), "inspect-1", "scrap", 1),
        count(plant, jst(2026, 11, 27, 9, 30), "inspect-1", "good", 20),
        count(plant, jst(2026, 11, 27, 10, 20), "inspect-1", "good", 5),
        count(plant, jst(2026, 11, 27, 8, 15), "pack-2", "good", 7),
        count(plant, jst(2026, 11, 27, 8, 16), "press-2a", "scrap", 1),
        count(plant, jst(2026, 11, 27, 7, 59), "inspect-1", "good", 1000),  # before the shift
    ]


def write_facts(path: Path, facts: Sequence[Fact]) -> None:
    async def run() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            await store.write(facts)
        finally:
            await store.close()

    asyncio.run(run())


class FailingStore:
    """A Store whose reads (or also ``open``) raise ``StoreUnavailable``: the store-down seam."""

    def __init__(self, inner: Store, *, fail_open: bool = False) -> None:
        self.inner = inner
        self.fail_open = fail_open
        self.failing = True

    def _check(self) -> None:
        if self.failing:
            raise StoreUnavailable("connection refused (test)")

    async def open(self) -> None:
        if self.fail_open:
            self._check()
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, facts: Sequence[Fact]) -> None:
        self._check()
        await self.inner.write(facts)

    async def count_buckets(self, machines: Sequence[str], signals: Sequence[str], start_ns: int, end_ns: int,
                            bucket_ns: int) -> list[CountBucket]:
        self._check()
        return await self.inner.count_buckets(machines, signals, start_ns, end_ns, bucket_ns)

    async def state_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[StateChange]:
        self._check()
        return await self.inner.state_changes(machines, start_ns, end_ns)

    async def product_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[ProductChange]:
        self._check()
        return await self.inner.product_changes(machines, start_ns, end_ns)

    async def gauge_buckets(self, machine: str, signal: str, start_ns: int, end_ns: int,
                            bucket_ns: int) -> list[GaugeBucket]:
        self._check()
        return await self.inner.gauge_buckets(machine, signal, start_ns, end_ns, bucket_ns)

    async def last_times(self, machines: Sequence[str]) -> dict[str, int]:
        self._check()
        return await self.inner.last_times(machines)

    async def ping(self) -> bool:
        self._check()
        return await self.inner.ping()
