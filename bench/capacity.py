"""Capacity figures for sizing a plant, each measured on this machine (medians of a few runs).

    python bench/capacity.py [--hours 24] [--runs 3] [--quick] [--write-readme]

- **disk**: ``--hours`` of the demo plant (deploy/plants/demo.yaml: 8 machines, a weekday with a day
  and a night shift) simulated by the fast-forward and imported through the product's own path
  (``collector.importer``) into a SQLite file (then checkpointed and VACUUMed: its size on disk)
  and into a throwaway influxd on loopback (its data directory for that database, after the cache
  was snapshotted to TSM and the shards fully compacted: the influxd here runs with both cold
  durations at 1 s so this happens within seconds instead of InfluxDB's 10 min / 4 h; the WAL is
  empty when measured). One run per seed; bytes per machine-day and per fact.
- **spool**: the same day's facts appended to a collector spool (``collector.spool.Spool``, its
  defaults) as the collector does while the store is down: one append per group commit (facts
  within ``commit_interval_s`` of each other). Also a 1 Hz line (bench/api.py's generated machines:
  three gauges at 1 Hz, a count per cycle, state changes every few minutes). Bytes per hour.
- **write**: facts/s one writer reaches into each store with the collector's batches (5 000 facts),
  from the 1 Hz line's facts for 20 machines over ``--write-hours`` (a fresh file / database each run).
- **collector**: not measured here; read from this folder's README (the ingest and OPC UA scale
  sections, their commands named there).
- **screens**: ``mieruka api`` (one process, SQLite, default 5 s refresh period) over bench/api.py's
  generated plant; N wall boards poll it (bench/api.py's ``poll``: each board asks the shift and, per
  line, its status and the shift's throughput by hour once per period, at its own phase); N grows
  until the p95 reaches the refresh period or a request fails. The boards run in this process on the
  same 2 CPUs, so the figure is a lower bound.

Everything binds 127.0.0.1, lives in a temp dir and is stopped at the end; the whole run is bounded
(about 5 minutes here). The machine is shared with other developers' test runs: compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collector.config import CollectorConfig  # noqa: E402
from collector.importer import import_samples  # noqa: E402
from collector.spool import Spool  # noqa: E402
from core.model import Fact  # noqa: E402
from core.plant import load_plant  # noqa: E402
from core.store import open_store  # noqa: E402
from core.store.base import Store  # noqa: E402
from core.store.sqlite import SqliteStore  # noqa: E402
from simulators.fastforward import run_fast_forward  # noqa: E402
from tests.support.influxd import Influxd  # noqa: E402

README = ROOT / "bench" / "README.md"
TOP_README = ROOT / "README.md"
BEGIN, END = "<!-- capacity:begin -->", "<!-- capacity:end -->"
GUIDE_BEGIN, GUIDE_END = "<!-- capacity-guide:begin -->", "<!-- capacity-guide:end -->"
DEMO = ROOT / "deploy" / "plants" / "demo.yaml"
START = datetime.fromisoformat("2026-11-26T08:00:00+09:00")  # a Thursday: day shift, then night shift
NS = 1_000_000_000
GB = 1_000_000_000
MB = 1_000_000
HEADROOM = 0.5  # plan for half of a measured maximum: catch-up after an outage, reads, a busier day
BATCH = CollectorConfig().batch_size
COMMIT_NS = int(CollectorConfig().commit_interval_s * NS)
SCREEN_LEVELS = (25, 100, 250, 500, 1000)


def bench_api() -> ModuleType:
    """bench/api.py (its name clashes with the ``api`` package, so it is loaded from its path)."""
    spec = importlib.util.spec_from_file_location("bench_api", ROOT / "bench" / "api.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def dir_bytes(d: Path, suffix: str = "") -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and p.name.endswith(suffix)) if d.exists() else 0


class CompactingInfluxd(Influxd):
    """The test suite's loopback influxd with its cache snapshot and full compaction due after 1 s
    of no writes (defaults: 10 min and 4 h), so the size on disk can be read within the run."""

    def write_config(self) -> Path:
        conf = super().write_config()
        text = conf.read_text(encoding="utf-8")
        conf.write_text(text.replace("[data]\n", '[data]\n  cache-snapshot-write-cold-duration = "1s"\n'
                                                 '  compact-full-write-cold-duration = "1s"\n', 1), encoding="utf-8")
        return conf


def allocated(d: Path) -> int:
    """Bytes a directory's files take on disk (InfluxDB preallocates sparse series-file segments)."""
    return sum(p.stat().st_blocks * 512 for p in d.rglob("*") if p.is_file()) if d.exists() else 0


