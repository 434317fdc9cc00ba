"""The embedded store: one SQLite file in WAL mode (standard library only).

WAL lets other processes (the API, ``sqlite3`` on the command line) read while the collector
writes. Writes are idempotent by fact key: each table's primary key is the key's parts, and
rows are written with ``INSERT OR REPLACE``.

sqlite3 calls block, so they run in worker threads (``asyncio.to_thread``). The store keeps two
connections, one for writes and one for reads, each guarded by its own lock: a connection is
never used by two threads at once, and in WAL mode reads need not wait for a write to finish.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from core.model import Fact
from core.store import check_bucket, check_ids
from core.store.base import (
    OPERATOR_ACTIONS,
    CountBucket,
    CountRange,
    FactRefused,
    GaugeBucket,
    OperatorEntry,
    ProductChange,
    StateChange,
    StoreError,
    StoreUnavailable,
    check_claim,
    check_entry,
    check_facts,
)
from core.store.schema import SCHEMA_VERSION, Migration, check_version, program_version

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    machine TEXT NOT NULL, signal TEXT NOT NULL, time_ns INTEGER NOT NULL,
    line TEXT NOT NULL, inc INTEGER NOT NULL,
    PRIMARY KEY (machine, signal, time_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counts_machine_time ON counts (machine, time_ns);
CREATE TABLE IF NOT EXISTS states (
    machine TEXT NOT NULL, time_ns INTEGER NOT NULL,
    line TEXT NOT NULL, state TEXT NOT NULL, reason INTEGER,
    PRIMARY KEY (machine, time_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gauges (
    machine TEXT NOT NULL, signal TEXT NOT NULL, time_ns INTEGER NOT NULL,
    line TEXT NOT NULL, value REAL NOT NULL, unit TEXT,
    PRIMARY KEY (machine, signal, time_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS gauges_machine_time ON gauges (machine, time_ns);
CREATE TABLE IF NOT EXISTS products (
    machine TEXT NOT NULL, time_ns INTEGER NOT NULL,
    line TEXT NOT NULL, product TEXT NOT NULL,
    PRIMARY KEY (machine, time_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS operator_log (
    id TEXT PRIMARY KEY, recorded_ns INTEGER NOT NULL, author TEXT NOT NULL, action TEXT NOT NULL,
    line TEXT NOT NULL, machine TEXT, time_ns INTEGER NOT NULL, until_ns INTEGER, reason INTEGER,
    quantity INTEGER, text TEXT, old TEXT, new TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS operator_log_line_time ON operator_log (line, time_ns);
CREATE INDEX IF NOT EXISTS operator_log_recorded ON operator_log (recorded_ns);
"""
# operator_log: operator input (core.store.base.OperatorEntry), its own table so the fact tables stay as
# they were; append-only (INSERT OR IGNORE by id).
# states and products: the primary key (machine, time_ns) is already the (machine, time) index.
# claims (Store.claim): the first INSERT of a key wins, the unique key makes every later one a no-op
CLAIMS_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, time_ns INTEGER NOT NULL
) WITHOUT ROWID;
"""
# schema_history (core.store.schema): one row per migration applied; the version itself is PRAGMA user_version
HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_history (
    version INTEGER PRIMARY KEY, applied_ns INTEGER NOT NULL, mieruka TEXT NOT NULL, summary TEXT NOT NULL
);
"""


def _bucket_expr(bucket_ns: int) -> str:
    # floor to an epoch multiple; SQLite's % takes the dividend's sign, hence the double modulo
    b = int(bucket_ns)
    return f"(time_ns - (((time_ns % {b}) + {b}) % {b}))"


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


