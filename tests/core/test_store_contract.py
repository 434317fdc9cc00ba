"""One contract suite for every Store backend, against real engines.

Backends: a real SQLite file; a real influxd (fresh database per test); the same influxd build
with auth enabled, reached with user/password. Backend-specific behaviour (WAL readers, the
InfluxDB HTTP seams: auth header, batching, escaping, errors) follows the contract part.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from core.model import Fact, to_ns
from core.store import (
    CountBucket,
    GaugeBucket,
    ProductChange,
    StateChange,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
)
from core.store.base import MAX_TIME_NS, FactRefused, OperatorEntry, OperatorLog, fact_problem
from core.store.influx import InfluxStore
from core.store.sqlite import SqliteStore
from tests.support.influxd import Influxd
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]
S = 1_000_000_000
T = to_ns(datetime(2026, 11, 27, tzinfo=UTC))  # a UTC midnight: aligned to every bucket used here
BACKENDS = ["sqlite", "influxdb", "influxdb-auth"]


def count(t: int, n: int, machine: str = "m1", signal: str = "good", line: str = "line-1") -> Fact:
    return Fact("count", t, line, machine, signal, n)


def state(t: int, value: str, reason: int | None = None, machine: str = "m1") -> Fact:
    return Fact("state", t, "line-1", machine, "state", value, reason=reason)


def gauge(t: int, v: float, machine: str = "m1", signal: str = "temp", unit: str | None = "°C") -> Fact:
    return Fact("gauge", t, "line-1", machine, signal, v, unit=unit)


def product(t: int, code: str, machine: str = "m1") -> Fact:
    return Fact("product", t, "line-1", machine, "product", code)


def sums(buckets: list[CountBucket]) -> dict[tuple[int, str, str], int]:
    out: dict[tuple[int, str, str], int] = {}
    for b in buckets:
        key = (b.start_ns, b.machine, b.signal)
        assert key not in out, f"bucket {key} returned twice"
        out[key] = b.total
    return out


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[Store]:
    monkeypatch.delenv("MIERUKA_INFLUX_TOKEN", raising=False)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.db"  # tmp_path is absolute: the four-slash form
    elif request.param == "influxdb":
        url = request.getfixturevalue("influxd_server").url()
    else:
        server: Influxd = request.getfixturevalue("influxd_auth_server")
        url = server.url()
        assert "admin:" in url
    st = open_store(url)
    assert isinstance(st, Store)
    await st.open()
    try:
        yield st
    finally:
        await st.close()


# ---- the contract ----------------------------------------------------------------------------


async def test_open_is_idempotent_and_ping(store: Store) -> None:
    await store.open()
    assert await store.ping() is True
    await store.write([])
    assert await store.count_buckets(["m1"], ["good"], T, T + 60 * S, 60 * S) == []


async def test_writes_are_idempotent_by_key(store: Store) -> None:
    facts = [count(T + i * S, i + 1) for i in range(10)] + [count(T + 5 * S, 7, signal="scrap")]
    await store.write(facts)
    await store.write(facts)
    await store.write(facts[3:6])  # a replayed part of a batch
    got = sums(await store.count_buckets(["m1"], ["good", "scrap"], T, T + 60 * S, 60 * S))
    assert got == {(T, "m1", "good"): sum(range(1, 11)), (T, "m1", "scrap"): 7}


async def test_window_edges_and_epoch_aligned_buckets(store: Store) -> None:
    await store.write([
        count(T + 30 * S - 1, 1000),  # before the window
        count(T + 30 * S, 1),  # the window's first nanosecond
        count(T + 59 * S, 2),
        count(T + 60 * S, 4),
        count(T + 150 * S - 1, 8),  # the window's last nanosecond
        count(T + 150 * S, 2000),  # the window's end is excluded
    ])
    got = sums(await store.count_buckets(["m1"], ["good"], T + 30 * S, T + 150 * S, 60 * S))
    # buckets start at epoch multiples even when the window starts inside one
    assert got == {(T, "m1", "good"): 3, (T + 60 * S, "m1", "good"): 4, (T + 120 * S, "m1", "good"): 8}
    # an odd bucket width aligns to the epoch too, not to the window
    got7 = sums(await store.count_buckets(["m1"], ["good"], T, T + 200 * S, 7 * S))
    for start in {k[0] for k in got7}:
        assert start % (7 * S) == 0
    assert T % (7 * S) != 0 and sum(got7.values()) == 1000 + 1 + 2 + 4 + 8 + 2000
    assert await store.count_buckets(["m1"], ["good"], T + 60 * S, T + 60 * S, S) == []


async def test_bucket_sums_per_machine_and_signal(store: Store) -> None:
    facts = []
    expected: dict[tuple[int, str, str], int] = {}
    for machine in ("m1", "m2", "m3"):
        for signal in ("good", "scrap"):
            for i in range(30):
                t = T + i * 10 * S + (1 if signal == "scrap" else 0)
                n = (i % 4) + (2 if machine == "m2" else 1)
                facts.append(count(t, n, machine, signal))
                if machine != "m3":
                    b = T + (i * 10 * S // (60 * S)) * 60 * S
                    expected[(b, machine, signal)] = expected.get((b, machine, signal), 0) + n
    await store.write(facts)
    got = sums(await store.count_buckets(["m1", "m2"], ["good", "scrap"], T, T + 3600 * S, 60 * S))
    assert got == expected
    only_good = sums(await store.count_buckets(["m2"], ["good"], T, T + 3600 * S, 3600 * S))
    assert only_good == {(T, "m2", "good"): sum(v for k, v in expected.items() if k[1:] == ("m2", "good"))}
    assert await store.count_buckets(["m9"], ["good"], T, T + 3600 * S, 60 * S) == []


async def test_state_overwrite_with_same_key(store: Store) -> None:
    await store.write([state(T + 10 * S, "down")])
    await store.write([state(T + 10 * S, "down", 20)])  # the reason came second: same key
    assert await store.state_changes(["m1"], T, T + 60 * S) == [StateChange(T + 10 * S, "m1", "down", 20)]
    # and back to no reason: an omitted field must not survive from the earlier point
    await store.write([state(T + 10 * S, "changeover", None)])
    assert await store.state_changes(["m1"], T, T + 60 * S) == [StateChange(T + 10 * S, "m1", "changeover", None)]


async def test_state_changes_include_the_state_before_the_window(store: Store) -> None:
    await store.write([
        state(T - 100 * S, "down", 10),
        state(T - 50 * S, "idle", 30),
        state(T + 10 * S, "running"),
        state(T + 20 * S, "down", 20),
        state(T + 60 * S, "running"),  # at the window's end: excluded
        state(T - 10 * S, "planned", machine="m2"),
        state(T, "running", machine="m2"),  # at the window's start: in it
        state(T + 5 * S, "idle", 31, machine="m3"),  # nothing before the window
        state(T - 5 * S, "down", 20, machine="m9"),  # not asked for
    ])
    got = await store.state_changes(["m1", "m2", "m3"], T, T + 60 * S)
    assert got == [
        StateChange(T - 50 * S, "m1", "idle", 30),
        StateChange(T - 10 * S, "m2", "planned", None),
        StateChange(T, "m2", "running", None),
        StateChange(T + 5 * S, "m3", "idle", 31),
        StateChange(T + 10 * S, "m1", "running", None),
        StateChange(T + 20 * S, "m1", "down", 20),
    ]
    # a window with no changes still answers each machine's state at its start
    assert await store.state_changes(["m1"], T + 30 * S, T + 40 * S) == [StateChange(T + 20 * S, "m1", "down", 20)]
    assert await store.state_changes(["m4"], T, T + 60 * S) == []


async def test_product_changes_window_edges_and_the_product_before_the_window(store: Store) -> None:
    await store.write([
        product(T + 20 * S, "B-2"),  # written out of order: the answer is ordered by time
        product(T - 100 * S, "A-0"),
        product(T - 1, "A-1"),  # the last nanosecond before the window: the product at its start
        product(T + 60 * S - 1, "B-3"),  # the window's last nanosecond
        product(T + 60 * S, "C-4"),  # at the window's end: excluded
        product(T - 10 * S, "P-1", machine="m2"),
        product(T, "P-2", machine="m2"),  # at the window's start: in it, and not also "before" it
        product(T + 20 * S, "Q-1", machine="m3"),  # nothing before the window; same time as m1's B-2
        product(T - 5 * S, "X-9", machine="m9"),  # not asked for
        product(T + 5 * S, "X-9", machine="m9"),
    ])
    got = await store.product_changes(["m3", "m2", "m1", "m4"], T, T + 60 * S)
    assert got == [
        ProductChange(T - 10 * S, "m2", "P-1"),
        ProductChange(T - 1, "m1", "A-1"),
        ProductChange(T, "m2", "P-2"),
        ProductChange(T + 20 * S, "m1", "B-2"),
        ProductChange(T + 20 * S, "m3", "Q-1"),
        ProductChange(T + 60 * S - 1, "m1", "B-3"),
    ]
    # a window with no changes still answers each machine's product at its start
    assert await store.product_changes(["m1", "m3"], T + 30 * S, T + 40 * S) == [
        ProductChange(T + 20 * S, "m1", "B-2"), ProductChange(T + 20 * S, "m3", "Q-1")]
    # so does an empty window; and the product written at the end is the one after it
    assert await store.product_changes(["m1"], T + 60 * S, T + 60 * S) == [ProductChange(T + 60 * S - 1, "m1", "B-3")]
    assert await store.product_changes(["m1"], T + 61 * S, T + 3600 * S) == [ProductChange(T + 60 * S, "m1", "C-4")]
    # before any product: nothing; machines with none, or none asked for: nothing
    assert await store.product_changes(["m1"], T - 200 * S, T - 100 * S) == []
    assert await store.product_changes(["m4"], T, T + 60 * S) == []
    assert await store.product_changes([], T, T + 60 * S) == []
    # products are not states
    assert await store.state_changes(["m1", "m2", "m3"], T - 3600 * S, T + 3600 * S) == []


async def test_product_rewrites_are_idempotent(store: Store) -> None:
    facts = [product(T + i * S, f"P-{i % 3}") for i in range(6)] + [product(T + 2 * S, "Z-1", machine="m2")]
    await store.write(facts)
    await store.write(facts)
    await store.write(facts[2:4])  # a replayed part of a batch
    expected = sorted([ProductChange(T + i * S, "m1", f"P-{i % 3}") for i in range(6)]
                      + [ProductChange(T + 2 * S, "m2", "Z-1")], key=lambda c: (c.time_ns, c.machine))
    assert await store.product_changes(["m1", "m2"], T, T + 60 * S) == expected
    # the same key written with another product replaces it: one change, the newer code
    await store.write([product(T + 3 * S, "P-new")])
    got = await store.product_changes(["m1"], T + 3 * S, T + 4 * S)
    assert got == [ProductChange(T + 2 * S, "m1", "P-2"), ProductChange(T + 3 * S, "m1", "P-new")]


ODD_PRODUCTS = [
    "TB 100 size L",  # spaces
    "A,B,C",  # commas
    'say "hi"',  # double quotes
    "it's",  # a single quote
    "k=v x=1i",  # equals, and what looks like more fields
    "back\\slash\\",  # backslashes, one at the end
    '\\"',  # an escaped quote as a line-protocol parser would see it
    "製品-α 100 ü",  # unicode
    "two\nlines",  # a newline inside the string
    "  padded  ",  # leading and trailing spaces
]


async def test_product_strings_round_trip(store: Store) -> None:
    await store.write([product(T + i * S, code) for i, code in enumerate(ODD_PRODUCTS)])
    got = await store.product_changes(["m1"], T, T + 60 * S)
    assert got == [ProductChange(T + i * S, "m1", code) for i, code in enumerate(ODD_PRODUCTS)]
    # and the last of them is the product before a later window
    assert await store.product_changes(["m1"], T + 3600 * S, T + 7200 * S) == [
        ProductChange(T + (len(ODD_PRODUCTS) - 1) * S, "m1", ODD_PRODUCTS[-1])]


async def test_gauge_buckets(store: Store) -> None:
    await store.write([
        gauge(T - 1, 1000.0),
        gauge(T, 20.0), gauge(T + 10 * S, 22.0), gauge(T + 20 * S, 27.0),
        gauge(T + 60 * S, -3.5),
        gauge(T + 120 * S, 99.0),  # the window's end
        gauge(T + 30 * S, 500.0, signal="load", unit=None),
        gauge(T + 30 * S, 700.0, machine="m2"),
    ])
    got = await store.gauge_buckets("m1", "temp", T, T + 120 * S, 60 * S)
    assert sorted(got, key=lambda b: b.start_ns) == [
        GaugeBucket(T, "m1", "temp", 23.0, 20.0, 27.0, 3),
        GaugeBucket(T + 60 * S, "m1", "temp", -3.5, -3.5, -3.5, 1),
    ]
    load = await store.gauge_buckets("m1", "load", T, T + 120 * S, 3600 * S)
    assert load == [GaugeBucket(T, "m1", "load", 500.0, 500.0, 500.0, 1)]
    assert await store.gauge_buckets("m1", "nope", T, T + 120 * S, 60 * S) == []


async def test_last_times_cover_every_kind(store: Store) -> None:
    await store.write([
        count(T + 1 * S, 1, "m1"), state(T + 5 * S, "down", machine="m1"), gauge(T + 3 * S, 1.0, "m1"),
        count(T + 1 * S, 1, "m2"), gauge(T + 9 * S, 1.0, "m2"),
        product(T + 2 * S, "TB-100", "m3"), state(T + 1 * S, "idle", machine="m3"),
        count(T + 99 * S, 1, "m4"),
    ])
    assert await store.last_times(["m1", "m2", "m3", "m5"]) == {"m1": T + 5 * S, "m2": T + 9 * S, "m3": T + 2 * S}
    assert await store.last_times([]) == {}


def _twin(store: Store) -> Store:
    """A second store object on the same database: another replica's connection."""
    if isinstance(store, SqliteStore):
        return SqliteStore(store.path)
    assert isinstance(store, InfluxStore)
    return InfluxStore(store.host, store.port, store.database, username=store.username,
                       password=store._password, token=store.token)