def influx_settled_bytes(server: Influxd, db: str, deadline_s: float = 60.0) -> tuple[int, int, bool]:
    """The database's shards (TSM files and their field index) once its WAL is empty and every
    shard is one TSM file, the disk its series file takes, and whether that state was reached
    before the deadline (else the sizes at the deadline)."""
    data, wal = server.data_dir / "data" / db, server.data_dir / "wal" / db
    end = time.monotonic() + deadline_s
    last: tuple[int, ...] = ()
    stable_since = time.monotonic()
    while True:
        shards = [p for p in data.glob("*/*") if p.is_dir() and p.name.isdigit() and p.parent.name != "_series"]
        tsm = [len(list(sh.glob("*.tsm"))) for sh in shards]
        now = (sum(dir_bytes(sh) for sh in shards), dir_bytes(wal, ".wal"), *tsm)
        if now != last:
            last, stable_since = now, time.monotonic()
        settled = (bool(shards) and all(n == 1 for n in tsm) and not list(data.rglob("*.tmp")) and now[1] == 0
                   and time.monotonic() - stable_since > 2)
        if settled or time.monotonic() > end:
            return now[0], allocated(data / "_series"), settled
        time.sleep(0.25)


class Tee:
    """A store that writes to several and keeps every fact: the importer's writes, recorded."""

    def __init__(self, stores: Sequence[Store]) -> None:
        self.stores = stores
        self.facts: list[Fact] = []

    async def write(self, facts: Sequence[Fact]) -> None:
        self.facts.extend(facts)
        for s in self.stores:
            await s.write(facts)


@dataclass
class DiskRun:
    facts: int
    sqlite_bytes: int
    influx_bytes: int
    influx_series_bytes: int
    influx_compacted: bool
    facts_list: list[Fact] = field(repr=False)


def vacuumed_bytes(db_path: Path) -> int:
    """A SQLite file's size after a WAL checkpoint and VACUUM (with its -wal/-shm, if any are left)."""
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("VACUUM")
    con.close()
    return sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*"))


def disk_run(server: Influxd, seed: int, hours: float, work: Path) -> DiskRun:
    plant = load_plant(DEMO)
    d = work / f"disk-{seed}"
    d.mkdir()
    run_fast_forward(plant, seed, START, START + timedelta(hours=hours), d / "samples.csv", d / "truth.jsonl")
    db_path = d / "demo.db"
    db = f"cap{seed}"

    async def load() -> list[Fact]:
        sq, ix = SqliteStore(db_path), open_store(server.url(db))
        await sq.open()
        await ix.open()
        try:
            tee = Tee([sq, ix])
            report = await import_samples(plant, cast(Store, tee), d / "samples.csv")
            assert not report.skipped, report.skipped[:3]
            return tee.facts
        finally:
            await sq.close()
            await ix.close()

    facts = asyncio.run(load())
    sqlite_bytes = vacuumed_bytes(db_path)
    influx_bytes, series_bytes, compacted = influx_settled_bytes(server, db)
    return DiskRun(len(facts), sqlite_bytes, influx_bytes, series_bytes, compacted, facts)


def spool_bytes(facts: Sequence[Fact], d: Path) -> tuple[int, int]:
    """Append ``facts`` to a fresh spool as the collector's group commits would (one append per
    ``commit_interval_s`` of fact time); its files' size after close, and the appends made."""
    ordered = sorted(facts, key=lambda f: f.time_ns)
    appends = 0
    with Spool(d) as spool:
        group: list[Fact] = []
        for f in ordered:
            if group and f.time_ns - group[0].time_ns >= COMMIT_NS:
                spool.append(group)
                appends += 1
                group = []
            group.append(f)
        if group:
            spool.append(group)
            appends += 1
    return dir_bytes(d), appends


