"""Online backups and restores (core/store/backup.py, `mieruka backup` / `mieruka restore`).

For SQLite and a real influxd: a writer task writes facts and operator notes through the store (and
batches into a real collector spool) in a loop while `mieruka backup` runs in another process; the
backup is restored into a fresh store, and every read-side figure for the window the backup covers
whole (up to its consistent point, cut at the first write confirmed after it) equals the source
store's. The spool comes back as the snapshot the backup took (a prefix of the live spool holding
every batch committed before the backup began), the token file byte-equal with mode 0600. A backup
whose file does not match its sha256 is refused, and so is a non-empty target without --force.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from api.tokens import create_token
from collector.spool import Spool
from core.model import Fact, from_ns
from core.plant import Plant, parse_plant
from core.store import open_store
from core.store.base import OperatorEntry, Store
from tests.support.influxd import Influxd
from tests.support.snapshot import differences, figures_snapshot

ROOT = Path(__file__).resolve().parents[2]
NS = 1_000_000_000
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
STATES = {1: "running", 2: "idle", 3: "down"}


def small_plant() -> Plant:
    """Two lines of two machines, a shift all day; micro_stop_s 0, so a window's figures read nothing
    after its end (the read side's margin is micro_stop_s) and a store cut at the end gives the same."""
    def machine(mid: str, gauge: bool) -> dict[str, Any]:
        signals: dict[str, Any] = {"good": {"node": f"ns=2;s={mid}.Good", "counter_bits": 32},
                                   "scrap": {"node": f"ns=2;s={mid}.Scrap", "counter_bits": 32},
                                   "state": {"node": f"ns=2;s={mid}.State", "map": STATES},
                                   "reason": {"node": f"ns=2;s={mid}.Reason"}}
        if gauge:
            signals["temp"] = {"node": f"ns=2;s={mid}.Temp", "unit": "°C"}
        return {"id": mid, "name": mid, "ideal_cycle_s": 0.05, "source": "plc", "signals": signals}

    raw = {
        "site": {"id": "bk", "name": "Backup plant", "timezone": "Asia/Tokyo", "locale": "en"},
        "calendar": {"shifts": [{"id": "all", "start": "00:00", "end": "00:00", "days": DAYS}], "micro_stop_s": 0},
        "reasons": {20: {"name": "Spindle fault", "category": "breakdown"}},
        "sources": {"plc": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}}},
        "lines": [{"id": "l1", "name": "Line 1", "target_per_hour": 3000,
                   "machines": [machine("a1", True), machine("a2", False)]},
                  {"id": "l2", "name": "Line 2", "target_per_hour": 3000,
                   "machines": [machine("b1", True), machine("b2", False)]}],
    }
    return parse_plant(raw, "<backup test plant>")


@dataclass
class Writes:
    """What the writer did: per batch, its smallest fact time and when the store confirmed it."""

    batches: list[tuple[int, int]] = field(default_factory=list)
    spooled_before: dict[int, int] = field(default_factory=dict)  # wall ns -> batches spooled by then
    grew: asyncio.Event = field(default_factory=asyncio.Event)

    async def reach(self, n: int) -> None:
        """Wait (at most a minute) until ``n`` batches are written."""
        async with asyncio.timeout(60):
            while len(self.batches) < n:
                self.grew.clear()
                await self.grew.wait()


def batch(plant: Plant, i: int, now: int) -> list[Fact]:
    facts: list[Fact] = []
    for line in plant.lines:
        for k, m in enumerate(line.machines):
            t = now + k  # distinct times per machine
            facts.append(Fact("count", t, line.id, m.id, "good", 1 + (i + k) % 3))
            if (i + k) % 7 == 0:
                facts.append(Fact("count", t, line.id, m.id, "scrap", 1))
            if (i + k) % 10 == 0:  # a stop of about 0.1 s every 0.5 s, with a reason
                facts.append(Fact("state", t, line.id, m.id, "state", "down", reason=20))
            elif (i + k) % 10 == 2 or i == 0:
                facts.append(Fact("state", t, line.id, m.id, "state", "running"))
            if "temp" in m.signals:
                facts.append(Fact("gauge", t, line.id, m.id, "temp", 40.0 + (i % 17) / 4, unit="°C"))
    return facts