class SqliteStore:
    """:class:`~core.store.base.Store` on a SQLite file (created with its parent directory if missing,
    unless ``create`` is False: then a missing file is a :class:`StoreError`, as readers want).

    Opening checks the schema version (:mod:`core.store.schema`): with ``migrate`` (the default when
    ``create``) an older store is migrated, in one transaction; without, an older store is read as it
    is when that is safe, else refused naming ``mieruka migrate``; a newer one is always refused."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0, create: bool = True,
                 migrate: bool | None = None, url: str | None = None) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.create = create
        self.migrate_on_open = create if migrate is None else migrate
        self.url = url or f"sqlite:///{self.path}"
        self.found_version: int | None = None  # the version the file had when opened
        self.check_schema = True  # False: open() neither checks nor migrates nor creates tables (mieruka migrate)
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # ---- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        if self._wconn is not None:
            return
        await asyncio.to_thread(self._open_sync)

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: open an existing file only, never create one
        target, uri = (self.path, False) if self.create else (f"{self.path.resolve().as_uri()}?mode=rw", True)
        conn = sqlite3.connect(target, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False, uri=uri)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        return conn

    def _open_sync(self) -> None:
        if not self.create and not self.path.is_file():
            raise StoreError(f"SQLite store {self.path} does not exist (the collector or 'mieruka import' "
                             "creates it)")
        try:
            if self.create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            w = self._connect()
            try:
                mode = w.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: SQLite refused WAL mode (journal_mode is {mode})")
                # FULL: a write the caller was told is confirmed survives a power cut too
                w.execute("PRAGMA synchronous = FULL")
                found = int(w.execute("PRAGMA user_version").fetchone()[0])
                self.found_version = found
                if not self.check_schema:
                    pass
                elif self.migrate_on_open:
                    self._migrate_sync(w)  # checks the version inside its transaction
                else:
                    check_version(found, f"SQLite store {self.path}", self.url, reader=True)
                    w.executescript(SCHEMA)
                    w.executescript(CLAIMS_SCHEMA)
                    if found < SCHEMA_VERSION:
                        log.info("SQLite store %s has schema %d (this mieruka: %d); read as it is, the next "
                                 "writer (or mieruka migrate) migrates it", self.path, found, SCHEMA_VERSION)
                r = self._connect()
            except BaseException:
                w.close()
                raise
        except sqlite3.OperationalError as e:
            raise self._error(e) from e
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open SQLite store {self.path}: {e}") from e
        self._wconn, self._rconn = w, r
        log.info("opened SQLite store %s", self.path)

    def _migrate_sync(self, w: sqlite3.Connection) -> list[Migration]:
        """Create the tables a store lacks and apply the pending migrations, in one write transaction
        (a second writer migrating at the same time waits, then finds nothing to do). An up-to-date store
        takes no write lock: its tables exist, and opening must not wait for another writer's transaction."""
        found = int(w.execute("PRAGMA user_version").fetchone()[0])
        if found == SCHEMA_VERSION:
            for script in (SCHEMA, CLAIMS_SCHEMA, HISTORY_SCHEMA):
                w.executescript(script)  # no-ops on a store that has its tables
            return []
        w.execute("BEGIN IMMEDIATE")
        try:
            found = int(w.execute("PRAGMA user_version").fetchone()[0])
            todo = check_version(found, f"SQLite store {self.path}", self.url, reader=False)
            for script in (SCHEMA, CLAIMS_SCHEMA, HISTORY_SCHEMA):
                for statement in script.split(";"):
                    if statement.strip():
                        w.execute(statement)
            for m in todo:
                w.execute("INSERT OR REPLACE INTO schema_history (version, applied_ns, mieruka, summary) "
                          "VALUES (?, ?, ?, ?)", (m.version, time.time_ns(), program_version(), m.summary))
            if todo:
                w.execute(f"PRAGMA user_version = {int(todo[-1].version)}")
        except BaseException:
            w.execute("ROLLBACK")
            raise
        w.execute("COMMIT")
        if todo:
            log.info("SQLite store %s migrated from schema %d to %d", self.path, found, todo[-1].version)
        return todo

    async def migrate(self) -> list[Migration]:
        """Apply the pending migrations now (``mieruka migrate``); the ones applied."""
        return await self._run(True, self._migrate_sync)

    async def schema_version(self) -> int:
        """The store's schema version now (0: made before versions were recorded)."""
        return int(await self._run(False, lambda c: c.execute("PRAGMA user_version").fetchone()[0]))

    async def close(self) -> None:
        w, r = self._wconn, self._rconn
        self._wconn = self._rconn = None

        def _close() -> None:
            with self._wlock:
                if w is not None:
                    w.close()
            with self._rlock:
                if r is not None:
                    r.close()

        if w is not None or r is not None:
            await asyncio.to_thread(_close)

    # ---- plumbing -----------------------------------------------------------------------
    def _error(self, e: sqlite3.Error) -> StoreError:
        msg = str(e)
        if isinstance(e, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg or "unable to open" in msg):
            return StoreUnavailable(f"SQLite store {self.path} is busy or unreachable: {msg}")
        if isinstance(e, sqlite3.IntegrityError | sqlite3.DataError):
            return FactRefused(f"SQLite store {self.path} refused a fact: {msg}")
        return StoreError(f"SQLite store {self.path}: {msg}")

    async def _run(self, write: bool, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._wconn if write else self._rconn
        if conn is None:
            raise StoreError(f"{self!r} is not open; await store.open() first")
        lock = self._wlock if write else self._rlock

        def call() -> T:
            with lock:
                try:
                    return fn(conn)
                except sqlite3.Error as e:
                    raise self._error(e) from e

        return await asyncio.to_thread(call)

    @staticmethod
    def _read_txn(conn: sqlite3.Connection, queries: Iterable[tuple[str, Sequence[object]]]
                  ) -> list[list[Any]]:
        # one read transaction, so several statements see one snapshot of the file
        conn.execute("BEGIN")
        try:
            return [conn.execute(sql, params).fetchall() for sql, params in queries]
        finally:
            conn.execute("COMMIT")

    # ---- writes -------------------------------------------------------------------------
    async def write(self, facts: Sequence[Fact]) -> None:
        check_facts(facts)  # what SQLite would take but InfluxDB would not is refused here too
        counts: list[tuple[object, ...]] = []
        states: list[tuple[object, ...]] = []
        gauges: list[tuple[object, ...]] = []
        products: list[tuple[object, ...]] = []
        for f in facts:  # ids checked by check_facts above
            if f.kind == "count":
                counts.append((f.machine, f.signal, f.time_ns, f.line, int(f.value)))
            elif f.kind == "state":
                states.append((f.machine, f.time_ns, f.line, str(f.value), f.reason))
            elif f.kind == "gauge":
                gauges.append((f.machine, f.signal, f.time_ns, f.line, float(f.value), f.unit))
            elif f.kind == "product":
                products.append((f.machine, f.time_ns, f.line, str(f.value)))
            else:
                raise StoreError(f"unknown fact kind {f.kind!r}")
        if not facts:
            return

        def _write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if counts:
                    conn.executemany("INSERT OR REPLACE INTO counts (machine, signal, time_ns, line, inc) "
                                     "VALUES (?, ?, ?, ?, ?)", counts)
                if states:
                    conn.executemany("INSERT OR REPLACE INTO states (machine, time_ns, line, state, reason) "
                                     "VALUES (?, ?, ?, ?, ?)", states)
                if gauges:
                    conn.executemany("INSERT OR REPLACE INTO gauges (machine, signal, time_ns, line, value, unit) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", gauges)
                if products:
                    conn.executemany("INSERT OR REPLACE INTO products (machine, time_ns, line, product) "
                                     "VALUES (?, ?, ?, ?)", products)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        try:
            await self._run(True, _write)
        except (OverflowError, ValueError, TypeError) as e:
            # the sqlite3 module refuses a Python value before SQLite sees it (e.g. an int beyond
            # int64): the data is the problem, and the transaction was rolled back
            raise FactRefused(f"SQLite store {self.path} cannot hold a fact of this batch: {e}") from e

    # ---- reads --------------------------------------------------------------------------
    async def count_buckets(
        self, machines: Sequence[str], signals: Sequence[str], start_ns: int, end_ns: int, bucket_ns: int
    ) -> list[CountBucket]:
        check_ids("machine", machines)
        check_ids("signal", signals)
        check_bucket(bucket_ns)
        if not machines or not signals or start_ns >= end_ns:
            return []
        sql = (f"SELECT {_bucket_expr(bucket_ns)} AS b, machine, signal, SUM(inc) FROM counts "
               f"WHERE machine IN ({_placeholders(len(machines))}) AND signal IN ({_placeholders(len(signals))}) "
               "AND time_ns >= ? AND time_ns < ? GROUP BY machine, signal, b")
        params = [*machines, *signals, int(start_ns), int(end_ns)]
        rows = await self._run(False, lambda c: c.execute(sql, params).fetchall())
        return [CountBucket(int(b), str(m), str(s), int(t)) for b, m, s, t in rows]

    async def count_ranges(self, signals: Sequence[str], ranges: Sequence[CountRange],
                           bucket_ns: int) -> list[list[CountBucket]]:
        check_ids("signal", signals)
        check_bucket(bucket_ns)
        queries: list[tuple[str, Sequence[object]]] = []
        live: list[int] = []
        for i, (machines, start_ns, end_ns) in enumerate(ranges):
            check_ids("machine", machines)
            if not machines or not signals or start_ns >= end_ns:
                continue
            live.append(i)
            queries.append((f"SELECT {_bucket_expr(bucket_ns)} AS b, machine, signal, SUM(inc) FROM counts "
                            f"WHERE machine IN ({_placeholders(len(machines))}) AND signal IN "
                            f"({_placeholders(len(signals))}) AND time_ns >= ? AND time_ns < ? "
                            "GROUP BY machine, signal, b", [*machines, *signals, int(start_ns), int(end_ns)]))
        out: list[list[CountBucket]] = [[] for _ in ranges]
        if queries:
            results = await self._run(False, lambda c: self._read_txn(c, queries))
            for i, rows in zip(live, results, strict=True):
                out[i] = [CountBucket(int(b), str(m), str(sg), int(t)) for b, m, sg, t in rows]
        return out

    async def _changes(self, table: str, columns: str, machines: Sequence[str], start_ns: int, end_ns: int
                       ) -> list[list[Any]]:
        # per machine the last row before the window, then the window's rows, in one snapshot;
        # table and columns are constants of this module, machines are checked identifiers
        queries: list[tuple[str, Sequence[object]]] = [
            (f"SELECT time_ns, machine, {columns} FROM {table} WHERE machine = ? AND time_ns < ? "
             "ORDER BY time_ns DESC LIMIT 1", (m, int(start_ns)))
            for m in dict.fromkeys(machines)
        ]
        if start_ns < end_ns:
            queries.append((f"SELECT time_ns, machine, {columns} FROM {table} WHERE machine IN "
                            f"({_placeholders(len(machines))}) AND time_ns >= ? AND time_ns < ?",
                            [*machines, int(start_ns), int(end_ns)]))
        results = await self._run(False, lambda c: self._read_txn(c, queries))
        return [row for rows in results for row in rows]

    async def state_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[StateChange]:
        check_ids("machine", machines)
        if not machines:
            return []
        rows = await self._changes("states", "state, reason", machines, start_ns, end_ns)
        out = [StateChange(int(t), str(m), str(s), None if r is None else int(r)) for t, m, s, r in rows]
        out.sort(key=lambda c: (c.time_ns, c.machine))
        return out

    async def product_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[ProductChange]:
        check_ids("machine", machines)
        if not machines:
            return []
        rows = await self._changes("products", "product", machines, start_ns, end_ns)
        out = [ProductChange(int(t), str(m), str(p)) for t, m, p in rows]
        out.sort(key=lambda c: (c.time_ns, c.machine))
        return out

    async def gauge_buckets(
        self, machine: str, signal: str, start_ns: int, end_ns: int, bucket_ns: int
    ) -> list[GaugeBucket]:
        check_ids("machine", [machine])
        check_ids("signal", [signal])
        check_bucket(bucket_ns)
        if start_ns >= end_ns:
            return []
        sql = (f"SELECT {_bucket_expr(bucket_ns)} AS b, AVG(value), MIN(value), MAX(value), COUNT(*) FROM gauges "
               "WHERE machine = ? AND signal = ? AND time_ns >= ? AND time_ns < ? GROUP BY b ORDER BY b")
        params = (machine, signal, int(start_ns), int(end_ns))
        rows = await self._run(False, lambda c: c.execute(sql, params).fetchall())
        return [GaugeBucket(int(b), machine, signal, float(mean), float(lo), float(hi), int(n))
                for b, mean, lo, hi, n in rows]

    async def last_times(self, machines: Sequence[str]) -> dict[str, int]:
        check_ids("machine", machines)
        if not machines:
            return {}
        # one scalar MAX per machine and table: SQLite answers each from the (machine, time_ns) index
        # end in O(log n); "machine IN (...) GROUP BY machine" walked every row of those machines
        # (a day of 1 Hz gauges made it most of a line status's time)
        tables = ("counts", "states", "gauges", "products")
        one = " UNION ALL ".join(f"SELECT ?, (SELECT MAX(time_ns) FROM {t} WHERE machine = ?)" for t in tables)
        unique = list(dict.fromkeys(machines))
        sql = " UNION ALL ".join([one] * len(unique))
        params = [v for m in unique for _ in tables for v in (m, m)]
        rows = await self._run(False, lambda c: c.execute(sql, params).fetchall())
        out: dict[str, int] = {}
        for m, t in rows:
            if t is not None:
                out[str(m)] = max(out.get(str(m), int(t)), int(t))
        return out

    # ---- operator input (core.store.base.OperatorLog) --------------------------------------
    _ENTRY_COLUMNS = ("id, recorded_ns, author, action, line, machine, time_ns, until_ns, reason, quantity, text, "
                      "old, new")

    async def add_entry(self, entry: OperatorEntry) -> None:
        check_entry(entry)
        row = (entry.id, entry.recorded_ns, entry.author, entry.action, entry.line, entry.machine, entry.time_ns,
               entry.until_ns, entry.reason, entry.quantity, entry.text, entry.old, entry.new)

        def _add(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT OR IGNORE INTO operator_log ({self._ENTRY_COLUMNS}) VALUES "
                         f"({_placeholders(13)})", row)

        await self._run(True, _add)

    @staticmethod
    def _entry(row: Sequence[Any]) -> OperatorEntry:
        i, rec, author, action, line, machine, t, until, reason, qty, text, old, new = row
        return OperatorEntry(str(i), int(rec), str(author), str(action), str(line),
                             None if machine is None else str(machine), int(t),
                             None if until is None else int(until), None if reason is None else int(reason),
                             None if qty is None else int(qty), None if text is None else str(text),
                             None if old is None else str(old), str(new))

    async def entries(self, lines: Sequence[str], start_ns: int, end_ns: int,
                      actions: Sequence[str] | None = None) -> list[OperatorEntry]:
        check_ids("line", lines)
        if not lines or start_ns >= end_ns:
            return []
        acts = sorted(OPERATOR_ACTIONS if actions is None else set(actions) & OPERATOR_ACTIONS)
        if not acts:
            return []
        sql = (f"SELECT {self._ENTRY_COLUMNS} FROM operator_log WHERE line IN ({_placeholders(len(lines))}) "
               f"AND action IN ({_placeholders(len(acts))}) AND time_ns >= ? AND time_ns < ? "
               "ORDER BY recorded_ns, id")
        params = [*lines, *acts, int(start_ns), int(end_ns)]
        rows = await self._run(False, lambda c: c.execute(sql, params).fetchall())
        return [self._entry(r) for r in rows]

    async def audit(self, start_ns: int, end_ns: int) -> list[OperatorEntry]:
        sql = (f"SELECT {self._ENTRY_COLUMNS} FROM operator_log WHERE recorded_ns >= ? AND recorded_ns < ? "
               "ORDER BY recorded_ns, id")
        rows = await self._run(False, lambda c: c.execute(sql, (int(start_ns), int(end_ns))).fetchall())
        return [self._entry(r) for r in rows]
    async def claim(self, key: str, owner: str) -> bool:
        check_claim(key, owner)

        def _claim(conn: sqlite3.Connection) -> bool:
            # one write transaction: SQLite serializes writers across processes, so the first
            # INSERT of the key wins and everyone then reads that winner back
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR IGNORE INTO claims (key, owner, time_ns) VALUES (?, ?, ?)",
                             (key, owner, time.time_ns()))
                row = conn.execute("SELECT owner FROM claims WHERE key = ?", (key,)).fetchone()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return row is not None and str(row[0]) == owner

        return await self._run(True, _claim)

    async def ping(self) -> bool:
        if self._rconn is None:
            return False

        def probe() -> None:
            # a connection of its own: the shared read connection may be busy for seconds with
            # heavy figure reads, and a busy store is not a down one
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, check_same_thread=False)
            try:
                conn.execute("SELECT 1 FROM counts LIMIT 1").fetchall()
            finally:
                conn.close()

        try:
            await asyncio.to_thread(probe)
        except sqlite3.Error as e:
            log.debug("SQLite store %s ping failed: %s", self.path, e)
            return False
        return True