def one_hz_facts(api_mod: ModuleType, machines: int, hours: float, seed: int) -> list[Fact]:
    """bench/api.py's generated machines (3 gauges at 1 Hz, counts, states), ``machines`` of them."""
    end_s = int(datetime(2026, 11, 26, tzinfo=UTC).timestamp())
    start_s = end_s - int(hours * 3600)
    out: list[Fact] = []
    for i in range(machines):
        rng = random.Random(seed * 1000 + i)
        line = f"line-{i // api_mod.MACHINES + 1}"
        for batch in api_mod.machine_facts(line, f"m{i // api_mod.MACHINES + 1}-{i % api_mod.MACHINES + 1}",
                                           start_s, end_s, rng):
            out.extend(batch)
    out.sort(key=lambda f: f.time_ns)
    return out


async def timed_write(url: str, facts: Sequence[Fact]) -> float:
    store = open_store(url)
    await store.open()
    try:
        t0 = time.perf_counter()
        for i in range(0, len(facts), BATCH):
            await store.write(facts[i:i + BATCH])
        return len(facts) / (time.perf_counter() - t0)
    finally:
        await store.close()


# ---- the collector figures of this folder's README ------------------------------------------------

@dataclass
class CollectorFigures:
    mqtt_msgs_s: float | None
    opcua_us_per_change: float | None
    rss_mb: float | None
    rss_signals: int | None
    ingest_command: str | None
    opcua_served: int | None
    opcua_command: str | None


def collector_figures(text: str) -> CollectorFigures:
    def num(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1).replace(",", "")) if m else None

    def section(name: str) -> str:
        a, b = text.find(f"<!-- {name}:begin -->"), text.find(f"<!-- {name}:end -->")
        return text[a:b] if a >= 0 and b > a else ""

    def command(sec: str) -> str | None:
        m = re.search(r"Command: `([^`]+)`", sec)
        return m.group(1) if m else None

    ingest, scale = section("ingest"), section("opcua-scale")
    rss_signals = num(r"RSS <= 200 MB at [\d ]+ signals \((\d+) signals")
    served = re.search(r"Largest size served at 1 Hz by one process here: \*\*(\d+) variables", scale)
    return CollectorFigures(
        mqtt_msgs_s=num(r"\(c\) `mieruka collect`, defaults \(durable spool\) \| ([\d,]+)"),
        opcua_us_per_change=num(r"collector (\d+(?:\.\d+)?) µs over"),
        rss_mb=num(r"VmHWM (\d+) MB"),
        rss_signals=int(rss_signals) if rss_signals else None,
        ingest_command=command(ingest),
        opcua_served=int(served.group(1)) if served else None,
        opcua_command=command(scale),
    )


# ---- wall screens per API replica ----------------------------------------------------------------

def screens(api_mod: ModuleType, work: Path, hours: float, periods: int, budget_s: float
            ) -> list[tuple[int, int, int, float, float, float]]:
    """(boards, requests, failed, p50 ms, p95 ms, store reads per period) per level, up to the first
    level whose p95 reaches the refresh period or that has a failed request (or the time budget)."""
    plant = work / "screens.yaml"
    plant.write_text(api_mod.plant_yaml(), encoding="utf-8")
    url = f"sqlite:///{work / 'screens.db'}"
    end_s = int(time.time()) // 60 * 60 + 600  # data up to ten minutes ahead: "now" has data all run
    asyncio.run(api_mod.fill(url, end_s - int(hours * 3600), end_s, seed=1))
    out: list[tuple[int, int, int, float, float, float]] = []
    end = time.monotonic() + budget_s
    with api_mod.api(plant, url, work / "api.log", api_mod.PERIOD_S) as base:
        api_mod.time_figures(base, 2, 30)  # warm up
        for n in SCREEN_LEVELS:
            lat, reads, failed = asyncio.run(api_mod.poll(base, n, periods))
            p50, p95 = statistics.median(lat), api_mod.pct(lat, 0.95)
            out.append((n, len(lat), failed, p50, p95, reads))
            print(f"screens: {n} boards: p50 {p50:.0f} ms, p95 {p95:.0f} ms, {failed} failed, "
                  f"{reads:.1f} store reads per period", flush=True)
            if failed or p95 >= api_mod.PERIOD_S * 1000 or time.monotonic() > end:
                break
    return out


# ---- the run --------------------------------------------------------------------------------------