async def writer(plant: Plant, store: Store, spool: Spool, stop: asyncio.Event, writes: Writes) -> None:
    i = 0
    async with asyncio.timeout(300):
        while not stop.is_set():
            now = time.time_ns()
            facts = batch(plant, i, now)
            await store.write(facts)
            if i % 10 == 5:
                await store.add_entry(OperatorEntry(f"note-{i:06d}", now, "writer", "note",  # type: ignore[attr-defined]
                                                    "l1", None, now, text=f"note {i}", new="{}"))
            writes.batches.append((now, time.time_ns()))
            await asyncio.to_thread(spool.append, facts, {"i": i})
            writes.spooled_before[time.time_ns()] = i + 1
            writes.grew.set()
            i += 1
            await asyncio.sleep(0.02)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mieruka.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


async def backup_while_writing(plant: Plant, url: str, tmp: Path) -> tuple[Writes, dict[str, Any], Path]:
    """Write for a while, run `mieruka backup` in another process while writing, write on after it."""
    store = open_store(url)
    await store.open()
    tokens = tmp / "tokens.json"
    create_token(tokens, "wallboard", "read")
    create_token(tokens, "ops", "operator")
    out, writes, stop = tmp / "backup", Writes(), asyncio.Event()
    spool = Spool(tmp / "spool")
    try:
        task = asyncio.create_task(writer(plant, store, spool, stop, writes))
        await writes.reach(30)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mieruka.cli", "backup", "--store", url, "--out", str(out),
            "--spool", str(tmp / "spool"), "--tokens", str(tokens), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 300)
        assert proc.returncode == 0, err.decode()
        assert b"backup complete" in err  # progress on stderr
        n = len(writes.batches)
        await writes.reach(n + 10)  # the writer goes on after the backup
        stop.set()
        await task
    finally:
        stop.set()
        spool.close()
        await store.close()
    manifest = json.loads((out / "manifest.json").read_text())
    return writes, manifest, out


def window_end_ns(writes: Writes, consistent_ns: int) -> int:
    """The backup holds every write confirmed before its consistent point; a batch confirmed after it
    may be missing, so the comparable window ends at the earliest fact time of those batches."""
    late = [first for first, confirmed in writes.batches if confirmed >= consistent_ns]
    assert late, "the writer wrote nothing after the backup's consistent point: not an online backup"
    return min([consistent_ns, *late])


