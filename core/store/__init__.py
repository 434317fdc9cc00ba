"""Store backends behind one protocol; :func:`open_store` picks one from a store URL.

Store URLs (see the design handbook, "Time and formats"):

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``
- ``influxdb://[user:password@]host[:port]/database`` (port 8086 by default); a token for
  InfluxDB 2.x/3.x comes from the environment variable ``MIERUKA_INFLUX_TOKEN`` and is sent as
  ``Authorization: Token <token>``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from core.plant import ID_RE
from core.store.base import (
    CountBucket,
    GaugeBucket,
    ProductChange,
    StateChange,
    Store,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "TOKEN_ENV",
    "CountBucket",
    "GaugeBucket",
    "ProductChange",
    "StateChange",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "check_bucket",
    "check_ids",
    "open_store",
]

TOKEN_ENV = "MIERUKA_INFLUX_TOKEN"
URL_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "or influxdb://[user:password@]host:port/database"
)
# InfluxDB database names reach InfluxQL (quoted) and the /write query string; keep them plain
DATABASE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # used with fullmatch


def check_ids(what: str, values: Iterable[str]) -> None:
    """Raise :class:`StoreError` unless every value is an identifier (``core.plant.ID_RE``).

    Backends call this before any value reaches a query, even though callers have checked
    the values against the plant file already."""
    for v in values:
        # fullmatch: with .match, the pattern's '$' also accepts a trailing newline
        if not isinstance(v, str) or not ID_RE.fullmatch(v):
            raise StoreError(f"{what} {v!r} is not an identifier ([a-z0-9][a-z0-9_-]*)")


def check_bucket(bucket_ns: int) -> None:
    if not isinstance(bucket_ns, int) or isinstance(bucket_ns, bool) or bucket_ns <= 0:
        raise StoreError(f"bucket must be a positive number of nanoseconds, not {bucket_ns!r}")


def open_store(url: str) -> Store:
    """The store a URL names, not yet opened (``await store.open()``); ``ValueError`` for a bad URL."""
    def bad(why: str) -> ValueError:
        return ValueError(f"bad store URL {url!r}: {why}; use {URL_FORMS}")

    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///"):
            raise bad("a SQLite URL has three slashes before a relative path, four before an absolute one")
        path = url[len("sqlite:///"):]
        if not path or path.endswith("/") or "?" in path or "#" in path:
            raise bad("no file path")
        from core.store.sqlite import SqliteStore

        return SqliteStore(unquote(path))
    if url.startswith("influxdb:"):
        parts = urlsplit(url)
        try:
            port = parts.port or 8086
        except ValueError:
            raise bad("the port is not a number from 1 to 65535") from None
        host = parts.hostname
        if not url.startswith("influxdb://") or not host:
            raise bad("no host")
        if parts.query or parts.fragment:
            raise bad("query strings and fragments are not supported")
        database = parts.path.removeprefix("/")
        if not database:
            raise bad("no database name after the host")
        if not DATABASE_RE.fullmatch(database):
            raise bad(f"database name {database!r} must match {DATABASE_RE.pattern}")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if username is None and password is not None:
            raise bad("a password needs a user name")
        token = os.environ.get(TOKEN_ENV) or None
        from core.store.influx import InfluxStore

        return InfluxStore(host, port, database, username=username, password=password, token=token)
    raise bad("unknown scheme")
