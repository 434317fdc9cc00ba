"""A SQLite store filled from a fast-forward run of the simulators, with its ground-truth ledger."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from collector.importer import import_samples
from core.plant import Plant
from core.store.sqlite import SqliteStore
from simulators.fastforward import run_fast_forward


def fast_forward_db(plant: Plant, seed: int, start: datetime, end: datetime, d: Path,
                    name: str = "ff.db") -> tuple[Path, Path, Path]:
    """Simulate ``[start, end)`` with ``seed``, import every sample into ``d / name``; the store, the
    samples (CSV) and the ledger (JSONL). Fails when the importer skipped a sample."""
    samples, truth, db = d / "samples.csv", d / "truth.jsonl", d / name
    run_fast_forward(plant, seed, start, end, samples, truth)

    async def load() -> None:
        store = SqliteStore(db)
        await store.open()
        try:
            report = await import_samples(plant, store, samples)
            assert not report.skipped, report
        finally:
            await store.close()

    asyncio.run(load())
    return db, samples, truth