async def test_claim_has_exactly_one_winner_among_concurrent_claimers(store: Store) -> None:
    others = [_twin(store) for _ in range(3)]
    for o in others:
        await o.open()
    try:
        claimers = [store, *others]
        for k in range(3):
            key = f"alert/line-down/line:blade-1/{T + k}/firing"
            won = await asyncio.gather(*(c.claim(key, f"replica-{i}") for i, c in enumerate(claimers)))
            assert sum(won) == 1, (key, won)
            winner = f"replica-{won.index(True)}"
            # the claim is kept: the winner holds it still, a late claimer (a restarted replica) loses
            assert await store.claim(key, winner) is True
            assert await others[0].claim(key, "replica-late") is False
        # another key is a new race
        assert await store.claim("alert/x/machine:m1/1/resolved", "replica-9") is True
    finally:
        for o in others:
            await o.close()


async def test_claim_refuses_keys_it_cannot_hold_plainly(store: Store) -> None:
    for key, owner in (("a b", "o"), ("k'", "o"), ("k", ""), ("k", "o\n"), ("x" * 301, "o"), ('k"', "o")):
        with pytest.raises(StoreError):
            await store.claim(key, owner)


async def test_identifiers_are_rejected(store: Store) -> None:
    await store.write([count(T, 5)])
    evil = ["m1' OR 'a'='a", 'm1" OR 1=1', "M1", "m1;", "a b", "", "m1\n"]
    for bad in evil:
        with pytest.raises(StoreError):
            await store.count_buckets([bad], ["good"], T, T + S, S)
        with pytest.raises(StoreError):
            await store.count_buckets(["m1"], [bad], T, T + S, S)
        with pytest.raises(StoreError):
            await store.state_changes(["m1", bad], T, T + S)
        with pytest.raises(StoreError):
            await store.product_changes([bad, "m1"], T, T + S)
        with pytest.raises(StoreError):
            await store.gauge_buckets(bad, "temp", T, T + S, S)
        with pytest.raises(StoreError):
            await store.last_times([bad])
        with pytest.raises(StoreError):
            await store.write([count(T + 1, 1, machine=bad)])
    with pytest.raises(StoreError):
        await store.count_buckets(["m1"], ["good"], T, T + S, 0)
    assert sums(await store.count_buckets(["m1"], ["good"], T, T + S, S)) == {(T, "m1", "good"): 5}


