"""Make the upgrade fixtures in tests/fixtures/upgrade/ from the code checked out now.

    .venv/bin/python scripts/make_upgrade_fixture.py [OUT_DIR]

A fast-forward run of the demo plant (Thursday 08:00–12:30 JST, seed 7) imported into a SQLite
store and into a throwaway influxd (Debian's, on a loopback port, temp dir, stopped after), plus
three operator entries (a stop reason, scrap, a note) and an alert claim written through the store
API. It writes:

- ``store.db.gz``: the SQLite store file (checkpointed, gzipped);
- ``influx.lp.gz``: every point of the InfluxDB database as line protocol with nanosecond times
  (tags from SHOW TAG KEYS, field types from SHOW FIELD KEYS: integers keep their ``i``);
- ``figures.json.gz``: the read side's figures for the window (tests/support/snapshot.py), checked equal
  on both stores before they are written;
- ``plant.yaml``: the plant file used (a copy of the demo plant).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import sqlite3
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collector.importer import import_samples  # noqa: E402
from core.model import to_ns  # noqa: E402
from core.plant import Plant, load_plant  # noqa: E402
from core.readside import Figures  # noqa: E402
from core.store.base import OperatorEntry, Store  # noqa: E402
from core.store.influx import InfluxStore, escape_str, escape_tag  # noqa: E402
from core.store.sqlite import SqliteStore  # noqa: E402
from simulators.fastforward import run_fast_forward  # noqa: E402
from tests.support.influxd import influxd  # noqa: E402
from tests.support.snapshot import differences, figures_snapshot  # noqa: E402

START = datetime.fromisoformat("2026-11-26T08:00:00+09:00")
END = datetime.fromisoformat("2026-11-26T12:30:00+09:00")
SEED = 7
SHIFT = ("day", "2026-11-26")


def entries(plant: Plant, stop_machine: str, stop_ns: int) -> list[OperatorEntry]:
    rec = to_ns(END)
    return [
        OperatorEntry("0fixture0stop0reason0000000001", rec + 1_000_000_000, "fixture-operator", "stop_reason",
                      "blade-1", stop_machine, stop_ns, None, 50, None, "checked the first part",
                      '{"reason":null}', '{"reason":50}'),
        OperatorEntry("0fixture0scrap00000000000000002", rec + 2_000_000_000, "fixture-operator", "scrap",
                      "blade-1", "inspect-1", to_ns(datetime.fromisoformat("2026-11-26T09:30:00+09:00")), None,
                      50, 3, "burr on the root", '{"scrap":0}', '{"quantity":3,"reason":50,"scrap":3}'),
        OperatorEntry("0fixture0note000000000000000003", rec + 3_000_000_000, "fixture-operator", "note",
                      "press-2", None, to_ns(datetime.fromisoformat("2026-11-26T11:00:00+09:00")), None, None,
                      None, "coil change, \"new supplier\"", None, '{"text":"coil change"}'),
    ]


async def fill(plant: Plant, store: Store, samples: Path, stop: tuple[str, int] | None) -> tuple[str, int]:
    await store.open()
    try:
        report = await import_samples(plant, store, samples)
        assert not report.skipped, report
        if stop is None:
            fig = Figures(plant, store)
            line = fig.line("blade-1")
            rows = await fig.stop_list(line, fig.window(END, START, END, None, None))
            first = next(r for r in rows if not r.part.micro_stop)
            stop = (first.part.machine, first.part.start_ns)
        for e in entries(plant, *stop):
            await store.add_entry(e)  # type: ignore[attr-defined]
        assert await store.claim("alert:fixture:blade-1:1764111600", "api-replica-a")
        return stop
    finally:
        await store.close()


def export_line_protocol(server_query: Any, database: str) -> list[str]:
    """Every point of ``database`` as line protocol, sorted (measurement, series, time)."""
    def q(text: str) -> list[dict[str, Any]]:
        res = server_query(text, database)["results"][0]
        series: list[dict[str, Any]] = res.get("series", [])
        return series

    out: list[str] = []
    for (m,) in (v for s in q("SHOW MEASUREMENTS") for v in s["values"]):
        tag_keys = {v[0] for s in q(f'SHOW TAG KEYS FROM "{m}"') for v in s["values"]}
        field_types = {v[0]: v[1] for s in q(f'SHOW FIELD KEYS FROM "{m}"') for v in s["values"]}
        for s in q(f'SELECT * FROM "{m}" GROUP BY *'):
            tags = {k: v for k, v in s.get("tags", {}).items() if v}
            assert set(tags) <= tag_keys, (m, tags)
            prefix = m + "".join(f",{k}={escape_tag(v)}" for k, v in sorted(tags.items()))
            cols = s["columns"]
            for row in s["values"]:
                fields = []
                for c, v in zip(cols[1:], row[1:], strict=True):
                    if v is None:
                        continue
                    kind = field_types[c]
                    if kind == "integer":
                        fields.append(f"{c}={int(v)}i")
                    elif kind == "float":
                        fields.append(f"{c}={float(v)!r}")
                    elif kind == "boolean":
                        fields.append(f"{c}={'true' if v else 'false'}")
                    else:
                        fields.append(f"{c}={escape_str(str(v))}")
                out.append(f"{prefix} {','.join(fields)} {int(row[0])}")
    return out


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "fixtures" / "upgrade"
    out.mkdir(parents=True, exist_ok=True)
    plant_file = out / "plant.yaml"
    shutil.copyfile(ROOT / "deploy" / "plants" / "demo.yaml", plant_file)
    plant = load_plant(plant_file)
    with tempfile.TemporaryDirectory(prefix="mieruka-fixture-") as tmp:
        d = Path(tmp)
        samples = d / "samples.csv"
        run_fast_forward(plant, SEED, START, END, samples, d / "truth.jsonl")
        db = d / "store.db"
        stop = asyncio.run(fill(plant, SqliteStore(db), samples, None))

        async def snap(store: Store) -> dict[str, Any]:
            await store.open()
            try:
                return await figures_snapshot(plant, store, START, END, SHIFT)
            finally:
                await store.close()

        figs = asyncio.run(snap(SqliteStore(db)))
        with influxd(d / "influxd") as server:
            database = "fixture"
            asyncio.run(fill(plant, InfluxStore(server.host, server.port, database), samples, stop))
            influx_figs = asyncio.run(snap(InfluxStore(server.host, server.port, database)))
            diff = differences(figs, influx_figs)
            assert not diff, diff[:5]
            lines = export_line_protocol(server.query, database)
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.close()
        with open(db, "rb") as src, gzip.GzipFile(out / "store.db.gz", "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)
    with gzip.GzipFile(out / "influx.lp.gz", "wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())
    with gzip.GzipFile(out / "figures.json.gz", "wb", mtime=0) as f:
        f.write(json.dumps({"start": START.isoformat(), "end": END.isoformat(), "shift": list(SHIFT),
                            "figures": figs}, ensure_ascii=False, separators=(",", ":")).encode())
    for p in sorted(out.iterdir()):
        print(f"{p.name}: {p.stat().st_size} bytes")
    print(f"{len(lines)} InfluxDB points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
