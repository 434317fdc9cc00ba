"""The spool: a durable, bounded, on-disk queue of facts between normalize and the store.

    with Spool(directory, max_bytes=1 << 30, when_full="block") as spool:
        seq = spool.append(facts, state=normalizer.snapshot())   # durable when it returns
        for seq, batch in spool.peek(5000):                      # oldest first, whole batches
            ...                                                  # write them to the store
        spool.confirm(seq)                                       # the store has them: delete

**Format.** One SQLite database, ``<directory>/spool.sqlite3`` (``PRAGMA application_id`` marks it
as a mieruka spool, ``user_version`` is the schema version):

- ``batches(seq INTEGER PRIMARY KEY AUTOINCREMENT, spooled_at_ns, facts, nbytes, payload)``: one
  row per :meth:`Spool.append`. ``seq`` grows strictly and is never reused (not even after the
  spool was emptied), so append order is replay order. ``payload`` is one compact UTF-8 JSON array
  of per-fact arrays ``[kind, time_ns, line, machine, signal, value, reason, unit]``; JSON keeps
  the Python type of a value (``1`` stays int, ``1.0`` stays float, ``"1"`` stays str; NaN and
  infinities round-trip too). ``nbytes`` is the payload's length in bytes, ``spooled_at_ns`` the
  wall time of the append (UTC epoch ns).
- ``state_entries(key, json)``: the collector's state as rows by key (counter baselines, last
  fact times, last states, ...): an append replaces the rows it names, so a commit writes what
  changed since the last one, not the whole state (:meth:`Spool.load_entries`).
- ``state(id = 1, json, saved_at_ns)``: a whole state as one JSON object (:meth:`Spool.save_state`).
- ``quarantine(id, quarantined_at_ns, reason, payload)``: facts the store refused (one row each,
  ``payload`` as in ``batches``), set aside by :meth:`Spool.confirm` in the same transaction
  that deletes their batches, so they never block the facts behind them and are never lost;
  :meth:`Spool.requeue_quarantine` moves them back into the queue (``mieruka spool
  retry-quarantine``, run while the collector is stopped).
  :meth:`Spool.append` writes a batch and the state (or entries) that produced it in **one transaction**, so
  after any crash the saved state matches exactly the facts in the spool (or already confirmed).

**Durability.** WAL journal. A method returns only after its transaction committed. With
``synchronous="full"`` (the default) every commit is fsynced: it survives power loss and an OS
crash. With ``synchronous="normal"`` it survives a crash or ``kill -9`` of the process (the commit
is in the WAL in the OS page cache), but the last commits may roll back on power loss; the
database stays consistent either way. SQLite replays or discards a half-written WAL on the next
open by itself.

**Bound.** ``max_bytes`` bounds the payload bytes of the spooled batches (``stats.bytes``), not the
file: the file is that plus SQLite overhead (a few %) plus the WAL (checkpointed every ~4 MB,
truncated to at most 64 MB). Freed pages are reused; once the spool drains completely with more
than 64 MB free, the free pages are given back to the file system. An append that would take the
payload bytes over ``max_bytes`` finds the spool *full* (``stats.full_events`` counts these):

- ``when_full="block"``: :meth:`Spool.append` raises :class:`SpoolFull` and writes nothing (not
  the state either); the caller stops taking data (no upstream acks) and retries after a
  :meth:`Spool.confirm` made room.
- ``when_full="drop-oldest"``: the oldest batches are deleted until the new one fits (in the same
  transaction as the append), counted in ``stats.dropped_facts`` / ``stats.dropped_batches`` and
  logged as a warning (the first time, then at most once a minute with the count since).

An **empty** spool always accepts one batch, however large, so an oversize batch can never
deadlock "block": it is accepted when the spool is empty and blocks (``SpoolFull``) otherwise;
under "drop-oldest" it evicts everything else. The bytes may then exceed ``max_bytes`` by that one
batch. A disk that is really full (SQLite ``SQLITE_FULL``) also raises :class:`SpoolFull`, with
nothing written, under either policy.

**Single writer.** A spool directory belongs to one collector: opening takes an exclusive
``fcntl.flock`` on ``<directory>/spool.lock`` (which also records the owner's pid); a second
:class:`Spool` on the same directory, in this process or another, raises :class:`SpoolError`.
The kernel releases the lock when its process dies, even by ``kill -9``.

**Threads.** Methods are meant for one caller at a time (e.g. ``asyncio.to_thread``), possibly from
different threads; a lock serialises them anyway. :attr:`Spool.stats` is kept in memory.

**Speed** (measured on the dev machine, 2 vCPUs, batches of 1 000 facts, ~76 payload bytes a
fact): with ``synchronous="full"`` append ≈ 560 000 facts/s, peek + confirm ≈ 400 000 facts/s, the
whole cycle (append, peek, confirm every fact) ≈ 240 000 facts/s (≈ 300 000 with ``"normal"``);
150 000 – 220 000 facts/s inside pytest (``test_throughput`` prints it). Encoding takes ~0.9 µs a fact,
decoding ~1.4 µs (half of it building the frozen ``Fact``s); the rest is SQLite and its fsyncs.
The facts of the latest appends (up to 50 000) are also kept in memory until confirmed: a peek of
those (the writer's usual case, right behind the committer) returns them without decoding; older
batches, and every batch after a restart, are read from the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from core.model import Fact, from_ns

log = logging.getLogger(__name__)

WhenFull = Literal["block", "drop-oldest"]

FILE_NAME = "spool.sqlite3"
LOCK_NAME = "spool.lock"
APPLICATION_ID = 0x6D69_5350  # "miSP": marks the SQLite file as a mieruka spool
SCHEMA_VERSION = 1
DROP_LOG_INTERVAL_S = 60.0
_VACUUM_FREE_BYTES = 64 << 20  # give free pages back once the spool is empty and this much is free
_SQLITE_FULL = 13
# facts of recent appends kept in memory for peek (they are what the writer reads next): reading
# them back costs no JSON decoding and no new Fact objects; the file stays the only record
_RECENT_MAX_FACTS = 50_000

_SCHEMA = """
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    spooled_at_ns INTEGER NOT NULL,
    facts INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE state_entries (
    key TEXT PRIMARY KEY,
    json TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    json TEXT NOT NULL,
    saved_at_ns INTEGER NOT NULL
);
"""
# added after schema version 1 shipped: created on open when missing (same schema version)
_QUARANTINE = """CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    quarantined_at_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL
)"""


class SpoolError(Exception):
    """The spool cannot be opened or used: not a spool, corrupt, locked by another collector,
    closed, or an I/O error. The message names the file or directory."""


class SpoolFull(Exception):
    """:meth:`Spool.append` under ``when_full="block"``: the batch does not fit; nothing was
    written. Retry after :meth:`Spool.confirm` made room."""


@dataclass
class SpoolStats:
    facts: int  # facts in the spool now
    batches: int  # batches (rows) in the spool now
    bytes: int  # payload bytes of the spooled batches (what max_bytes bounds)
    max_bytes: int
    oldest_spooled_at: datetime | None  # wall time (aware UTC) the oldest batch still spooled was appended
    appended_facts: int = 0  # since open
    confirmed_facts: int = 0  # since open
    dropped_facts: int = 0  # since open, by the drop-oldest policy
    dropped_batches: int = 0
    full_events: int = 0  # times append() found the spool full (either policy)
    quarantined: int = 0  # facts in the quarantine now (refused by the store)
    quarantined_total: int = 0  # facts quarantined since open


_ENTRY_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _entry_json(value: Any) -> str:
    """A state entry's JSON, as ``json.dumps(value, separators=(",", ":"))`` writes it. Most
    entries are a signal's last fact time (an int, or None once forgotten): one per fact, so
    those skip the general encoder (~1.7 µs each, the spool's largest cost per gauge value)."""
    if type(value) is int:  # not bool, not an int subclass (their JSON differs)
        return int.__repr__(value)
    if value is None:
        return "null"
    return _ENTRY_ENCODER.encode(value)


def encode(facts: Sequence[Fact]) -> bytes:
    """One batch's payload: a compact JSON array of ``[kind, time_ns, line, machine, signal, value,
    reason, unit]`` arrays, UTF-8 (lone surrogates pass through)."""
    rows = [[f.kind, f.time_ns, f.line, f.machine, f.signal, f.value, f.reason, f.unit] for f in facts]
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def decode(payload: bytes) -> list[Fact]:
    """The facts of a payload made by :func:`encode` (``ValueError``/``TypeError`` if it is not one)."""
    rows = json.loads(payload.decode("utf-8", "surrogatepass"))
    if not isinstance(rows, list):
        raise ValueError("payload is not a JSON array")
    return [Fact(*row) for row in rows]


class Spool:
    """A durable, bounded, on-disk queue of fact batches (see the module docstring)."""

    durable = True

    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int = 1 << 30,
        when_full: WhenFull = "block",
        synchronous: Literal["normal", "full"] = "full",
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if when_full not in ("block", "drop-oldest"):
            raise ValueError(f"when_full must be 'block' or 'drop-oldest', not {when_full!r}")
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.max_bytes = max_bytes
        self.when_full: WhenFull = when_full
        self.synchronous = synchronous
        self._lock = threading.Lock()
        self._drops_unlogged = [0, 0]  # facts, batches dropped since the last warning
        self._recent: dict[int, list[Fact]] = {}  # seq -> the facts appended (see _RECENT_MAX_FACTS)
        self._recent_facts = 0
        self._drop_logged_at: float | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"cannot create spool directory {self.directory}: {e}") from e
        self._lock_fd = self._take_dir_lock()
        try:
            self._db = self._open_db()
            self._stats = self._read_stats()
        except BaseException:
            with contextlib.suppress(Exception):
                self._db.close()
            self._release_dir_lock()
            raise
        self._closed = False
        log.info("spool %s: %d batches, %d facts, %d of %d bytes", self.path, self._stats.batches,
                 self._stats.facts, self._stats.bytes, self.max_bytes)

    # ---- opening / closing -----------------------------------------------------------------------
    def _take_dir_lock(self) -> int:
        lock_path = self.directory / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise SpoolError(f"cannot open spool lock file {lock_path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = ""
            with contextlib.suppress(OSError, ValueError):
                pid = int(os.pread(fd, 32, 0).decode().strip())
                owner = f" (pid {pid})"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolError(f"spool directory {self.directory} is in use by another collector{owner}: "
                                 f"{lock_path} is locked; give each collector its own spool directory") from e
            raise SpoolError(f"cannot lock spool lock file {lock_path}: {e}") from e
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _release_dir_lock(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _open_db(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise SpoolError(f"cannot open spool file {self.path}: {e}") from e
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
            if app_id == 0 and not tables:
                # a new (or empty) file: make it a spool. auto_vacuum must precede the first table.
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                db.execute("PRAGMA journal_mode = WAL")
                db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA application_id = {APPLICATION_ID}; "
                                 f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            elif app_id != APPLICATION_ID:
                raise SpoolError(f"{self.path} is an SQLite database but not a mieruka spool "
                                 f"(application_id {app_id:#x}, tables {sorted(tables)}); move it away or "
                                 "choose another spool directory")
            else:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version != SCHEMA_VERSION:
                    raise SpoolError(f"spool file {self.path} has schema version {version}; this collector "
                                     f"reads version {SCHEMA_VERSION}")
                # spools made before the entries table existed (same schema version otherwise)
                db.execute("CREATE TABLE IF NOT EXISTS state_entries (key TEXT PRIMARY KEY, json TEXT NOT NULL) "
                           "WITHOUT ROWID")
            db.execute(_QUARANTINE)
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(f"spool file {self.path}: cannot use WAL journal mode (got {mode})")
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            db.execute("PRAGMA journal_size_limit = 67108864")
            db.execute("PRAGMA foreign_keys = OFF")
        except SpoolError:
            db.close()
            raise
        except sqlite3.Error as e:
            db.close()
            raise SpoolError(f"{self.path} is not a usable mieruka spool (corrupt or not an SQLite database: "
                             f"{e}); move it away or choose another spool directory") from e
        return db

    def _read_stats(self) -> SpoolStats:
        try:
            batches, facts, nbytes = self._db.execute(
                "SELECT count(*), coalesce(sum(facts), 0), coalesce(sum(nbytes), 0) FROM batches").fetchone()
            oldest = self._oldest()
            quarantined = self._db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        except sqlite3.Error as e:
            raise SpoolError(f"{self.path} is not a usable mieruka spool (corrupt: {e}); move it away or "
                             "choose another spool directory") from e
        return SpoolStats(facts=int(facts), batches=int(batches), bytes=int(nbytes), max_bytes=self.max_bytes,
                          oldest_spooled_at=oldest, quarantined=int(quarantined))

    def _oldest(self) -> datetime | None:
        row = self._db.execute("SELECT spooled_at_ns FROM batches ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else from_ns(int(row[0]))

    def close(self) -> None:
        """Close the file and release the directory lock (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._log_drops(force=True)
            try:
                self._db.close()  # the last connection checkpoints the WAL into the database
            finally:
                self._release_dir_lock()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self.path} is closed")

    # ---- writing ---------------------------------------------------------------------------------
    def append(self, facts: Sequence[Fact], state: dict[str, Any] | None = None,
               entries: dict[str, Any] | None = None) -> int | None:
        """Spool ``facts`` as one batch and, if given, ``state`` as the saved normalizer state and
        ``entries`` as state entries (each key's row replaced: see :meth:`load_entries`), in one
        transaction, committed when this returns. Returns the batch's seq (None when ``facts`` is
        empty: then only ``state`` is saved). Raises :class:`SpoolFull` (nothing written) when the
        spool is full under "block"; under "drop-oldest" evicts the oldest batches to fit."""
        payload = encode(facts) if facts else b""
        state_json = None if state is None else json.dumps(state, separators=(",", ":"))
        entry_rows = [(k, _entry_json(v)) for k, v in (entries or {}).items()]
        nbytes = len(payload)
        with self._lock:
            self._check_open()
            st = self._stats
            fits = st.bytes + nbytes <= self.max_bytes or st.batches == 0
            if facts and not fits:
                st.full_events += 1
                if self.when_full == "block":
                    raise SpoolFull(f"spool {self.path} is full: {st.bytes} of {self.max_bytes} bytes in "
                                    f"{st.batches} batches, this batch needs {nbytes}")
            now_ns = time.time_ns()
            dropped_facts = dropped_batches = dropped_bytes = 0
            seq: int | None = None
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    if facts and not fits:
                        cut, dropped_batches, dropped_facts, dropped_bytes = self._eviction(nbytes)
                        db.execute("DELETE FROM batches WHERE seq <= ?", (cut,))
                        self._forget_recent(cut)
                    if facts:
                        cur = db.execute(
                            "INSERT INTO batches (spooled_at_ns, facts, nbytes, payload) VALUES (?, ?, ?, ?)",
                            (now_ns, len(facts), nbytes, payload))
                        seq = cur.lastrowid
                    if state_json is not None:
                        db.execute("INSERT OR REPLACE INTO state (id, json, saved_at_ns) VALUES (1, ?, ?)",
                                   (state_json, now_ns))
                    if entry_rows:
                        db.executemany("INSERT OR REPLACE INTO state_entries (key, json) VALUES (?, ?)", entry_rows)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.rollback()
                    raise
            except sqlite3.OperationalError as e:
                if getattr(e, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL:
                    st.full_events += 1
                    raise SpoolFull(f"spool {self.path}: the disk is full ({e}); nothing was written") from e
                raise SpoolError(f"spool {self.path}: append failed: {e}") from e
            except sqlite3.Error as e:
                raise SpoolError(f"spool {self.path}: append failed: {e}") from e
            if dropped_batches:
                st.facts -= dropped_facts
                st.batches -= dropped_batches
                st.bytes -= dropped_bytes
                st.dropped_facts += dropped_facts
                st.dropped_batches += dropped_batches
                self._drops_unlogged[0] += dropped_facts
                self._drops_unlogged[1] += dropped_batches
                st.oldest_spooled_at = None if st.batches == 0 else self._oldest()
                self._log_drops()
            if seq is not None:
                if self._recent_facts + len(facts) <= _RECENT_MAX_FACTS:
                    self._recent[seq] = list(facts)
                    self._recent_facts += len(facts)
                if st.batches == 0:
                    st.oldest_spooled_at = from_ns(now_ns)
                st.facts += len(facts)
                st.batches += 1
                st.bytes += nbytes
                st.appended_facts += len(facts)
            return seq

    def _forget_recent(self, upto_seq: int) -> None:
        """Batches up to ``upto_seq`` left the queue: their facts leave the memory too."""
        for seq in [q for q in self._recent if q <= upto_seq]:
            self._recent_facts -= len(self._recent.pop(seq))

    def _eviction(self, nbytes: int) -> tuple[int, int, int, int]:
        """(last seq to delete, batches, facts, bytes) so that ``nbytes`` more fit (or all of them)."""
        need = self._stats.bytes + nbytes - self.max_bytes
        cut = batches = facts = freed = 0
        for seq, n, b in self._db.execute("SELECT seq, facts, nbytes FROM batches ORDER BY seq"):
            cut, batches, facts, freed = seq, batches + 1, facts + n, freed + b
            if freed >= need:
                break
        return cut, batches, facts, freed

    def _log_drops(self, *, force: bool = False) -> None:
        facts, batches = self._drops_unlogged
        if not batches:
            return
        now = time.monotonic()
        if self._drop_logged_at is None:
            log.warning("spool %s is full (%d bytes): dropped the oldest %d facts (%d batches) to make room; "
                        "the store has been unavailable for too long", self.path, self.max_bytes, facts, batches)
        elif force or now - self._drop_logged_at >= DROP_LOG_INTERVAL_S:
            log.warning("spool %s still full: dropped %d more facts (%d batches) since the last warning, "
                        "%d in all", self.path, facts, batches, self._stats.dropped_facts)
        else:
            return
        self._drop_logged_at = now
        self._drops_unlogged = [0, 0]

    def save_state(self, state: dict[str, Any]) -> None:
        """Replace the saved normalizer state (committed when this returns)."""
        self.append((), state)

    # ---- reading ---------------------------------------------------------------------------------
    def peek(self, max_facts: int, *, after: int = 0) -> list[tuple[int, list[Fact]]]:
        """The oldest batches (seq > ``after``) in order as ``(seq, facts)``: whole batches, stopping
        before the total would exceed ``max_facts``, but always at least one batch if there is any.
        Nothing is removed (see :meth:`confirm`); ``after`` lets a caller read past batches it has
        in flight."""
        if max_facts < 1:
            raise ValueError("max_facts must be at least 1")
        out: list[tuple[int, list[Fact]]] = []
        with self._lock:
            self._check_open()
            total = 0
            try:
                cur = self._db.execute("SELECT seq, facts FROM batches WHERE seq > ? ORDER BY seq", (after,))
                try:
                    while True:
                        row = cur.fetchone()
                        if row is None:
                            break
                        seq, n = row
                        if out and total + n > max_facts:
                            break
                        recent = self._recent.get(seq)
                        if recent is not None:
                            out.append((seq, recent))
                        else:
                            (payload,) = self._db.execute("SELECT payload FROM batches WHERE seq = ?",
                                                          (seq,)).fetchone()
                            try:
                                out.append((seq, decode(payload)))
                            except (ValueError, TypeError) as e:
                                raise SpoolError(f"spool {self.path}: batch {seq} is corrupt: {e}") from e
                        total += n
                        if total >= max_facts:
                            break
                finally:
                    cur.close()
            except sqlite3.Error as e:
                raise SpoolError(f"spool {self.path}: peek failed: {e}") from e
        return out

    def confirm(self, upto_seq: int, quarantine: Sequence[tuple[Fact, str]] = ()) -> None:
        """The store confirmed every batch up to and including ``upto_seq``: delete them; the facts
        of ``quarantine`` (fact, why the store refused it), which are among them, go to the
        quarantine in the same transaction."""
        rows = [(time.time_ns(), reason, encode([f])) for f, reason in quarantine]
        with self._lock:
            self._check_open()
            st = self._stats
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    batches, facts, nbytes = db.execute(
                        "SELECT count(*), coalesce(sum(facts), 0), coalesce(sum(nbytes), 0) FROM batches "
                        "WHERE seq <= ?", (upto_seq,)).fetchone()
                    if batches:
                        db.execute("DELETE FROM batches WHERE seq <= ?", (upto_seq,))
                    if batches and rows:
                        db.executemany("INSERT INTO quarantine (quarantined_at_ns, reason, payload) VALUES (?, ?, ?)",
                                       rows)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.rollback()
                    raise
                self._forget_recent(upto_seq)
                if not batches:
                    return
                if rows:
                    st.quarantined += len(rows)
                    st.quarantined_total += len(rows)
                st.facts -= facts
                st.batches -= batches
                st.bytes -= nbytes
                st.confirmed_facts += facts
                st.oldest_spooled_at = None if st.batches == 0 else self._oldest()
                if st.batches == 0:
                    self._maybe_vacuum()
            except sqlite3.Error as e:
                raise SpoolError(f"spool {self.path}: confirm failed: {e}") from e

    def quarantined(self, limit: int | None = None) -> list[tuple[int, datetime, str, Fact]]:
        """The quarantined facts, oldest first, as ``(id, when, reason, fact)``."""
        with self._lock:
            self._check_open()
            try:
                rows = self._db.execute("SELECT id, quarantined_at_ns, reason, payload FROM quarantine ORDER BY id "
                                        "LIMIT ?", (-1 if limit is None else limit,)).fetchall()
            except sqlite3.Error as e:
                raise SpoolError(f"spool {self.path}: cannot read the quarantine: {e}") from e
        try:
            return [(int(i), from_ns(int(t)), str(r), decode(p)[0]) for i, t, r, p in rows]
        except (ValueError, TypeError, IndexError) as e:
            raise SpoolError(f"spool {self.path}: the quarantine is corrupt: {e}") from e

    def requeue_quarantine(self) -> int:
        """Move every quarantined fact back into the queue (one new batch, in one transaction, not
        held to ``max_bytes``: they were spooled once already), for the store to try again;
        returns how many. Meant for a spool no collector runs on (the directory lock makes sure
        of that)."""
        with self._lock:
            self._check_open()
            db = self._db
            try:
                rows = db.execute("SELECT id, payload FROM quarantine ORDER BY id").fetchall()
                if not rows:
                    return 0
                facts = [f for _, p in rows for f in decode(p)]
                payload = encode(facts)
                now_ns = time.time_ns()
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute("INSERT INTO batches (spooled_at_ns, facts, nbytes, payload) VALUES (?, ?, ?, ?)",
                               (now_ns, len(facts), len(payload), payload))
                    db.execute("DELETE FROM quarantine WHERE id <= ?", (rows[-1][0],))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.rollback()
                    raise
            except (ValueError, TypeError) as e:
                raise SpoolError(f"spool {self.path}: the quarantine is corrupt: {e}") from e
            except sqlite3.Error as e:
                raise SpoolError(f"spool {self.path}: cannot requeue the quarantine: {e}") from e
            st = self._stats
            if st.batches == 0:
                st.oldest_spooled_at = from_ns(now_ns)
            st.facts += len(facts)
            st.batches += 1
            st.bytes += len(payload)
            st.quarantined = 0
            log.info("spool %s: %d quarantined facts queued again for the store", self.path, len(facts))
            return len(facts)

    def _maybe_vacuum(self) -> None:
        free, page = (self._db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("freelist_count", "page_size"))
        if free * page > _VACUUM_FREE_BYTES:
            self._db.executescript("PRAGMA incremental_vacuum;")  # execute() would free just one page

    def load_entries(self) -> dict[str, Any]:
        """Every saved state entry, ``{key: value}``, each the last value appended for its key."""
        with self._lock:
            self._check_open()
            try:
                rows = self._db.execute("SELECT key, json FROM state_entries").fetchall()
            except sqlite3.Error as e:
                raise SpoolError(f"spool {self.path}: cannot read the saved state: {e}") from e
        try:
            return {str(k): json.loads(v) for k, v in rows}
        except ValueError as e:
            raise SpoolError(f"spool {self.path}: the saved state is corrupt: {e}") from e

    def load_state(self) -> dict[str, Any] | None:
        """The last saved normalizer state, or None if none was saved."""
        with self._lock:
            self._check_open()
            try:
                row = self._db.execute("SELECT json FROM state WHERE id = 1").fetchone()
            except sqlite3.Error as e:
                raise SpoolError(f"spool {self.path}: cannot read the saved state: {e}") from e
        if row is None:
            return None
        try:
            state = json.loads(row[0])
        except ValueError as e:
            raise SpoolError(f"spool {self.path}: the saved state is corrupt: {e}") from e
        if not isinstance(state, dict):
            raise SpoolError(f"spool {self.path}: the saved state is not a JSON object")
        return state

    @property
    def stats(self) -> SpoolStats:
        """A copy of the live counters (no I/O)."""
        with self._lock:
            return replace(self._stats)