async def test_large_write_is_batched_and_complete(store: Store) -> None:
    n = 12_345
    await store.write([count(T + i * 1_000_000, 1 + i % 3) for i in range(n)])
    got = await store.count_buckets(["m1"], ["good"], T, T + 3600 * S, 3600 * S)
    assert got == [CountBucket(T, "m1", "good", sum(1 + i % 3 for i in range(n)))]


async def test_concurrent_reads_and_writes(store: Store) -> None:
    async def writer(k: int) -> None:
        await store.write([count(T + (k * 100 + i) * S, 1, machine=f"m{k}") for i in range(50)])

    async def reader() -> None:
        await store.count_buckets(["m1"], ["good"], T, T + 3600 * S, 60 * S)
        await store.state_changes(["m1"], T, T + 3600 * S)

    await asyncio.gather(*(writer(k) for k in range(1, 6)), *(reader() for _ in range(5)))
    got = sums(await store.count_buckets([f"m{k}" for k in range(1, 6)], ["good"], T, T + 3 * 3600 * S,
                                         3 * 3600 * S))
    assert got == {(T, f"m{k}", "good"): 50 for k in range(1, 6)}


async def test_closed_store_refuses_and_does_not_ping(store: Store) -> None:
    await store.close()
    assert await store.ping() is False
    with pytest.raises(StoreError):
        await store.write([count(T, 1)])
    await store.close()  # twice is fine


