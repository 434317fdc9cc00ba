"""A store heavy enough to make the largest allowed requests slow: the demo plant's machines over a
400-day window, written through the real SQLite store."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

from core.model import Fact, to_ns
from core.plant import Plant
from core.store.sqlite import SqliteStore

NS = 1_000_000_000


def heavy_facts(plant: Plant, start: datetime, days: int, *, count_every_s: int = 600,
                state_every_s: int = 1800, product_every_s: int = 8 * 3600) -> list[Fact]:
    """Per machine: a good count every ``count_every_s``, a scrap every 12 counts, a state change every
    ``state_every_s`` (running, then down/idle/changeover in turn with a reason), a product change
    every ``product_every_s`` on machines with a product signal, a gauge reading with each count."""
    t0, t1 = to_ns(start), to_ns(start + timedelta(days=days))
    products = list(plant.products)
    facts: list[Fact] = []
    for ln in plant.lines:
        for i, m in enumerate(ln.machines):
            off = i * 7 * NS  # machines are not in lockstep
            for k, t in enumerate(range(t0 + off, t1, count_every_s * NS)):
                facts.append(Fact("count", t, ln.id, m.id, "good", 3))
                if k % 12 == 5:
                    facts.append(Fact("count", t + NS, ln.id, m.id, "scrap", 1))
                for g in (n for n in m.signals if n not in ("good", "scrap", "total", "state", "reason",
                                                               "product")):
                    facts.append(Fact("gauge", t, ln.id, m.id, g, 40.0 + k % 17, unit=m.signals[g].unit))
            stops = [("down", 20), ("idle", 31), ("changeover", 10)]
            for k, t in enumerate(range(t0 + off, t1, state_every_s * NS)):
                if k % 2 == 0:
                    facts.append(Fact("state", t, ln.id, m.id, "state", "running"))
                else:
                    state, reason = stops[(k // 2) % len(stops)]
                    facts.append(Fact("state", t, ln.id, m.id, "state", state, reason=reason))
            if "product" in m.signals and products:
                for k, t in enumerate(range(t0 + off, t1, product_every_s * NS)):
                    facts.append(Fact("product", t, ln.id, m.id, "product", products[k % len(products)]))
    return facts


def write_heavy(path: Path, plant: Plant, start: datetime, days: int) -> int:
    facts = heavy_facts(plant, start, days)

    async def run() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            for i in range(0, len(facts), 20_000):
                await store.write(facts[i:i + 20_000])
        finally:
            await store.close()

    asyncio.run(run())
    return len(facts)