def spool_batches(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT seq, facts, payload FROM batches ORDER BY seq").fetchall()
    finally:
        conn.close()


async def compare(plant: Plant, source_url: str, restored_url: str, writes: Writes, manifest: dict[str, Any]) -> int:
    consistent = int(manifest["consistent_until_ns"])
    first = writes.batches[0][0]
    assert first < consistent < writes.batches[-1][0]  # the backup ran while the writer wrote
    end_ns = window_end_ns(writes, consistent)
    start, end = from_ns(first - 60 * NS), from_ns(end_ns // 1000 * 1000)  # datetimes hold microseconds
    assert end > from_ns(first)
    source, restored = open_store(source_url, reader=True), open_store(restored_url, reader=True)
    await source.open()
    await restored.open()
    try:
        a = await figures_snapshot(plant, source, start, end)
        b = await figures_snapshot(plant, restored, start, end)
        # the source holds more after the window: the restored store ends at the backup
        later = datetime.fromtimestamp(writes.batches[-1][0] / NS).astimezone()
        whole_a = await figures_snapshot(plant, source, start, later)
        whole_b = await figures_snapshot(plant, restored, start, later)
    finally:
        await source.close()
        await restored.close()
    good = a["lines"]["l1"]["oee"]["good"]
    assert good > 0 and a["lines"]["l1"]["stops"] and a["lines"]["l1"]["notes"], "the window holds data"
    diff = differences(a, b)
    assert not diff, f"restored figures differ from the source's for the backed-up window: {diff[:5]}"
    assert whole_b["lines"]["l1"]["oee"]["good"] < whole_a["lines"]["l1"]["oee"]["good"]
    return int(good)


def check_side_files(tmp: Path, out: Path, restored_spool: Path, restored_tokens: Path, writes: Writes,
                     manifest: dict[str, Any]) -> None:
    assert restored_tokens.read_bytes() == (tmp / "tokens.json").read_bytes()
    assert stat.S_IMODE(restored_tokens.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "tokens").stat().st_mode) == 0o600
    live, restored = spool_batches(tmp / "spool" / "spool.sqlite3"), spool_batches(restored_spool)
    assert restored == spool_batches(out / "spool.sqlite3")
    assert restored == live[:len(restored)] and len(restored) < len(live)
    # every batch spooled before the backup began is in it
    began = int(manifest["consistent_until_ns"])
    before = max([n for t, n in writes.spooled_before.items() if t < began - 1] or [0])
    assert len(restored) >= before > 0


@pytest.fixture
def plant() -> Plant:
    return small_plant()


def restore_all(out: Path, url: str, tmp: Path) -> tuple[Path, Path]:
    spool, tokens = tmp / "restored" / "spool.sqlite3", tmp / "restored" / "tokens.json"
    r = cli("restore", "--from", str(out), "--store", url, "--spool", str(spool), "--tokens", str(tokens))
    assert r.returncode == 0, r.stderr
    assert "restore complete" in r.stderr
    return spool, tokens


async def test_sqlite_backup_while_writing_restores_the_same_figures(plant: Plant, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    writes, manifest, out = await backup_while_writing(plant, url, tmp_path)
    assert manifest["store"]["kind"] == "sqlite" and manifest["store"]["schema_version"] >= 1
    assert set(manifest["files"]) == {"store.sqlite3", "spool.sqlite3", "tokens"}
    restored_url = f"sqlite:///{tmp_path / 'restored.db'}"
    spool, tokens = restore_all(out, restored_url, tmp_path)
    good = await compare(plant, url, restored_url, writes, manifest)
    check_side_files(tmp_path, out, spool, tokens, writes, manifest)
    print(f"sqlite: {len(writes.batches)} batches written, {good} good parts in the compared window")

    # restoring again into the same (now non-empty) store is refused without --force, accepted with it
    r = cli("restore", "--from", str(out), "--store", restored_url)
    assert r.returncode == 2 and "--force" in r.stderr and "exists" in r.stderr, r.stderr
    r = cli("restore", "--from", str(out), "--store", restored_url, "--force")
    assert r.returncode == 0, r.stderr


async def test_influx_backup_while_writing_restores_the_same_figures(plant: Plant, tmp_path: Path,
                                                                     influxd_server: Influxd) -> None:
    url = influxd_server.url()
    writes, manifest, out = await backup_while_writing(plant, url, tmp_path)
    assert manifest["store"]["kind"] == "influxdb" and manifest["store"]["schema_version"] >= 1
    ms = manifest["store"]["measurements"]
    assert {"counts", "states", "gauges", "operator_log", "mieruka_schema"} <= set(ms)
    assert all(info["points"] > 0 for info in ms.values())
    restored_url = influxd_server.url()
    spool, tokens = restore_all(out, restored_url, tmp_path)
    good = await compare(plant, url, restored_url, writes, manifest)
    check_side_files(tmp_path, out, spool, tokens, writes, manifest)
    db = restored_url.rsplit("/", 1)[1]
    got = influxd_server.query('SELECT count("inc") FROM "counts"', db)["results"][0]["series"][0]["values"][0][1]
    assert got == ms["counts"]["points"]
    print(f"influxdb: {len(writes.batches)} batches written, {good} good parts in the compared window")

    r = cli("restore", "--from", str(out), "--store", restored_url)
    assert r.returncode == 2 and "--force" in r.stderr and "holds data" in r.stderr, r.stderr


@pytest.fixture
def sqlite_backup(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    async def fill() -> None:
        store = open_store(f"sqlite:///{tmp_path / 'src.db'}")
        await store.open()
        try:
            await store.write(batch(small_plant(), 0, time.time_ns()))
        finally:
            await store.close()

    asyncio.run(fill())
    r = cli("backup", "--store", f"sqlite:///{tmp_path / 'src.db'}", "--out", str(tmp_path / "bk"))
    assert r.returncode == 0, r.stderr
    yield tmp_path / "bk", f"sqlite:///{tmp_path / 'target.db'}"


def test_a_damaged_backup_is_refused_and_nothing_is_restored(sqlite_backup: tuple[Path, str],
                                                             tmp_path: Path) -> None:
    out, target = sqlite_backup
    data = bytearray((out / "store.sqlite3").read_bytes())
    data[-100] ^= 0xFF  # one flipped byte
    (out / "store.sqlite3").write_bytes(bytes(data))
    r = cli("restore", "--from", str(out), "--store", target)
    assert r.returncode == 2
    assert "store.sqlite3 does not match its sha256" in r.stderr and "nothing restored" in r.stderr, r.stderr
    assert not (tmp_path / "target.db").exists()


def test_a_backup_of_a_newer_schema_is_refused(sqlite_backup: tuple[Path, str], tmp_path: Path) -> None:
    out, target = sqlite_backup
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["store"]["schema_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = cli("restore", "--from", str(out), "--store", target)
    assert r.returncode == 2
    assert "made by a newer mieruka (schema 99)" in r.stderr, r.stderr
    assert not (tmp_path / "target.db").exists()


def test_bad_arguments_say_what_to_fix(sqlite_backup: tuple[Path, str], tmp_path: Path) -> None:
    out, target = sqlite_backup
    r = cli("backup", "--store", f"sqlite:///{tmp_path / 'src.db'}", "--out", str(out))
    assert r.returncode == 2 and "not an empty directory" in r.stderr, r.stderr
    r = cli("backup", "--store", f"sqlite:///{tmp_path / 'nope.db'}", "--out", str(tmp_path / "bk2"))
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
    r = cli("restore", "--from", str(tmp_path), "--store", target)
    assert r.returncode == 2 and "no manifest.json" in r.stderr, r.stderr
    r = cli("restore", "--from", str(out), "--store", "influxdb://127.0.0.1:1/x")
    assert r.returncode == 2 and "is of a sqlite store" in r.stderr, r.stderr
    r = cli("restore", "--from", str(out), "--store", target, "--tokens", str(tmp_path / "t"))
    assert r.returncode == 2 and "holds no token file" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "target.db")


def test_influx_backup_in_small_chunks_keeps_every_point_tag_and_field_type(influxd_server: Influxd,
                                                                            tmp_path: Path) -> None:
    from core.store.backup import backup, restore

    src, dst = influxd_server.fresh_database(), influxd_server.fresh_database()
    influxd_server.query(f'CREATE DATABASE "{src}"')
    t = time.time_ns() - 2 * NS
    lines = ["counts,line=l1,machine=a1,signal=good inc=5i 1",  # a stray point in 1970: a gap of 56 years
             'odd\\ name,tag\\ key=a\\,b\\=c\\ d s="say \\"hi\\" \\\\ there",f=1.5,b=true,i=-7i 1000']
    lines += [f"gauges,line=l1,machine=a1,signal=temp,unit=°C value={20 + k / 8} {t + k * 1_000_000}"
              for k in range(500)]
    req = urllib.request.Request(f"{influxd_server.base_url}/write?db={src}&precision=ns",
                                 data="\n".join(lines).encode(), method="POST")
    urllib.request.urlopen(req, timeout=30).close()
    out = tmp_path / "bk"
    manifest = backup(influxd_server.url(src), out, chunk_ns=50_000_000)  # 50 ms: a dozen chunks of gauges
    assert manifest["store"]["measurements"]["gauges"]["points"] == 500
    assert manifest["store"]["measurements"]["odd name"]["fields"] == {"b": 1, "f": 1, "i": 1, "s": 1}
    restore(out, influxd_server.url(dst))

    def dump(db: str) -> list[Any]:
        got = []
        for m in ("counts", "gauges", "odd name"):
            for q in (f'SELECT * FROM "{m}" GROUP BY *', f'SHOW FIELD KEYS FROM "{m}"', f'SHOW TAG KEYS FROM "{m}"'):
                got.append(influxd_server.query(q, db)["results"][0].get("series"))
        return got

    a, b = dump(src), dump(dst)
    assert a == b and a[0] and len(a[3][0]["values"]) == 500