# ---- store URLs --------------------------------------------------------------------------------


def test_open_store_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIERUKA_INFLUX_TOKEN", raising=False)
    rel = open_store("sqlite:///data/m.db")
    assert isinstance(rel, SqliteStore) and rel.path == Path("data/m.db")
    ab = open_store("sqlite:////var/lib/mieruka/m.db")
    assert isinstance(ab, SqliteStore) and ab.path == Path("/var/lib/mieruka/m.db")
    inf = open_store("influxdb://127.0.0.1:8087/factory")
    assert isinstance(inf, InfluxStore)
    assert (inf.host, inf.port, inf.database, inf.username, inf.token) == ("127.0.0.1", 8087, "factory", None, None)
    cred = open_store("influxdb://bob:p%40ss%3Aw@db.local:8086/factory")
    assert isinstance(cred, InfluxStore) and cred.username == "bob" and cred._password == "p@ss:w"
    assert "p@ss" not in repr(cred)
    monkeypatch.setenv("MIERUKA_INFLUX_TOKEN", "tok-1")
    tok = open_store("influxdb://db.local:8086/factory")
    assert isinstance(tok, InfluxStore) and tok.token == "tok-1"


@pytest.mark.parametrize("url", [
    "sqlite://relative.db", "sqlite:///", "sqlite:relative.db", "postgres://x/y", "m.db", "",
    "influxdb://host:8086", "influxdb://host:8086/", "influxdb://:8086/db", "influxdb://host:port/db",
    "influxdb://host:8086/db?x=1", "influxdb://host:8086/a/b", "influxdb://host:8086/db'x", "influxdb:/host/db",
    "influxdb://:pw@host:8086/db",
])
def test_bad_store_urls(url: str) -> None:
    with pytest.raises(ValueError) as e:
        open_store(url)
    msg = str(e.value)
    assert "sqlite:///relative/path.db" in msg and "influxdb://[user:password@]host:port/database" in msg


