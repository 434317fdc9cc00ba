"""The InfluxDB store: line protocol to ``/write``, InfluxQL from ``/query`` (the v1 HTTP API).

The v1 API is served natively by InfluxDB 1.x and 3.x and by 2.x through its compatibility
endpoints; the ``influxdb-client`` package's v2 calls answer 404 on InfluxDB 1.x, so this
speaks HTTP with aiohttp directly.

Schema (one measurement per fact kind; every fact's key maps to one series + timestamp, and
InfluxDB keeps one point per series and timestamp, so writes are idempotent):

- ``counts``   tags line, machine, signal        field inc (integer)
- ``states``   tags line, machine                fields state (string), reason (integer, -1 = none)
- ``gauges``   tags line, machine, signal[, unit] field value (float)
- ``products`` tags line, machine                field product (string)
- ``operator_log`` tags line, action, id          fields recorded (integer ns), author, machine, text, old,
  new (strings), until, reason, quantity (integers); the point's time is the entry's subject time. The
  entry's id is a tag, so two entries at one time (even recorded in one nanosecond) are two series and
  never overwrite each other; fields that are None are left out (an entry is written once, never merged).
- ``claims``   tags key, owner                   field claimed (boolean; :meth:`InfluxStore.claim`)
- ``mieruka_schema``  no tags                    fields version (integer), mieruka (string): one point per
  migration applied; the store's schema version is the largest (:mod:`core.store.schema`)

``reason`` is always written: on a point overwrite InfluxDB *merges* field sets, so a field
left out would survive from the earlier point (a stop reason would outlive its removal).

InfluxQL quirks this relies on (checked against influxd 1.6.7):

- ``GROUP BY time(<n>ns)`` accepts nanosecond durations and aligns buckets to epoch multiples;
  the first bucket's time is the aligned boundary even when the window starts inside it, and
  only points inside ``WHERE time >= start AND time < end`` are aggregated.
- ``fill(none)`` leaves out empty buckets (the default fills them with null).
- ``last(*)`` with ``WHERE time < t`` returns the *lower bound of the time range* (0) as the
  time, not the point's time, so "the last state (or product) before start" is
  ``ORDER BY time DESC LIMIT 1`` with ``GROUP BY "machine"`` (the limit applies per group).
- InfluxDB 1.x has no ``Authorization: Token`` scheme (1.8 added one); 1.x is reached with
  user/password (sent as HTTP Basic), 2.x/3.x with a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import aiohttp

from core.model import Fact
from core.store import DATABASE_RE, check_bucket, check_ids
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
from core.store.schema import (
    SCHEMA_MEASUREMENT,
    SCHEMA_VERSION,
    Migration,
    check_version,
    program_version,
)

log = logging.getLogger(__name__)

BATCH_LINES = 5000
# claim(): how long after writing its claim a replica waits before reading the key's claims back
CLAIM_SETTLE_S = 0.5
_MAX_GET_QUERY = 3000  # longer InfluxQL goes in a POST body rather than the URL
_RANGES_PER_QUERY = 100  # count_ranges: statements per request (InfluxDB answers each in order)

# Line protocol: tag keys/values escape comma, equals and space. InfluxDB 1.x never unescapes a
# backslash in a tag, so a backslash before one of those or at the end cannot be written at
# all; only units can hold one (every other tag is an identifier), and a unit is for display,
# so it becomes '/'. Line breaks cannot appear in a tag either.
_TAG_TRANS = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\\": "/",
                            "\n": "\\ ", "\r": "\\ ", "\t": "\\ "})
# String field values: quote, escaping backslash and double quote (newlines are fine inside quotes).
_STR_TRANS = str.maketrans({"\\": "\\\\", '"': '\\"'})


class InfluxHttpError(StoreError):
    """InfluxDB refused a request (4xx); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def escape_tag(value: str) -> str:
    return value.translate(_TAG_TRANS)


def escape_str(value: str) -> str:
    return '"' + value.translate(_STR_TRANS) + '"'


def _or(tag: str, values: Sequence[str]) -> str:
    # values are identifiers (checked), so they need no quoting beyond the single quotes
    return "(" + " OR ".join(f"\"{tag}\" = '{v}'" for v in dict.fromkeys(values)) + ")"


