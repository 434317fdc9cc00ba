"""Online backups of a store, its collector's spool and the API's token file; restores of them.

A backup is a directory:

- ``manifest.json`` (written last: a directory without it is an unfinished backup): the mieruka
  version, the store kind and schema version, ``consistent_until_ns`` (every write the store had
  confirmed before that instant is in the backup), what each table or measurement holds (rows or
  points, fields, first and last time) and the sha256 and size of every file;
- SQLite: ``store.sqlite3``, a copy made with SQLite's online backup API (one read transaction: a
  snapshot of the file as at one instant, while the collector goes on writing in WAL mode);
- InfluxDB: ``influx/<measurement>.lp.gz``, every point as line protocol (ns times), read through
  the store's HTTP API (``SELECT * ... GROUP BY *`` per time chunk, tags from ``SHOW TAG KEYS``, field
  types from ``SHOW FIELD KEYS``), so remote servers and 2.x's v1 API work too;
- ``spool.sqlite3`` (the spool, by the same backup API) and ``tokens`` (the token file, mode 0600)
  when asked for.

A restore checks every file's sha256 and the manifest's schema version before it writes anything,
refuses a target holding data unless ``force``, writes the store back (SQLite: the backup API into
the target file; InfluxDB: line protocol in batches) and checks the rows / points per table or
measurement against the manifest.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.store import mask_url, open_store
from core.store.base import StoreError
from core.store.influx import InfluxStore, escape_str, escape_tag
from core.store.schema import SCHEMA_VERSION, SchemaTooNew, program_version
from core.store.sqlite import SqliteStore

MANIFEST = "manifest.json"
FORMAT = "mieruka-backup"
FORMAT_VERSION = 1
STORE_FILE = "store.sqlite3"
SPOOL_FILE = "spool.sqlite3"
TOKENS_FILE = "tokens"
NS = 1_000_000_000
CHUNK_NS = 3600 * NS  # InfluxDB: one query per measurement and hour of data
RESTORE_BATCH = 5000
# SQLite tables and the time column the manifest reports on
SQLITE_TABLES = {"counts": "time_ns", "states": "time_ns", "gauges": "time_ns", "products": "time_ns",
                 "operator_log": "recorded_ns", "claims": "time_ns", "schema_history": "applied_ns"}

Progress = Callable[[str], None]


class BackupError(Exception):
    """A backup or restore that cannot be done as asked (bad directory, damaged file, a target holding
    data, a newer schema); the message says what to do. Nothing was restored."""


def _quiet(_: str) -> None:
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS, UTC).isoformat()


def _sqlite_path(url: str) -> Path | None:
    store = open_store(url, reader=True)
    return store.path if isinstance(store, SqliteStore) else None


def spool_file(path: Path) -> Path:
    """The spool database a ``--spool`` names: the file, or ``spool.sqlite3`` in the directory."""
    return path / SPOOL_FILE if path.is_dir() else path


def _copy_sqlite(src_path: Path, dst_path: Path, what: str) -> int:
    """Copy a live SQLite file with the online backup API (one snapshot); the time it was taken at."""
    if not src_path.is_file():
        raise BackupError(f"{what} {src_path} does not exist")
    try:
        src = sqlite3.connect(f"{src_path.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
    except sqlite3.Error as e:
        raise BackupError(f"{what} {src_path} cannot be opened: {e}") from None
    try:
        try:
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            raise BackupError(f"{what} {src_path} is not a SQLite database ({e})") from None
        dst = sqlite3.connect(dst_path)
        try:
            t = time.time_ns()  # the snapshot starts after this: every commit before it is in the copy
            src.backup(dst)
            # a plain file: no -wal/-shm beside it in the backup (whoever opens it next sets WAL again)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    return t


def _sqlite_tables(path: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        out: dict[str, dict[str, Any]] = {}
        for table, column in SQLITE_TABLES.items():
            if table in present:
                n, lo, hi = conn.execute(f"SELECT count(*), min({column}), max({column}) FROM {table}").fetchone()
                out[table] = {"rows": int(n), "first_ns": lo, "last_ns": hi}
        return out
    finally:
        conn.close()


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _check_not_newer(version: int, what: str) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"{what} was made by a newer mieruka (schema {version}); this one knows schema "
                           f"{SCHEMA_VERSION}: upgrade mieruka ({program_version()}) first")


# ---- InfluxDB line protocol ------------------------------------------------------------------------


def _key(name: str) -> str:
    return escape_tag(name)


def _field(name: str, value: Any, types: set[str]) -> str:
    if isinstance(value, bool):
        v = "true" if value else "false"
    elif isinstance(value, int) and "integer" in types:
        v = f"{value}i"
    elif isinstance(value, (int, float)) and "string" not in types:
        v = repr(float(value))
    else:
        v = escape_str(str(value))
    return f"{_key(name)}={v}"


async def _influx_series(store: InfluxStore, q: str) -> list[dict[str, Any]]:
    results = await store.query(q)
    series: list[dict[str, Any]] = results[0].get("series", []) if results else []
    return series


async def _influx_measurements(store: InfluxStore) -> list[str]:
    return [str(v[0]) for s in await _influx_series(store, "SHOW MEASUREMENTS") for v in s.get("values", [])]


def _ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _influx_edge(store: InfluxStore, m: str, order: str, where: str = "") -> int | None:
    rows = [r for s in await _influx_series(store, f"SELECT * FROM {_ident(m)} {where} ORDER BY time {order} LIMIT 1")
            for r in s.get("values", [])]
    return int(rows[0][0]) if rows else None


async def _influx_field_counts(store: InfluxStore, m: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in await _influx_series(store, f"SELECT count(*) FROM {_ident(m)}"):
        for row in s.get("values", []):
            for col, n in zip(s["columns"][1:], row[1:], strict=True):
                out[str(col).removeprefix("count_")] = int(n or 0)
    return out


async def _influx_chunk(store: InfluxStore, m: str, a: int, b: int) -> list[dict[str, Any]]:
    """Every point of ``m`` in ``[a, b)``, per series; halves the range while the server cuts its answer
    short (a ``max-row-limit``), so nothing is left out silently."""
    series = await _influx_series(store, f"SELECT * FROM {_ident(m)} WHERE time >= {a} AND time < {b} GROUP BY *")
    if not any(s.get("partial") for s in series):
        return series
    if b - a <= 1:
        raise StoreError(f"InfluxDB cut short its answer for {m} at {a} ns even for one nanosecond; raise its "
                         "[http] max-row-limit")
    mid = a + (b - a) // 2
    return [*await _influx_chunk(store, m, a, mid), *await _influx_chunk(store, m, mid, b)]


async def _backup_influx(store: InfluxStore, out: Path, chunk_ns: int, progress: Progress
                         ) -> tuple[int, dict[str, Any], dict[str, str]]:
    t0 = time.time_ns()  # every write confirmed before this is read by the queries below
    version = await store.schema_version()
    _check_not_newer(version, f"InfluxDB database {store.database}")
    (out / "influx").mkdir()
    measurements: dict[str, Any] = {}
    files: dict[str, str] = {}
    for i, m in enumerate(await _influx_measurements(store)):
        fields: dict[str, set[str]] = {}
        for s in await _influx_series(store, f"SHOW FIELD KEYS FROM {_ident(m)}"):
            for name, kind in s.get("values", []):
                fields.setdefault(str(name), set()).add(str(kind))
        first, last = await _influx_edge(store, m, "ASC"), await _influx_edge(store, m, "DESC")
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in m)[:60]
        rel = f"influx/{i:03d}-{safe}.lp.gz"  # any measurement name makes a plain file name
        points, counts = 0, dict.fromkeys(fields, 0)
        with gzip.open(out / rel, "wt", encoding="utf-8", newline="\n") as f:
            a: int | None = first
            end = max(t0, last + 1) if last is not None else t0  # points stamped ahead of the clock come along
            while a is not None and a < end:
                b = min(a + chunk_ns, end)
                n_before = points
                for s in await _influx_chunk(store, m, a, b):
                    tags = "".join(f",{_key(k)}={escape_tag(v)}" for k, v in sorted(s.get("tags", {}).items()) if v)
                    prefix = _key(m) + tags
                    cols = s["columns"]
                    for row in s.get("values", []):
                        parts = []
                        for c, v in zip(cols[1:], row[1:], strict=True):
                            if v is not None:
                                parts.append(_field(c, v, fields.get(c, set())))
                                counts[c] = counts.get(c, 0) + 1
                        if parts:
                            f.write(f"{prefix} {','.join(parts)} {int(row[0])}\n")
                            points += 1
                # an empty chunk: skip the gap to the next point (a stray point from 1970 costs one query)
                a = b if points > n_before else await _influx_edge(store, m, "ASC", f"WHERE time >= {b}")
        measurements[m] = {"file": rel, "points": points, "fields": counts, "first_ns": first, "last_ns": last}
        files[rel] = sha256_of(out / rel)
        progress(f"  {m}: {points} points")
    return t0, {"schema_version": version, "measurements": measurements}, files


# ---- backup ----------------------------------------------------------------------------------------


def backup(url: str, out: Path, *, spool: Path | None = None, tokens: Path | None = None,
           chunk_ns: int = CHUNK_NS, progress: Progress = _quiet) -> dict[str, Any]:
    """Back up the store at ``url`` (and the spool, the token file) into the new directory ``out``, online;
    the manifest written. :class:`BackupError` for what the caller must fix."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"--out {out} exists and is not an empty directory; give a new directory")
    spool_path = spool_file(spool) if spool is not None else None
    if spool_path is not None and not spool_path.is_file():
        raise BackupError(f"--spool {spool}: no spool there (the spool.sqlite3 file of a collector's --spool-dir)")
    if tokens is not None and not tokens.is_file():
        raise BackupError(f"--tokens {tokens}: no such file")
    try:
        sqlite_path = _sqlite_path(url)
    except ValueError as e:
        raise BackupError(f"--store: {e}") from None
    if sqlite_path is not None and not sqlite_path.is_file():
        raise BackupError(f"--store: the SQLite store {sqlite_path} does not exist")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new one readable by its owner only: notes, token hashes
    manifest: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "mieruka": program_version(),
                                "created": datetime.now(UTC).isoformat(), "store": {"url": mask_url(url)}}
    files: dict[str, str] = {}
    if sqlite_path is not None:
        version = _user_version(sqlite_path)
        _check_not_newer(version, f"SQLite store {sqlite_path}")
        progress(f"backing up SQLite store {sqlite_path} ...")
        t0 = _copy_sqlite(sqlite_path, out / STORE_FILE, "SQLite store")
        tables = _sqlite_tables(out / STORE_FILE)
        for table, info in tables.items():
            progress(f"  {table}: {info['rows']} rows")
        manifest["store"].update({"kind": "sqlite", "schema_version": _user_version(out / STORE_FILE),
                                  "file": STORE_FILE, "tables": tables})
        files[STORE_FILE] = sha256_of(out / STORE_FILE)
    else:
        store = open_store(url, reader=True)
        assert isinstance(store, InfluxStore)
        progress(f"backing up InfluxDB database {store.database} at {store.host}:{store.port} ...")
        store.check_schema = False  # a backup takes a store of any version this code can read

        async def run() -> tuple[int, dict[str, Any], dict[str, str]]:
            await store.open()
            try:
                return await _backup_influx(store, out, chunk_ns, progress)
            finally:
                await store.close()

        t0, info, influx_files = asyncio.run(run())
        manifest["store"].update({"kind": "influxdb", **info})
        files.update(influx_files)
    manifest["consistent_until_ns"] = t0
    manifest["consistent_until"] = _iso(t0)
    if spool_path is not None:
        progress(f"backing up spool {spool_path} ...")
        _copy_sqlite(spool_path, out / SPOOL_FILE, "spool")
        files[SPOOL_FILE] = sha256_of(out / SPOOL_FILE)
        manifest["spool"] = {"file": SPOOL_FILE, "source": str(spool_path)}
    if tokens is not None:
        progress(f"backing up token file {tokens} ...")
        mode = stat.S_IMODE(tokens.stat().st_mode)
        data = tokens.read_bytes()
        fd = os.open(out / TOKENS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        files[TOKENS_FILE] = sha256_of(out / TOKENS_FILE)
        manifest["tokens"] = {"file": TOKENS_FILE, "source": str(tokens), "mode": f"{mode:04o}"}
    manifest["files"] = {rel: {"sha256": digest, "bytes": (out / rel).stat().st_size}
                         for rel, digest in sorted(files.items())}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    progress(f"backup complete in {out}: consistent as at {manifest['consistent_until']}")
    return manifest


# ---- restore ---------------------------------------------------------------------------------------


def read_manifest(src: Path) -> dict[str, Any]:
    """The manifest of the backup in ``src``, every file checked against its sha256."""
    path = src / MANIFEST
    if not path.is_file():
        raise BackupError(f"--from {src}: no {MANIFEST}; not a mieruka backup, or one that did not finish")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError("not a mieruka backup manifest")
        version = int(manifest["store"]["schema_version"])
        kind = manifest["store"]["kind"]
    except (ValueError, KeyError, TypeError) as e:
        raise BackupError(f"{path} is damaged: {e}") from None
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise BackupError(f"{path}: backup format {manifest['format_version']} is newer than this mieruka "
                          f"knows ({FORMAT_VERSION}); restore it with mieruka {manifest.get('mieruka')} or newer")
    _check_not_newer(version, f"the backup in {src}")
    if kind not in ("sqlite", "influxdb"):
        raise BackupError(f"{path}: unknown store kind {kind!r}")
    for rel, info in manifest["files"].items():
        f = src / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BackupError(f"{path}: file name {rel!r} points outside the backup")
        if not f.is_file():
            raise BackupError(f"backup file {f} is missing; the backup is incomplete, nothing restored")
        if sha256_of(f) != info.get("sha256"):
            raise BackupError(f"backup file {f} does not match its sha256 in {MANIFEST}: the backup is damaged, "
                              "nothing restored")
    return manifest


def _restore_sqlite_file(src: Path, dst: Path, force: bool, what: str) -> None:
    if dst.exists() and dst.stat().st_size > 0 and not force:
        raise BackupError(f"{what} {dst} exists; restore into a new file, or pass --force to replace it "
                          "(stop the collector first)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    s = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True)
    try:
        d = sqlite3.connect(dst, timeout=30)
        try:
            s.backup(d)
        finally:
            d.close()
    finally:
        s.close()


def _lines(path: Path) -> Iterator[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                yield line


async def _restore_influx(src: Path, manifest: dict[str, Any], url: str, force: bool, progress: Progress) -> None:
    store = open_store(url, reader=True)
    if not isinstance(store, InfluxStore):
        raise BackupError("this backup is of an InfluxDB store: give an influxdb:// --store")
    store.check_schema = False
    await store.open()
    try:
        present = await _influx_measurements(store)
        if present and not force:
            raise BackupError(f"InfluxDB database {store.database} holds data ({', '.join(present)}); restore "
                              "into a new database, or pass --force to add the backup's points to it")
        before = {m: await _influx_field_counts(store, m) for m in present}
        for m, info in manifest["store"]["measurements"].items():
            batch: list[str] = []
            n = 0
            for line in _lines(src / info["file"]):
                batch.append(line)
                if len(batch) >= RESTORE_BATCH:
                    await store.write_lines(batch)
                    n += len(batch)
                    batch = []
            if batch:
                await store.write_lines(batch)
                n += len(batch)
            if n != info["points"]:
                raise BackupError(f"{info['file']} holds {n} points, the manifest says {info['points']}")
            counts = await _influx_field_counts(store, m)
            for field, expected in info["fields"].items():
                got = counts.get(field, 0)
                if got != expected and not (force and got >= expected and before.get(m)):
                    raise StoreError(f"after the restore, {m}.{field} has {got} points, the backup {expected}; "
                                     "the restore did not complete")
            progress(f"  {m}: {n} points")
    finally:
        await store.close()


def restore(src: Path, url: str, *, spool: Path | None = None, tokens: Path | None = None,
            force: bool = False, progress: Progress = _quiet) -> dict[str, Any]:
    """Restore the backup in ``src`` into the store at ``url`` (and the spool, token file); the manifest."""
    manifest = read_manifest(src)
    kind = manifest["store"]["kind"]
    if spool is not None and "spool" not in manifest:
        raise BackupError(f"--spool: the backup in {src} holds no spool")
    if tokens is not None and "tokens" not in manifest:
        raise BackupError(f"--tokens: the backup in {src} holds no token file")
    try:
        sqlite_path = _sqlite_path(url)
    except ValueError as e:
        raise BackupError(f"--store: {e}") from None
    if (kind == "sqlite") != (sqlite_path is not None):
        raise BackupError(f"the backup in {src} is of a {kind} store; give a "
                          f"{'sqlite:///' if kind == 'sqlite' else 'influxdb://'} --store URL")
    spool_path = spool_file(spool) if spool is not None else None
    if spool_path is not None and spool_path.exists() and not force:
        raise BackupError(f"--spool {spool_path} exists; restore into a new path, or pass --force to replace it")
    if tokens is not None and tokens.exists() and not force:
        raise BackupError(f"--tokens {tokens} exists; restore into a new path, or pass --force to replace it")
    if sqlite_path is not None:
        progress(f"restoring SQLite store {sqlite_path} ...")
        _restore_sqlite_file(src / manifest["store"]["file"], sqlite_path, force, "--store: the SQLite store")
        tables = _sqlite_tables(sqlite_path)
        for table, info in manifest["store"]["tables"].items():
            if tables.get(table, {}).get("rows") != info["rows"]:
                raise StoreError(f"after the restore, table {table} of {sqlite_path} has "
                                 f"{tables.get(table, {}).get('rows')} rows, the backup {info['rows']}")
            progress(f"  {table}: {info['rows']} rows")
    else:
        progress("restoring InfluxDB ...")
        asyncio.run(_restore_influx(src, manifest, url, force, progress))
    if spool_path is not None:
        progress(f"restoring spool {spool_path} ...")
        _restore_sqlite_file(src / manifest["spool"]["file"], spool_path, force, "--spool")
    elif "spool" in manifest:
        progress("the backup holds a spool; pass --spool FILE to restore it too")
    if tokens is not None:
        progress(f"restoring token file {tokens} ...")
        mode = int(manifest["tokens"].get("mode", "0600"), 8) & 0o600
        tokens.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # an existing file (--force) keeps no wider mode
            f.write((src / manifest["tokens"]["file"]).read_bytes())
    elif "tokens" in manifest:
        progress("the backup holds a token file; pass --tokens FILE to restore it too")
    version = int(manifest["store"]["schema_version"])
    if version < SCHEMA_VERSION:
        progress(f"the restored store has schema {version}; the collector (or mieruka migrate) brings it to "
                 f"{SCHEMA_VERSION}")
    progress(f"restore complete: the store as at {manifest['consistent_until']}")
    return manifest