async def test_relative_sqlite_url_is_relative_to_the_working_directory(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    st = open_store("sqlite:///sub/dir/m.db")
    await st.open()
    try:
        await st.write([count(T, 1)])
    finally:
        await st.close()
    assert (tmp_path / "sub" / "dir" / "m.db").is_file()


# ---- SQLite specifics --------------------------------------------------------------------------

READER = """
import asyncio, json, sys
from core.store.sqlite import SqliteStore

async def main():
    st = SqliteStore(sys.argv[1], busy_timeout_s=2.0)
    await st.open()
    b = await st.count_buckets(["m1"], ["good"], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    await st.close()
    print(json.dumps([x.total for x in b]))

asyncio.run(main())
"""


async def test_sqlite_is_readable_by_another_process_while_a_writer_writes(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    st = SqliteStore(path)
    await st.open()
    try:
        await st.write([count(T, 5)])
        raw = sqlite3.connect(path, isolation_level=None)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # another writer in the middle of a transaction (the write lock held, rows not committed)
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO counts (machine, signal, time_ns, line, inc) VALUES ('m1', 'good', ?, 'l', 100)",
                    (T + 1,))
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", READER, str(path), str(T), str(T + S), str(S)],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == [5]  # the committed data, without waiting for the writer
        assert await st.count_buckets(["m1"], ["good"], T, T + S, S) == [CountBucket(T, "m1", "good", 5)]
        raw.execute("COMMIT")
        assert await st.count_buckets(["m1"], ["good"], T, T + S, S) == [CountBucket(T, "m1", "good", 105)]
        raw.close()
    finally:
        await st.close()


async def test_sqlite_reader_transaction_does_not_block_writes(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    st = SqliteStore(path, busy_timeout_s=0.2)
    await st.open()
    try:
        await st.write([count(T, 5)])
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT SUM(inc) FROM counts").fetchone()[0] == 5
        # in a rollback journal the commit would need the reader gone; in WAL it does not
        await st.write([count(T + 1, 7)])
        assert reader.execute("SELECT SUM(inc) FROM counts").fetchone()[0] == 5  # its snapshot
        reader.execute("COMMIT")
        assert reader.execute("SELECT SUM(inc) FROM counts").fetchone()[0] == 12
        reader.close()
    finally:
        await st.close()


async def test_sqlite_locked_by_another_writer_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    st = SqliteStore(path, busy_timeout_s=0.2)
    await st.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable):
            await st.write([count(T, 1)])
        other.execute("ROLLBACK")
        await st.write([count(T, 1)])  # nothing half-written: the retry lands once
        assert await st.count_buckets(["m1"], ["good"], T, T + S, S) == [CountBucket(T, "m1", "good", 1)]
    finally:
        other.close()
        await st.close()


async def test_sqlite_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    st = SqliteStore(tmp_path / "a-file" / "m.db")
    with pytest.raises(StoreError):
        await st.open()
    assert await st.ping() is False


# ---- InfluxDB specifics ------------------------------------------------------------------------


async def test_influx_unreachable_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIERUKA_INFLUX_TOKEN", raising=False)
    st = open_store(f"influxdb://127.0.0.1:{free_port()}/nothing")  # nothing listens there
    with pytest.raises(StoreUnavailable):
        await st.open()
    assert await st.ping() is False
    with pytest.raises(StoreUnavailable):
        await st.write([count(T, 1)])
    with pytest.raises(StoreUnavailable):
        await st.count_buckets(["m1"], ["good"], T, T + S, S)
    await st.close()


async def test_influx_stopped_and_restarted(tmp_path: Path) -> None:
    server = Influxd(tmp_path / "influxd")
    server.data_dir.mkdir()
    server.start()
    try:
        st = open_store(server.url("restart"))
        try:
            await st.open()
            await st.write([count(T, 3)])
            server.stop()
            assert await st.ping() is False
            with pytest.raises(StoreUnavailable):
                await st.write([count(T + 1, 4)])
            with pytest.raises(StoreUnavailable):
                await st.state_changes(["m1"], T, T + S)
            server.start()  # same port and data
            assert await st.ping() is True
            await st.write([count(T + 1, 4)])  # the retry after the outage
            assert await st.count_buckets(["m1"], ["good"], T, T + S, S) == [CountBucket(T, "m1", "good", 7)]
        finally:
            await st.close()
    finally:
        server.stop()


async def test_influx_wrong_password_is_a_clear_store_error(influxd_auth_server: Influxd,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIERUKA_INFLUX_TOKEN", raising=False)
    srv = influxd_auth_server
    for url in (f"influxdb://{srv.username}:wrong@{srv.host}:{srv.port}/db1", srv.url(credentials=False)):
        st = open_store(url)
        with pytest.raises(StoreError) as e:
            await st.open()
        assert not isinstance(e.value, StoreUnavailable)  # retrying will not help
        assert "401" in str(e.value) and "credentials" in str(e.value)
        with pytest.raises(StoreError) as e:
            await st.write([count(T, 1)])
        assert "401" in str(e.value)
        await st.close()


async def test_influx_write_only_user_can_write_to_an_existing_database(influxd_auth_server: Influxd,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIERUKA_INFLUX_TOKEN", raising=False)
    srv = influxd_auth_server
    db = srv.fresh_database()
    srv.query(f'CREATE DATABASE "{db}"')
    srv.query("CREATE USER writer WITH PASSWORD 'w-pass'")
    srv.query(f'GRANT ALL ON "{db}" TO writer')
    st = open_store(f"influxdb://writer:w-pass@{srv.host}:{srv.port}/{db}")
    await st.open()  # CREATE DATABASE needs admin: open() goes on, assuming the database exists
    try:
        await st.write([count(T, 2)])
        assert await st.count_buckets(["m1"], ["good"], T, T + S, S) == [CountBucket(T, "m1", "good", 2)]
    finally:
        await st.close()


async def test_influx_escaping_round_trips(influxd_server: Influxd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIERUKA_INFLUX_TOKEN", raising=False)
    db = influxd_server.fresh_database()
    st = open_store(influxd_server.url(db))
    await st.open()
    odd = 'TB "100", size=L \\ back\\slash\nnext 製品'
    units = {"a": "mm/s", "b": "k W", "c": "a,b=c", "d": "°C", "e": "x\\y"}
    try:
        await st.write([product(T, odd), state(T, "down", None)]
                       + [gauge(T + i, 1.5, signal=f"g{k}", unit=u) for i, (k, u) in enumerate(units.items())])
    finally:
        await st.close()
    rows = influxd_server.query('SELECT "product" FROM "products"', db)["results"][0]["series"][0]["values"]
    assert rows == [[T, odd]]
    reason = influxd_server.query('SELECT "reason" FROM "states"', db)["results"][0]["series"][0]["values"]
    assert reason == [[T, -1]]  # "no reason" is written, so an overwrite cannot inherit one
    tags = influxd_server.query('SHOW TAG VALUES FROM "gauges" WITH KEY = "unit"', db)["results"][0]["series"][0]
    assert sorted(v for _, v in tags["values"]) == sorted(["mm/s", "k W", "a,b=c", "°C", "x/y"])


def test_influx_line_protocol() -> None:
    st = InfluxStore("127.0.0.1", 8086, "db")
    assert st.lines([
        count(5, 3),
        state(6, "down", 20), state(7, "running"),
        gauge(8, 20.0, unit="deg C"), gauge(9, 1e-5, signal="load", unit=None),
        product(10, 'A "b" \\c'),
    ]) == [
        "counts,line=line-1,machine=m1,signal=good inc=3i 5",
        'states,line=line-1,machine=m1 state="down",reason=20i 6',
        'states,line=line-1,machine=m1 state="running",reason=-1i 7',
        "gauges,line=line-1,machine=m1,signal=temp,unit=deg\\ C value=20.0 8",
        "gauges,line=line-1,machine=m1,signal=load value=1e-05 9",
        'products,line=line-1,machine=m1 product="A \\"b\\" \\\\c" 10',
    ]
    with pytest.raises(StoreError):
        st.lines([gauge(1, float("nan"))])


class FakeInflux:
    """A tiny InfluxDB v1 API double on 127.0.0.1: records requests, answers as told."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.write_status = 204
        self.write_body = b""
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.path, dict(request.headers), body))
        if request.path == "/ping":
            return web.Response(status=204)
        if request.path == "/write":
            return web.Response(status=self.write_status, body=self.write_body, content_type="application/json")
        return web.json_response({"results": [{"statement_id": 0}]})

    async def __aenter__(self) -> FakeInflux:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def auth_headers(self) -> set[str | None]:
        return {h.get("Authorization") for _, path, h, _ in self.requests if path != "/ping"}


async def test_influx_token_is_sent_as_authorization_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIERUKA_INFLUX_TOKEN", "t0ken-xyz")
    async with FakeInflux() as fake:
        st = open_store(f"influxdb://bob:pw@127.0.0.1:{fake.port}/factory")
        try:
            await st.open()
            await st.write([count(T, 1)])
            await st.state_changes(["m1"], T, T + S)
        finally:
            await st.close()
    assert fake.auth_headers() == {"Token t0ken-xyz"}
    assert {(m, p) for m, p, _, _ in fake.requests} >= {("POST", "/query"), ("POST", "/write"), ("GET", "/query")}


async def test_influx_user_password_is_sent_as_basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIERUKA_INFLUX_TOKEN", raising=False)
    async with FakeInflux() as fake:
        st = open_store(f"influxdb://bob:p%40ss@127.0.0.1:{fake.port}/factory")
        try:
            await st.open()
            await st.write([count(T, 1)])
        finally:
            await st.close()
    assert fake.auth_headers() == {aiohttp.BasicAuth("bob", "p@ss").encode()}


async def test_influx_batches_writes_and_maps_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIERUKA_INFLUX_TOKEN", raising=False)
    async with FakeInflux() as fake:
        st = open_store(f"influxdb://127.0.0.1:{fake.port}/factory")
        try:
            await st.open()
            await st.write([count(T + i, 1) for i in range(12_001)])
            # open() recorded the schema version first (core.store.schema): one point of its own
            assert next(b for _, p, _, b in fake.requests if p == "/write").startswith(b"mieruka_schema version=")
            writes = [b for _, p, _, b in fake.requests if p == "/write" and not b.startswith(b"mieruka_schema ")]
            assert [len(b.split(b"\n")) for b in writes] == [5000, 5000, 2001]
            assert b"\n".join(writes).count(b"inc=1i") == 12_001
            fake.write_status, fake.write_body = 503, b'{"error":"overloaded"}'
            with pytest.raises(StoreUnavailable):
                await st.write([count(T, 1)])
            fake.write_status, fake.write_body = 400, b'{"error":"partial write: field type conflict"}'
            with pytest.raises(StoreError) as e:
                await st.write([count(T, 1)])
            assert not isinstance(e.value, StoreUnavailable) and "field type conflict" in str(e.value)
        finally:
            await st.close()


# ---- facts no store can hold: refused as data (FactRefused), never OverflowError/ValueError ----------


@pytest.mark.parametrize("bad", [
    Fact("count", (1 << 63) - 1, "l1", "m1", "good", 1),  # past 2262-04-11
    Fact("count", 253_402_214_400 * 10**9, "l1", "m1", "good", 1),  # year 9999
    Fact("count", T, "l1", "m1", "good", 1 << 63),  # beyond int64
    Fact("count", T, "l1", "m1", "good", 1.5),
    Fact("gauge", T, "l1", "m1", "temp", float("nan")),
    Fact("state", T, "l1", "m1", "state", "running", reason=1 << 64),
    Fact("product", T, "l1", "m1", "product", "bad\ud800"),  # a lone surrogate
])
async def test_a_fact_the_stores_cannot_hold_is_refused_and_nothing_of_its_batch_crashes(
        store: Store, bad: Fact) -> None:
    assert fact_problem(bad) is not None
    with pytest.raises(FactRefused):
        await store.write([count(T + S, 3), bad])
    await store.write([count(T + 2 * S, 4)])  # the store goes on
    got = sums(await store.count_buckets(["m1"], ["good"], T, T + 60 * S, 60 * S))
    assert got.get((T, "m1", "good"), 0) in (4, 7)  # the good fact of the refused batch: maybe, never twice


def test_fact_problem_accepts_what_the_stores_hold() -> None:
    for f in (count(T, (1 << 63) - 1), Fact("gauge", T, "l1", "m1", "t", 1),
              Fact("state", 0, "l1", "m1", "state", "idle", 7),
              Fact("product", MAX_TIME_NS, "l1", "m1", "product", "P-1")):
        assert fact_problem(f) is None, f


async def test_influx_answering_400_to_a_write_is_a_refusal_of_the_data(influxd_server: Influxd,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A point influxd itself refuses (here a field type conflict, as a partial write): FactRefused,
    not an error the collector would retry for ever."""
    monkeypatch.delenv("MIERUKA_INFLUX_TOKEN", raising=False)
    store = open_store(influxd_server.url())
    assert isinstance(store, InfluxStore)
    await store.open()
    try:
        lines = store.lines
        conflict = f"counts,line=line-1,machine=m1,signal=good inc=1.5 {T + S}"  # inc is an integer field
        monkeypatch.setattr(store, "lines", lambda facts: [*lines(facts), conflict])
        with pytest.raises(FactRefused, match="400"):
            await store.write([count(T, 3)])
        monkeypatch.setattr(store, "lines", lines)
        await store.write([count(T + 2 * S, 4)])
        got = sums(await store.count_buckets(["m1"], ["good"], T, T + 60 * S, 60 * S))
        assert got[(T, "m1", "good")] in (4, 7)  # the store goes on (1.6 drops the whole conflicting batch)
    finally:
        await store.close()


async def test_count_ranges_is_count_buckets_per_range_in_one_request(store: Store) -> None:
    """The read side asks for every product segment's counts at once; each answer must be what
    count_buckets gives for that range (unaligned edges included), empty and reversed ranges empty."""
    from core.store.base import RangeCounts

    await store.write([count(T + k * 7 * S, k + 1, machine=("m1", "m2")[k % 2], signal=("good", "scrap")[k % 3 == 0])
                       for k in range(60)])
    assert isinstance(store, RangeCounts)
    ranges = [(["m1"], T, T + 100 * S), (["m1", "m2"], T + 33 * S + 5, T + 300 * S), (["m2"], T + 50 * S, T),
              ([], T, T + 400 * S), (["m2"], T + 430 * S, T + 500 * S),
              *((["m1"], T + i * S, T + (i + 3) * S) for i in range(0, 420, 3))]
    got = await store.count_ranges(["good", "scrap"], ranges, 60 * S)
    assert len(got) == len(ranges)
    for (machines, a, z), answer in zip(ranges, got, strict=True):
        want = await store.count_buckets(machines, ["good", "scrap"], a, z, 60 * S)
        assert sums(answer) == sums(want), (machines, a, z)
    assert got[0] and got[1] and not got[2] and not got[3] and not got[4]


# ---- operator input (core.store.base.OperatorLog) ---------------------------------------------------


def entry(i: str, recorded: int, t: int, action: str = "stop_reason", line: str = "line-1",
          **kw: Any) -> OperatorEntry:
    defaults: dict[str, Any] = {"author": "lead", "machine": "m1" if action != "note" else None, "new": "{}"}
    return OperatorEntry(id=i, recorded_ns=recorded, action=action, line=line, time_ns=t, **{**defaults, **kw})


async def test_operator_log_round_trips_filters_and_orders(store: Store) -> None:
    assert isinstance(store, OperatorLog)
    odd = 'quote " back\\slash, comma=equals\nnew line 日本語'
    a = entry("a", T + 10, T, until_ns=T + 60 * S, reason=20, text=odd, old='{"reason": 21}', new='{"reason": 20}')
    b = entry("b", T + 5, T + S, action="scrap", reason=None, quantity=-3, new='{"quantity": -3}')
    c = entry("c", T + 7, T + 2 * S, action="note", text="x" * 2000, line="line-2")
    # two entries at one subject time recorded in one nanosecond: both kept, ordered by id
    d1 = entry("d1", T + 20, T + 3 * S, reason=30)
    d2 = entry("d2", T + 20, T + 3 * S, reason=31)
    for e in (a, b, c, d2, d1, a):  # a twice: stored once
        await store.add_entry(e)
    assert await store.entries(["line-1", "line-2"], T, T + 60 * S) == [b, c, a, d1, d2]
    assert await store.entries(["line-1"], T, T + 60 * S) == [b, a, d1, d2]
    assert await store.entries(["line-1"], T, T + 60 * S, ["scrap"]) == [b]
    assert await store.entries(["line-1"], T + S, T + 3 * S) == [b]  # [start, end) by subject time
    assert await store.entries(["line-1"], T, T + 60 * S, []) == []
    assert await store.entries([], T, T + 60 * S) == []
    assert await store.audit(T, T + 21) == [b, c, a, d1, d2]
    assert await store.audit(T + 6, T + 20) == [c, a]  # by recorded time, [start, end)


async def test_operator_log_refuses_what_no_store_holds(store: Store) -> None:
    assert isinstance(store, OperatorLog)
    for bad in (entry("x", T, T, line="no such line"), entry("y", T, T, action="delete"),
                entry("z", T, MAX_TIME_NS + 1)):
        with pytest.raises(FactRefused):
            await store.add_entry(bad)
    assert await store.audit(T - S, T + S) == []


async def test_sqlite_operator_log_schema_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    first = SqliteStore(path)
    await first.open()
    await first.add_entry(entry("a", T, T))
    await first.close()
    again = SqliteStore(path, create=False)  # a reader (the API) opens an existing file: the table stays
    await again.open()
    try:
        assert [e.id for e in await again.audit(T, T + 1)] == ["a"]
    finally:
        await again.close()