class InfluxStore:
    """:class:`~core.store.base.Store` on InfluxDB's v1 HTTP API.

    ``token`` (sent as ``Authorization: Token <token>``) wins over ``username``/``password``
    (sent as HTTP Basic)."""

    def __init__(
        self,
        host: str,
        port: int,
        database: str,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        *,
        scheme: str = "http",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        batch_lines: int = BATCH_LINES,
        claim_settle_s: float = CLAIM_SETTLE_S,
        migrate: bool = True,
        url: str | None = None,
    ) -> None:
        if not DATABASE_RE.fullmatch(database):
            raise ValueError(f"InfluxDB database name {database!r} must match {DATABASE_RE.pattern}")
        if batch_lines < 1:
            raise ValueError("batch_lines must be at least 1")
        self.host, self.port, self.database = host, port, database
        self.username, self.token = username, token
        self._password = password
        self._base = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._batch_lines = batch_lines
        self.claim_settle_s = claim_settle_s
        self._session: aiohttp.ClientSession | None = None
        self._database_ready = False
        self._prefixes: dict[tuple[str, str, str, str, str | None], str] = {}
        self.migrate_on_open = migrate
        self.url = url or f"influxdb://{host}:{port}/{database}"
        self.found_version: int | None = None  # the version the database had when opened
        self.check_schema = True  # False: open() neither checks nor migrates (backups, restores)

    def __repr__(self) -> str:
        who = f"{self.username}@" if self.username else ""
        return f"InfluxStore({self._base.split('://', 1)[0]}://{who}{self.host}:{self.port}/{self.database})"

    # ---- lifecycle ----------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Token {self.token}"}
        if self.username is not None:
            return {"Authorization": aiohttp.BasicAuth(self.username, self._password or "", encoding="utf-8").encode()}
        return {}

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers())
        if self._database_ready:
            return
        try:
            # idempotent in InfluxQL: succeeds when the database exists
            await self._query(f'CREATE DATABASE "{self.database}"', post=True)
        except StoreUnavailable:
            raise
        except StoreError as e:
            if isinstance(e, InfluxHttpError) and e.status == 401:
                raise
            # e.g. a user with write access but no admin rights, or a 2.x/3.x server without
            # InfluxQL CREATE: the database may well exist; a write will tell if it does not
            log.warning("could not create InfluxDB database %s (%s); assuming it exists", self.database, e)
        if not self.check_schema:
            self._database_ready = True
            return
        found = await self.schema_version()
        self.found_version = found
        check_version(found, f"InfluxDB database {self.database} at {self._base}", self.url,
                      reader=not self.migrate_on_open)
        if self.migrate_on_open:
            await self.migrate()
        elif found < SCHEMA_VERSION:
            log.info("InfluxDB database %s has schema %d (this mieruka: %d); read as it is, the next writer "
                     "(or mieruka migrate) migrates it", self.database, found, SCHEMA_VERSION)
        self._database_ready = True
        log.info("opened %r", self)

    async def schema_version(self) -> int:
        """The database's schema version now (0: made before versions were recorded)."""
        try:
            results = await self._query(f'SELECT max("version") FROM "{SCHEMA_MEASUREMENT}"')
        except StoreUnavailable:
            raise
        except StoreError as e:
            if "database not found" in str(e):  # nothing written yet (and no right to create it)
                return 0
            raise
        for series in _series(results, 0):
            for row in series.get("values", []):
                if row[1] is not None:
                    return int(row[1])
        return 0

    async def migrate(self) -> list[Migration]:
        """Apply the pending migrations (each is idempotent; the version point is written last)."""
        found = await self.schema_version()
        todo = check_version(found, f"InfluxDB database {self.database} at {self._base}", self.url, reader=False)
        for m in todo:
            # migration 1 only records the version; later ones do their work before this point
            line = f"{SCHEMA_MEASUREMENT} version={m.version}i,mieruka={escape_str(program_version())}"
            await self._request("POST", "/write", {"db": self.database, "precision": "ns"}, data=line.encode())
        if todo:
            log.info("InfluxDB database %s migrated from schema %d to %d", self.database, found, todo[-1].version)
        return todo

    async def query(self, q: str, *, post: bool = False) -> list[dict[str, Any]]:
        """Run InfluxQL against this database (``epoch=ns``); the answer's ``results`` (backups)."""
        return await self._query(q, post=post)

    async def write_lines(self, lines: Sequence[str]) -> None:
        """Write line protocol (ns times) as is, in batches; :class:`FactRefused` when InfluxDB refuses it."""
        params = {"db": self.database, "precision": "ns"}
        for i in range(0, len(lines), self._batch_lines):
            body = "\n".join(lines[i:i + self._batch_lines]).encode()
            try:
                await self._request("POST", "/write", params, data=body)
            except InfluxHttpError as e:
                if e.status == 400:
                    raise FactRefused(str(e)) from e
                raise

    async def close(self) -> None:
        session, self._session = self._session, None
        self._database_ready = False
        if session is not None:
            await session.close()

    # ---- HTTP ---------------------------------------------------------------------------
    async def _request(self, method: str, path: str, params: dict[str, str],
                       data: bytes | dict[str, str] | None = None) -> bytes:
        session = self._session
        if session is None:
            raise StoreError(f"{self!r} is not open; await store.open() first")
        url = self._base + path
        try:
            async with session.request(method, url, params=params, data=data) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
            raise StoreUnavailable(f"InfluxDB at {self._base} is unreachable: {self._describe(e)}") from None
        except aiohttp.ClientError as e:
            raise StoreUnavailable(f"InfluxDB at {self._base} failed the request: {self._describe(e)}") from None
        if status < 300:
            return body
        message = _error_message(body)
        if status >= 500 or status == 429:
            raise StoreUnavailable(f"InfluxDB at {self._base} answered {status}: {message}")
        if status == 401:
            raise InfluxHttpError(f"InfluxDB at {self._base} refused the credentials (401: {self._scrub(message)}); "
                                  "check the user in the store URL and MIERUKA_INFLUX_PASSWORD(_FILE), or "
                                  "MIERUKA_INFLUX_TOKEN(_FILE)", status)
        raise InfluxHttpError(f"InfluxDB at {self._base} answered {status}: {self._scrub(message)}", status)

    def _scrub(self, text: str) -> str:
        """``text`` without the password or token, plain or as sent in the Authorization header."""
        for secret in (self._password, self.token, self._headers().get("Authorization")):
            if secret:
                text = text.replace(secret, "***")
                if secret.startswith("Basic "):
                    text = text.replace(secret.removeprefix("Basic "), "***")
        return text

    def _describe(self, e: BaseException) -> str:
        # not repr(): the repr of aiohttp's ClientResponseError carries the request headers, with
        # the Authorization header in them; and the cause is not chained (``from None``) for the
        # same reason, since a logged traceback shows it
        return self._scrub(f"{type(e).__name__}: {e}")

    async def _query(self, q: str, *, post: bool = False) -> list[dict[str, Any]]:
        params = {"db": self.database, "epoch": "ns"}
        if post or len(q) > _MAX_GET_QUERY:
            body = await self._request("POST", "/query", params, data={"q": q})
        else:
            body = await self._request("GET", "/query", {**params, "q": q})
        try:
            answer = json.loads(body)
        except ValueError as e:
            raise StoreError(f"InfluxDB answered something that is not JSON: {body[:200]!r}") from e
        if "error" in answer:
            raise StoreError(f"InfluxDB query failed: {answer['error']} (query: {q})")
        results: list[dict[str, Any]] = answer.get("results", [])
        for r in results:
            if "error" in r:
                raise StoreError(f"InfluxDB query failed: {r['error']} (query: {q})")
        return results

    # ---- writes -------------------------------------------------------------------------
    def _prefix(self, measurement: str, f: Fact) -> str:
        unit = f.unit if measurement == "gauges" else None
        k = (measurement, f.line, f.machine, f.signal, unit)
        p = self._prefixes.get(k)
        if p is None:
            check_ids("line", [f.line])
            check_ids("machine", [f.machine])
            check_ids("signal", [f.signal])
            p = f"{measurement},line={f.line},machine={f.machine}"
            if measurement in ("counts", "gauges"):
                p += f",signal={f.signal}"
            if unit:
                p += f",unit={escape_tag(unit)}"
            p += " "
            if len(self._prefixes) > 100_000:
                self._prefixes.clear()
            self._prefixes[k] = p
        return p

    def lines(self, facts: Sequence[Fact]) -> list[str]:
        """Line protocol for facts (one line each); raises :class:`StoreError` for a bad fact."""
        out: list[str] = []
        for f in facts:
            t = int(f.time_ns)
            if f.kind == "count":
                out.append(f"{self._prefix('counts', f)}inc={int(f.value)}i {t}")
            elif f.kind == "state":
                reason = -1 if f.reason is None else int(f.reason)
                out.append(f"{self._prefix('states', f)}state={escape_str(str(f.value))},reason={reason}i {t}")
            elif f.kind == "gauge":
                v = float(f.value)
                if not math.isfinite(v):
                    raise StoreError(f"gauge {f.machine}.{f.signal} = {v!r} at {t}: only finite numbers are stored")
                out.append(f"{self._prefix('gauges', f)}value={v!r} {t}")
            elif f.kind == "product":
                out.append(f"{self._prefix('products', f)}product={escape_str(str(f.value))} {t}")
            else:
                raise StoreError(f"unknown fact kind {f.kind!r}")
        return out

    async def write(self, facts: Sequence[Fact]) -> None:
        check_facts(facts)  # a point InfluxDB refuses would fail its whole request (400, partial write)
        # a 400 (unparsable point, field type conflict, partial write) is the data's fault: FactRefused
        await self.write_lines(self.lines(facts))

    # ---- reads --------------------------------------------------------------------------
    async def count_buckets(
        self, machines: Sequence[str], signals: Sequence[str], start_ns: int, end_ns: int, bucket_ns: int
    ) -> list[CountBucket]:
        check_ids("machine", machines)
        check_ids("signal", signals)
        check_bucket(bucket_ns)
        if not machines or not signals or start_ns >= end_ns:
            return []
        q = (f'SELECT sum("inc") FROM "counts" WHERE {_or("machine", machines)} AND {_or("signal", signals)} '
             f'AND time >= {int(start_ns)} AND time < {int(end_ns)} '
             f'GROUP BY time({int(bucket_ns)}ns), "machine", "signal" fill(none)')
        out: list[CountBucket] = []
        for series in _series(await self._query(q), 0):
            tags = series.get("tags", {})
            for t, total in series.get("values", []):
                if total is not None:
                    out.append(CountBucket(int(t), tags["machine"], tags["signal"], int(total)))
        return out

    async def count_ranges(self, signals: Sequence[str], ranges: Sequence[CountRange],
                           bucket_ns: int) -> list[list[CountBucket]]:
        check_ids("signal", signals)
        check_bucket(bucket_ns)
        statements: list[str] = []
        live: list[int] = []
        for i, (machines, start_ns, end_ns) in enumerate(ranges):
            check_ids("machine", machines)
            if not machines or not signals or start_ns >= end_ns:
                continue
            live.append(i)
            statements.append(f'SELECT sum("inc") FROM "counts" WHERE {_or("machine", machines)} AND '
                              f'{_or("signal", signals)} AND time >= {int(start_ns)} AND time < {int(end_ns)} '
                              f'GROUP BY time({int(bucket_ns)}ns), "machine", "signal" fill(none)')
        out: list[list[CountBucket]] = [[] for _ in ranges]
        for k in range(0, len(statements), _RANGES_PER_QUERY):  # several statements per request
            results = await self._query("; ".join(statements[k:k + _RANGES_PER_QUERY]))
            for j in range(min(_RANGES_PER_QUERY, len(statements) - k)):
                found: list[CountBucket] = []
                for series in _series(results, j):
                    tags = series.get("tags", {})
                    for t, total in series.get("values", []):
                        if total is not None:
                            found.append(CountBucket(int(t), tags["machine"], tags["signal"], int(total)))
                out[live[k + j]] = found
        return out

    async def _changes(self, measurement: str, fields: Sequence[str], machines: Sequence[str], start_ns: int,
                       end_ns: int) -> list[tuple[str, list[Any]]]:
        """(machine, [time, *fields]) per point: per machine the last point before ``start_ns``, then
        the points in the window; points whose first field is null are left out."""
        # measurement and fields are constants of this module, machines are checked identifiers
        where = _or("machine", machines)
        select = ", ".join(f'"{f}"' for f in fields)
        q = (f'SELECT {select} FROM "{measurement}" WHERE {where} AND time < {int(start_ns)} '
             'GROUP BY "machine" ORDER BY time DESC LIMIT 1')
        if start_ns < end_ns:
            q += (f'; SELECT {select} FROM "{measurement}" WHERE {where} '
                  f'AND time >= {int(start_ns)} AND time < {int(end_ns)} GROUP BY "machine"')
        results = await self._query(q)
        out: list[tuple[str, list[Any]]] = []
        for i in range(len(results)):
            for series in _series(results, i):
                machine = series.get("tags", {}).get("machine", "")
                cols = series["columns"]
                idx = [0, *(cols.index(f) for f in fields)]
                for row in series.get("values", []):
                    picked = [row[j] for j in idx]
                    if picked[1] is not None:
                        out.append((machine, picked))
        return out

    async def state_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[StateChange]:
        check_ids("machine", machines)
        if not machines:
            return []
        out: list[StateChange] = []
        for machine, (t, st, reason) in await self._changes("states", ("state", "reason"), machines,
                                                            start_ns, end_ns):
            out.append(StateChange(int(t), machine, str(st), None if reason is None or reason < 0 else int(reason)))
        out.sort(key=lambda c: (c.time_ns, c.machine))
        return out

    async def product_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[ProductChange]:
        check_ids("machine", machines)
        if not machines:
            return []
        out = [ProductChange(int(t), machine, str(p))
               for machine, (t, p) in await self._changes("products", ("product",), machines, start_ns, end_ns)]
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
        q = (f'SELECT mean("value"), min("value"), max("value"), count("value") FROM "gauges" '
             f"WHERE \"machine\" = '{machine}' AND \"signal\" = '{signal}' "
             f"AND time >= {int(start_ns)} AND time < {int(end_ns)} GROUP BY time({int(bucket_ns)}ns) fill(none)")
        out: list[GaugeBucket] = []
        for series in _series(await self._query(q), 0):
            for t, mean, lo, hi, n in series.get("values", []):
                if n:
                    out.append(GaugeBucket(int(t), machine, signal, float(mean), float(lo), float(hi), int(n)))
        out.sort(key=lambda b: b.start_ns)
        return out

    async def last_times(self, machines: Sequence[str]) -> dict[str, int]:
        check_ids("machine", machines)
        if not machines:
            return {}
        where = _or("machine", machines)
        q = "; ".join(f'SELECT "{field}" FROM "{m}" WHERE {where} GROUP BY "machine" ORDER BY time DESC LIMIT 1'
                      for m, field in (("counts", "inc"), ("states", "state"), ("gauges", "value"),
                                       ("products", "product")))
        results = await self._query(q)
        out: dict[str, int] = {}
        for i in range(len(results)):
            for series in _series(results, i):
                machine = series.get("tags", {}).get("machine")
                for row in series.get("values", []):
                    if machine:
                        out[machine] = max(out.get(machine, int(row[0])), int(row[0]))
        return out

    # ---- operator input (core.store.base.OperatorLog) --------------------------------------
    @staticmethod
    def entry_line(e: OperatorEntry) -> str:
        """The line protocol of one operator entry (see the module docstring)."""
        check_entry(e)
        fields = [f"recorded={int(e.recorded_ns)}i", f"author={escape_str(e.author)}"]
        for name, text in (("machine", e.machine), ("text", e.text), ("old", e.old), ("new", e.new)):
            if text is not None:
                fields.append(f"{name}={escape_str(text)}")
        for name, n in (("until", e.until_ns), ("reason", e.reason), ("quantity", e.quantity)):
            if n is not None:
                fields.append(f"{name}={int(n)}i")
        return f"operator_log,line={e.line},action={e.action},id={escape_tag(e.id)} {','.join(fields)} {int(e.time_ns)}"

    async def add_entry(self, entry: OperatorEntry) -> None:
        body = self.entry_line(entry).encode()
        try:
            await self._request("POST", "/write", {"db": self.database, "precision": "ns"}, data=body)
        except InfluxHttpError as e:
            if e.status == 400:
                raise FactRefused(str(e)) from e
            raise

    async def _entries(self, where: str) -> list[OperatorEntry]:
        results = await self._query(f'SELECT * FROM "operator_log" WHERE {where}')
        out: list[OperatorEntry] = []
        for series in _series(results, 0):
            cols = series["columns"]
            for row in series.get("values", []):
                r = dict(zip(cols, row, strict=True))

                def opt_int(k: str, r: dict[str, Any] = r) -> int | None:
                    return None if r.get(k) is None else int(r[k])

                def opt_str(k: str, r: dict[str, Any] = r) -> str | None:
                    return None if r.get(k) is None else str(r[k])

                out.append(OperatorEntry(str(r["id"]), int(r["recorded"]), str(r["author"]), str(r["action"]),
                                         str(r["line"]), opt_str("machine"), int(r["time"]), opt_int("until"),
                                         opt_int("reason"), opt_int("quantity"), opt_str("text"), opt_str("old"),
                                         str(r.get("new") or "{}")))
        out.sort(key=lambda x: (x.recorded_ns, x.id))
        return out

    async def entries(self, lines: Sequence[str], start_ns: int, end_ns: int,
                      actions: Sequence[str] | None = None) -> list[OperatorEntry]:
        check_ids("line", lines)
        acts = sorted(OPERATOR_ACTIONS if actions is None else set(actions) & OPERATOR_ACTIONS)
        if not lines or not acts or start_ns >= end_ns:
            return []
        return await self._entries(f'{_or("line", lines)} AND {_or("action", acts)} '
                                   f"AND time >= {int(start_ns)} AND time < {int(end_ns)}")

    async def audit(self, start_ns: int, end_ns: int) -> list[OperatorEntry]:
        # by a field: InfluxDB scans the log's series (a few per operator action: small)
        return await self._entries(f'"recorded" >= {int(start_ns)} AND "recorded" < {int(end_ns)}')
    async def claim(self, key: str, owner: str) -> bool:
        """InfluxDB 1.x has no compare-and-set, so the server's clock decides: the claim is written
        *without* a timestamp (influxd stamps it on arrival: one clock for every replica), then,
        after ``claim_settle_s``, every claim of the key is read back and the earliest wins (a tie:
        the smaller owner). Each owner's claim is its own series (``owner`` is a tag), so two
        claims stamped in the same nanosecond do not overwrite each other.

        Assumes one influxd (not a cluster whose nodes stamp with their own clocks) and that a
        claim whose write has been stamped is readable within ``claim_settle_s`` of that; a
        competitor stamped later than ours loses whenever it becomes visible."""
        check_claim(key, owner)  # plain strings: no escaping needed as tags or in the literal below
        body = f"claims,key={key},owner={owner} claimed=true".encode()
        await self._request("POST", "/write", {"db": self.database, "precision": "ns"}, data=body)
        await asyncio.sleep(self.claim_settle_s)
        q = f'SELECT "claimed" FROM "claims" WHERE "key" = \'{key}\' GROUP BY "owner"'
        first: list[tuple[int, str]] = []
        for series in _series(await self._query(q), 0):
            who = series.get("tags", {}).get("owner")
            times = [int(row[0]) for row in series.get("values", [])]
            if who and times:
                first.append((min(times), str(who)))
        if not first:
            raise StoreError(f"InfluxDB did not return the claim of {key!r} just written; is the database "
                             "replicated or its retention policy shorter than a second?")
        return min(first)[1] == owner

    async def ping(self) -> bool:
        if self._session is None:
            return False
        try:
            await self._request("GET", "/ping", {})
        except StoreError:
            return False
        return True


def _series(results: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    if i >= len(results):
        return []
    series: list[dict[str, Any]] = results[i].get("series", [])
    return series


def _error_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        answer = json.loads(text)
    except ValueError:
        return text[:500] or "(empty answer)"
    if isinstance(answer, dict):
        for key in ("error", "message"):
            if key in answer:
                return str(answer[key])
    return text[:500]