def machine_facts_text() -> str:
    influxd = subprocess.run(["influxd", "version"], capture_output=True, text=True).stdout.split(" (")[0].strip()
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"{influxd or 'influxd'}; load average at the start {load[0]:.1f} (other jobs may share "
            "this machine: rates vary from run to run)")


def fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def run(args: argparse.Namespace) -> tuple[str, str]:
    started = time.monotonic()
    facts_text = machine_facts_text()
    work = Path(tempfile.mkdtemp(prefix="mieruka-bench-capacity-"))
    api_mod = bench_api()
    plant = load_plant(DEMO)
    n_machines = sum(1 for _ in plant.machines())
    try:
        # ---- disk ----
        server = CompactingInfluxd(work / "influxd")
        (work / "influxd").mkdir()
        server.start()
        try:
            runs = [disk_run(server, seed, args.hours, work) for seed in range(1, args.runs + 1)]
            for r in runs:
                print(f"disk: {r.facts} facts, SQLite {r.sqlite_bytes:,} B, InfluxDB shards {r.influx_bytes:,} B "
                      f"({'compacted' if r.influx_compacted else 'NOT fully compacted'}), series file "
                      f"{r.influx_series_bytes:,} B", flush=True)
            machine_days = n_machines * args.hours / 24
            sq_md = statistics.median(r.sqlite_bytes for r in runs) / machine_days
            ix_md = statistics.median(r.influx_bytes for r in runs) / machine_days
            facts_md = statistics.median(r.facts for r in runs) / machine_days
            compacted = all(r.influx_compacted for r in runs)
            series_b = statistics.median(r.influx_series_bytes for r in runs)

            # ---- spool ----
            spool_demo = [spool_bytes(r.facts_list, work / f"spool-demo-{i}")[0] for i, r in enumerate(runs)]
            spool_demo_mh = statistics.median(spool_demo) / (args.hours * n_machines)
            hz_machines = 5
            hz = [one_hz_facts(api_mod, hz_machines, 1.0, seed) for seed in range(1, args.runs + 1)]
            spool_hz = [spool_bytes(f, work / f"spool-hz-{i}")[0] for i, f in enumerate(hz)]
            spool_hz_mh = statistics.median(spool_hz) / hz_machines
            hz_rate_m = len(hz[0]) / hz_machines / 3600  # facts/s per 1 Hz machine
            print(f"spool: demo {spool_demo_mh:,.0f} B per machine-hour, 1 Hz {spool_hz_mh:,.0f} B per "
                  f"machine-hour", flush=True)

            # ---- write capacity ----
            wfacts = one_hz_facts(api_mod, 20, args.write_hours, 1)
            sq_rates, ix_rates = [], []
            for i in range(args.runs):
                sq_rates.append(asyncio.run(timed_write(f"sqlite:///{work / f'write-{i}.db'}", wfacts)))
                ix_rates.append(asyncio.run(timed_write(server.url(f"write{i}"), wfacts)))
                print(f"write: SQLite {sq_rates[-1]:,.0f} facts/s, InfluxDB {ix_rates[-1]:,.0f} facts/s", flush=True)
            # the 1 Hz data on disk as well: gauges every second compress differently from the demo's
            hz_sq = vacuumed_bytes(work / "write-0.db") / len(wfacts)
            hz_ix_bytes, _, hz_compacted = influx_settled_bytes(server, "write0")
            hz_ix = hz_ix_bytes / len(wfacts)
            compacted = compacted and hz_compacted
            print(f"disk, 1 Hz data: SQLite {hz_sq:.1f} B per fact, InfluxDB {hz_ix:.1f} B per fact", flush=True)
        finally:
            server.stop()
        sq_w, ix_w = statistics.median(sq_rates), statistics.median(ix_rates)

        # ---- screens ----
        levels = screens(api_mod, work, args.api_hours, args.periods, args.screens_budget_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    col = collector_figures(README.read_text(encoding="utf-8"))

    # ---- derived ----
    period_s = api_mod.PERIOD_S
    hz_line_rate = hz_rate_m * 5  # a line of five 1 Hz machines
    passing = [lv for lv in levels if not lv[2] and lv[4] < period_s * 1000]
    screens_ok = passing[-1][0] if passing else 0
    at_top = bool(passing) and passing[-1] == levels[-1]
    quick = [lv for lv in levels if not lv[2] and lv[4] < 100]
    fast_ok = quick[-1][0] if quick else 0
    cmd = "`python bench/capacity.py" + (" --quick" if args.quick else "") + (
        " --write-readme" if args.write_readme else "") + "`"
    day = f"{datetime.now(UTC):%Y-%m-%d}"
    per_gb_sq, per_gb_ix = GB / sq_md, GB / ix_md
    hz_day = hz_rate_m * 86_400  # facts per 1 Hz machine-day
    gib = 1 << 30
    ix_state = ("fully compacted: one TSM file per shard, WAL empty" if compacted
                else "NOT fully compacted by the deadline: WAL and level files included")

    rows = [
        "| figure | measured | per unit |",
        "| --- | ---: | --- |",
        f"| SQLite on disk (VACUUMed), demo machine | {fmt(sq_md / 1000, 1)} kB per machine-day | "
        f"{fmt(sq_md / facts_md, 1)} B per fact; {fmt(per_gb_sq)} machine-days per GB |",
        f"| InfluxDB shards on disk ({ix_state}), demo machine | {fmt(ix_md / 1000, 1)} kB per machine-day | "
        f"{fmt(ix_md / facts_md, 1)} B per fact; {fmt(per_gb_ix)} machine-days per GB |",
        f"| SQLite on disk, 1 Hz machine | {fmt(hz_sq * hz_day / MB, 1)} MB per machine-day | "
        f"{fmt(hz_sq, 1)} B per fact; {fmt(GB / (hz_sq * hz_day))} machine-days per GB |",
        f"| InfluxDB shards on disk, 1 Hz machine | {fmt(hz_ix * hz_day / MB, 2)} MB per machine-day | "
        f"{fmt(hz_ix, 1)} B per fact; {fmt(GB / (hz_ix * hz_day))} machine-days per GB |",
        f"| InfluxDB series file (per database, grows with series, not days) | {fmt(series_b / 1000)} kB on disk "
        f"for {n_machines} machines | sparse: 32 MB apparent size |",
        f"| spool during a store outage, demo rate | {fmt(spool_demo_mh / 1000, 1)} kB per machine-hour | "
        f"the default 1 GiB spool holds {fmt(gib / spool_demo_mh / 24 / 50)} days of 50 machines |",
        f"| spool during a store outage, 1 Hz machine | {fmt(spool_hz_mh / MB, 2)} MB per machine-hour | "
        f"the default spool holds {fmt(gib / spool_hz_mh / 50, 1)} h of 50 machines |",
        f"| SQLite write, one writer, batches of {BATCH} | {fmt(sq_w)} facts/s | median of {args.runs} |",
        f"| InfluxDB write, one writer, batches of {BATCH} | {fmt(ix_w)} facts/s | median of {args.runs} |",
    ]
    lv_rows = ["| wall boards | requests | failed | p50 ms | p95 ms | store reads per period |",
               "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lv_rows += [f"| {n} | {req} | {f} | {p50:.0f} | {p95:.0f} | {reads:.1f} |"
                for n, req, f, p50, p95, reads in levels]
    col_lines = []
    if col.mqtt_msgs_s:
        col_lines.append(
            f"- MQTT: `mieruka collect` drained {fmt(col.mqtt_msgs_s)} messages/s (one signal value each) into "
            f"InfluxDB (`{col.ingest_command}`): at {HEADROOM:g} of it, **{fmt(round(col.mqtt_msgs_s * HEADROOM, -3))} "
            "signals at 1 Hz** per collector process.")
    if col.opcua_us_per_change:
        per_core = 1e6 / col.opcua_us_per_change
        served = (f" One simulator process served {fmt(col.opcua_served)} variables at 1 Hz "
                  f"(`{col.opcua_command}`)." if col.opcua_served else "")
        col_lines.append(
            f"- OPC UA: {col.opcua_us_per_change:g} µs of collector CPU per data change (`{col.ingest_command}`): "
            f"{fmt(per_core)} changes/s on one core; at {HEADROOM:g}, **{fmt(round(per_core * HEADROOM, -3))} "
            f"signals at 1 Hz**.{served}")
    if col.rss_mb and col.rss_signals:
        col_lines.append(f"- Memory: {col.rss_mb:g} MB peak RSS at {fmt(col.rss_signals)} signals "
                         f"(`{col.ingest_command}`).")
    if not col_lines:
        col_lines.append("- (the ingest and OPC UA sections were not found in bench/README.md)")

    text = [
        f"Command: {cmd} (bench/capacity.py), {day}, {facts_text}; the run took {took:.0f} s. The machine is a busy",
        "2-core one: sizes are exact for the data written; rates are medians and vary from run to run. Plan with",
        f"the *per unit* column and the headroom rule: {HEADROOM:g} of a measured maximum (catch-up after an outage,",
        "reads, a busier day).",
        "",
        f"**Disk, spool and write rate.** Disk: {args.hours:g} h of the demo plant ({n_machines} machines; a weekday",
        f"with a day and a night shift; {fmt(facts_md)} facts per machine-day: a count per part, state changes,",
        "gauges every 10–30 s) simulated by the fast-forward and imported with `collector.importer` into each store,",
        f"{args.runs} seed(s), median. SQLite: the file after a WAL checkpoint and VACUUM. InfluxDB: the database's",
        "shard directories once the cache was snapshotted and each shard fully compacted (this influxd runs with",
        "both cold durations at 1 s; stock: 10 min and 4 h), plus its series file separately (the index of series",
        "keys: it grows with machines and signals, not with days). A day per series compresses less well than",
        "months do, so the InfluxDB figure is an upper bound per day. Spool: the same facts appended to a",
        f"`collector.spool.Spool` one group commit ({CollectorConfig().commit_interval_s:g} s of fact time) at a",
        "time, as the collector does while the store is down, and its files' size after close (the normalizer",
        "state the collector saves with each commit is one row, replaced, so it is left out); the 1 Hz rows use",
        "five of bench/api.py's machines (3 gauges at 1 Hz, a count per ~31 s cycle, state changes every few",
        f"minutes: {hz_rate_m:.2f} facts/s per machine). Write: one writer, batches of {BATCH} facts, 20 of those",
        f"1 Hz machines over {args.write_hours:g} h ({fmt(len(wfacts))} facts), a fresh file or database per run",
        "(a store holding months writes somewhat slower: its indexes are deeper). The 1 Hz rows on disk are the",
        "first run's file and database, measured as above.",
        "",
        *rows,
        "",
        f"**Wall screens per API replica.** `mieruka api` (one process, SQLite, default {period_s:g} s refresh",
        f"period) over bench/api.py's generated plant ({api_mod.LINES} lines × {api_mod.MACHINES} machines,",
        f"{args.api_hours:g} h of 1 Hz data); N wall boards poll it, each asking the shift and, per line, its status",
        f"and the shift's throughput by hour once a period at its own phase ({args.periods} periods per N); N grows",
        "until the p95 reaches the refresh period or a request fails. The boards run in the benchmark's own",
        "process on the same 2 CPUs as the API: a lower bound.",
        "",
        *lv_rows,
        "",
        f"Rule \"p95 under the refresh period\": **{screens_ok} wall screens per API replica**"
        + (" (the largest N tried)." if at_top else ".") + f" With p95 under 100 ms: {fast_ok}.",
        "Store reads per period stay at one board's figure while answers are quick and grow once requests",
        "queue (more of a period's first computations overlap).",
        "",
        "**Signals per collector process** (not run by this script: read from the ingest and OPC UA sections",
        "of this file, commands named):",
        "",
        *col_lines,
    ]
    guide = [
        f"Figures from {cmd} on a busy 2-core machine, {day}; bench/README.md (\"Capacity\") says how each",
        f"was measured. Plan with {HEADROOM:g} of a measured maximum (headroom for catch-up after an outage, reads,",
        f"busier days). A *demo machine* is one of deploy/plants/demo.yaml's ({fmt(facts_md)} facts a weekday: a",
        "count per part, state changes, gauges every 10–30 s); a *1 Hz machine* has three gauges read every second",
        f"({hz_rate_m:.2f} facts/s). For other rates scale by facts: bytes per fact × facts per day; a store's",
        "write rate ÷ your plant's facts/s.",
        "",
        "| question | answer | from |",
        "| --- | --- | --- |",
        f"| signals per collector process | {collector_answer(col)} | {collector_from(col)} |",
        f"| lines per InfluxDB node (writes) | {fmt(ix_w * HEADROOM / hz_line_rate)} lines of five 1 Hz machines "
        f"({fmt(ix_w)} facts/s × {HEADROOM:g}): far above any line's rate; size by disk (below) | {cmd} |",
        f"| lines per SQLite file (writes) | {fmt(sq_w * HEADROOM / hz_line_rate)} lines of five 1 Hz machines "
        f"({fmt(sq_w)} facts/s × {HEADROOM:g}); one PC, the API reading the same file | {cmd} |",
        f"| wall screens per API replica | {screens_ok} (p95 under the {period_s:g} s refresh period"
        + ("; the largest N tried" if at_top else "") + f"); {fast_ok} with p95 under 100 ms | {cmd} |",
        f"| days of data per GB, SQLite | {fmt(per_gb_sq / 50, 1)} days for 50 demo machines "
        f"({fmt(sq_md / 1000, 1)} kB per machine-day); {fmt(GB / (hz_sq * hz_day) / 50, 1)} days for 50 1 Hz "
        f"machines ({fmt(hz_sq * hz_day / MB, 1)} MB per machine-day) | {cmd} |",
        f"| days of data per GB, InfluxDB | {fmt(per_gb_ix / 50, 1)} days for 50 demo machines "
        f"({fmt(ix_md / 1000, 1)} kB per machine-day); {fmt(GB / (hz_ix * hz_day) / 50, 1)} days for 50 1 Hz "
        f"machines ({fmt(hz_ix * hz_day / MB, 2)} MB per machine-day) | {cmd} |",
        f"| spool per hour of store outage | {fmt(spool_demo_mh / 1000, 1)} kB per demo machine, "
        f"{fmt(spool_hz_mh / MB, 2)} MB per 1 Hz machine (the default 1 GiB spool: "
        f"{fmt(gib / spool_hz_mh / 50, 1)} h of 50 1 Hz machines) | {cmd} |",
    ]
    return "\n".join(text) + "\n", "\n".join(guide) + "\n"


def collector_answer(col: CollectorFigures) -> str:
    parts = []
    if col.mqtt_msgs_s:
        parts.append(f"MQTT: {fmt(round(col.mqtt_msgs_s * HEADROOM, -3))} at 1 Hz")
    if col.opcua_us_per_change:
        parts.append(f"OPC UA: {fmt(round(1e6 / col.opcua_us_per_change * HEADROOM, -3))} at 1 Hz")
    return "; ".join(parts) or "(not found)"


def collector_from(col: CollectorFigures) -> str:
    return f"`{col.ingest_command}` (bench/README.md, ingest)" if col.ingest_command else "bench/README.md"


def replace_between(path: Path, begin: str, end: str, block: str, before: str | None) -> None:
    text = path.read_text(encoding="utf-8")
    full = f"{begin}\n{block}\n{end}"
    if begin in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + full + text[b:]
    elif before and before in text:
        i = text.index(before)
        text = text[:i] + full + "\n\n" + text[i:]
    else:
        text = text.rstrip("\n") + "\n\n" + full + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 h of demo data, one run, shorter polling")
    ap.add_argument("--hours", type=float, default=None, help="hours of the demo plant per disk run (default 24)")
    ap.add_argument("--runs", type=int, default=None, help="runs (seeds) per figure (default 3; 1 quick)")
    ap.add_argument("--write-hours", type=float, default=1.0, help="hours of 20 1 Hz machines per write run")
    ap.add_argument("--api-hours", type=float, default=4.0, help="hours of data behind the API")
    ap.add_argument("--periods", type=int, default=None, help="refresh periods per screen level (default 3; 2 quick)")
    ap.add_argument("--screens-budget-s", type=float, default=180.0, help="stop adding screen levels after this")
    ap.add_argument("--write-readme", action="store_true", help="put the figures into bench/README.md and README.md")
    args = ap.parse_args()
    args.hours = args.hours or (6.0 if args.quick else 24.0)
    args.runs = args.runs or (1 if args.quick else 3)
    args.periods = args.periods or (2 if args.quick else 3)
    section, guide = run(args)
    print(section)
    print(guide)
    if args.write_readme:
        replace_between(README, BEGIN, END, "## Capacity\n\n" + section, None)
        replace_between(TOP_README, GUIDE_BEGIN, GUIDE_END, "## Capacity guide\n\n" + guide,
                        "## Ground-truth ledger tools")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
