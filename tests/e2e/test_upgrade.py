"""Upgrades: stores made by mieruka before schema versions (tests/fixtures/upgrade/, schema 0) opened by
this code. The SQLite file (copied to a temp dir) and the InfluxDB export (loaded into a fresh database
of a real influxd with plain line-protocol writes) give the figures saved with them, read as they are
by a reader (which changes nothing) and after a writer migrated them (the version then recorded). A
store newer than this code is refused by readers, writers and `mieruka migrate` alike; a reader facing
a migration that is not additive names the command to run."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.plant import Plant, load_plant
from core.store import open_store
from core.store import schema as schema_mod
from core.store.schema import SCHEMA_VERSION, Migration, SchemaNeedsMigration, SchemaTooNew
from mieruka import cli
from tests.support.influxd import Influxd
from tests.support.services import free_port
from tests.support.snapshot import differences, figures_snapshot

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "upgrade"


@pytest.fixture(scope="module")
def saved() -> dict[str, Any]:
    with gzip.open(FIXTURE / "figures.json.gz", "rt", encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(FIXTURE / "plant.yaml")


def old_sqlite(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "old.db"
    with gzip.open(FIXTURE / "store.db.gz", "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


async def snapshot(url: str, plant: Plant, saved: dict[str, Any], *, reader: bool) -> dict[str, Any]:
    store = open_store(url, reader=reader)
    await store.open()
    try:
        return await figures_snapshot(plant, store, datetime.fromisoformat(saved["start"]),
                                      datetime.fromisoformat(saved["end"]), tuple(saved["shift"]))
    finally:
        await store.close()


def assert_same(got: dict[str, Any], saved: dict[str, Any]) -> None:
    diff = differences(saved["figures"], got)
    assert not diff, f"figures differ from those saved with the fixture at {len(diff)} places: {diff[:5]}"


def cli_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mieruka.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


async def test_old_sqlite_store_reads_as_it_is_then_migrates_with_the_same_figures(
        tmp_path: Path, plant: Plant, saved: dict[str, Any]) -> None:
    path = old_sqlite(tmp_path)
    url = f"sqlite:///{path}"
    assert user_version(path) == 0 and "schema_history" not in tables(path)
    # the saved figures hold the fixture's operator entries and data: a test of something
    figs = saved["figures"]
    assert figs["lines"]["blade-1"]["oee"]["good"] > 0 and figs["lines"]["press-2"]["notes"]
    assert any(s["part"]["entry"] for s in figs["lines"]["blade-1"]["stops"])

    # a reader (the API) reads schema 0 as it is (migration 1 is additive) and changes nothing
    assert_same(await snapshot(url, plant, saved, reader=True), saved)
    assert user_version(path) == 0 and "schema_history" not in tables(path)

    # mieruka migrate --dry-run says what it would do and changes nothing
    r = cli_run("migrate", "--store", url, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "schema 0 -> 1" in r.stdout and "dry run" in r.stdout and user_version(path) == 0

    # a writer (collector, import) migrates on open: the version is recorded, the figures stay
    assert_same(await snapshot(url, plant, saved, reader=False), saved)
    assert user_version(path) == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    assert [v for (v,) in conn.execute("SELECT version FROM schema_history")] == list(range(1, SCHEMA_VERSION + 1))
    conn.close()
    r = cli_run("migrate", "--store", url)
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr
    assert_same(await snapshot(url, plant, saved, reader=True), saved)


def test_mieruka_migrate_and_import_migrate_an_old_sqlite_store(tmp_path: Path) -> None:
    path = old_sqlite(tmp_path)
    r = cli_run("migrate", "--store", f"sqlite:///{path}")
    assert r.returncode == 0, r.stderr
    assert f"migrated from schema 0 to {SCHEMA_VERSION}" in r.stdout
    assert user_version(path) == SCHEMA_VERSION
    # a writer migrates on open: mieruka import into another copy
    other = old_sqlite(tmp_path / "import")
    samples = tmp_path / "samples.csv"
    samples.write_text("time,machine,signal,value\n2026-11-26T12:31:00+09:00,cnc-1,good,40000\n")
    r = cli_run("import", "--plant", str(FIXTURE / "plant.yaml"), "--store", f"sqlite:///{other}", str(samples))
    assert r.returncode == 0, r.stderr
    assert user_version(other) == SCHEMA_VERSION and "schema_history" in tables(other)


def write_lines(server: Influxd, database: str, lines: list[str]) -> None:
    """Plain line-protocol writes, as any InfluxDB client makes them."""
    for i in range(0, len(lines), 5000):
        req = urllib.request.Request(f"{server.base_url}/write?db={database}&precision=ns",
                                     data="\n".join(lines[i:i + 5000]).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 204


def load_line_protocol(server: Influxd, database: str) -> int:
    server.query(f'CREATE DATABASE "{database}"')
    with gzip.open(FIXTURE / "influx.lp.gz", "rt", encoding="utf-8") as f:
        lines = [ln for ln in f.read().split("\n") if ln]
    write_lines(server, database, lines)
    return len(lines)


def schema_points(server: Influxd, database: str) -> list[Any]:
    res = server.query('SELECT "version" FROM "mieruka_schema"', database)["results"][0]
    return [row[1] for s in res.get("series", []) for row in s["values"]]


async def test_old_influx_database_reads_as_it_is_then_migrates_with_the_same_figures(
        influxd_server: Influxd, plant: Plant, saved: dict[str, Any]) -> None:
    database = influxd_server.fresh_database()
    assert load_line_protocol(influxd_server, database) > 10_000
    url = influxd_server.url(database)
    assert_same(await snapshot(url, plant, saved, reader=True), saved)
    assert schema_points(influxd_server, database) == []  # the reader wrote nothing
    assert_same(await snapshot(url, plant, saved, reader=False), saved)
    assert schema_points(influxd_server, database) == [SCHEMA_VERSION]  # recorded once
    assert_same(await snapshot(url, plant, saved, reader=False), saved)
    assert schema_points(influxd_server, database) == [SCHEMA_VERSION]  # idempotent
    r = cli_run("migrate", "--store", url)
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr


async def test_a_newer_store_is_refused_by_readers_writers_and_migrate(
        tmp_path: Path, influxd_server: Influxd, plant: Plant) -> None:
    newer = SCHEMA_VERSION + 1
    path = old_sqlite(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    database = influxd_server.fresh_database()
    influxd_server.query(f'CREATE DATABASE "{database}"')
    write_lines(influxd_server, database, [f"mieruka_schema version={newer}i 1"])
    samples = tmp_path / "samples.csv"
    samples.write_text("time,machine,signal,value\n2026-11-26T08:00:00+09:00,cnc-1,good,1\n")
    message = f"was made by a newer mieruka (schema {newer}); this one knows schema {SCHEMA_VERSION}"
    for url in (f"sqlite:///{path}", influxd_server.url(database)):
        for reader in (True, False):
            store = open_store(url, reader=reader)
            with pytest.raises(SchemaTooNew, match=message.replace("(", r"\(").replace(")", r"\)")):
                await store.open()
            await store.close()
        r = cli_run("migrate", "--store", url)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        r = cli_run("import", "--plant", str(FIXTURE / "plant.yaml"), "--store", url, str(samples))
        assert r.returncode == 2 and message in r.stderr, r.stderr
    r = cli_run("api", "--plant", str(FIXTURE / "plant.yaml"), "--store", f"sqlite:///{path}", "--port",
                str(free_port()))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert user_version(path) == newer  # untouched


def test_a_reader_refuses_a_store_that_needs_a_migration_that_is_not_additive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # a future migration the old layout does not read the same under (the seam: the migration list)
    future = Migration(SCHEMA_VERSION + 1, "a layout change", additive=False)
    monkeypatch.setattr(schema_mod, "MIGRATIONS", (*schema_mod.MIGRATIONS, future))
    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", future.version)
    path = old_sqlite(tmp_path)
    url = f"sqlite:///{path}"

    async def open_as_reader() -> SchemaNeedsMigration:
        store = open_store(url, reader=True)
        with pytest.raises(SchemaNeedsMigration) as e:
            await store.open()
        await store.close()
        return e.value

    err = asyncio.run(open_as_reader())
    assert err.command == f"mieruka migrate --store '{url}'"
    assert f"SQLite store {path} has schema 0" in str(err) and err.command in str(err)
    assert user_version(path) == 0
    # mieruka api checks before it serves: exit 2, naming the command
    assert cli.main(["api", "--plant", str(FIXTURE / "plant.yaml"), "--store", url, "--port", str(free_port())]) == 2
    assert f"mieruka migrate --store '{url}'" in capsys.readouterr().err
    assert user_version(path) == 0
