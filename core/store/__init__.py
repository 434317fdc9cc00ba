"""Store backends behind one protocol; :func:`open_store` picks one from a store URL.

Store URLs (docs/architecture.md, "Time and formats"):

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``
- ``influxdb://[user[:password]@]host[:port]/database`` (port 8086 by default). The password
  need not be in the URL (where ``ps`` and logs could show it): without one it comes from the
  file named by ``MIERUKA_INFLUX_PASSWORD_FILE`` or from ``MIERUKA_INFLUX_PASSWORD``. A token for
  InfluxDB 2.x/3.x comes from ``MIERUKA_INFLUX_TOKEN_FILE`` or ``MIERUKA_INFLUX_TOKEN`` and is
  sent as ``Authorization: Token <token>``.

No error message shows a password: :func:`mask_url` hides it in a URL that cannot be parsed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from core.plant import ID_RE, read_secret_file
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
    "PASSWORD_ENV",
    "PASSWORD_FILE_ENV",
    "STORE_ENV",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "CountBucket",
    "GaugeBucket",
    "ProductChange",
    "StateChange",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "check_bucket",
    "check_ids",
    "mask_url",
    "open_store",
]

STORE_ENV = "MIERUKA_STORE"  # the store URL, when a command is given no --store
TOKEN_ENV = "MIERUKA_INFLUX_TOKEN"
TOKEN_FILE_ENV = "MIERUKA_INFLUX_TOKEN_FILE"
PASSWORD_ENV = "MIERUKA_INFLUX_PASSWORD"
PASSWORD_FILE_ENV = "MIERUKA_INFLUX_PASSWORD_FILE"
URL_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "or influxdb://[user:password@]host:port/database"
)


def mask_url(url: str) -> str:
    """``url`` with the password part of its user info replaced by ``***``, even when the URL
    is malformed (then rather too much is hidden than too little), cut to 200 characters."""
    scheme_end = url.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else url.find(":") + 1
    at = url.rfind("@")
    if start > 0 and at > start:
        colon = url.find(":", start, at)
        if colon >= 0:
            url = url[:colon + 1] + "***" + url[at:]
    return url if len(url) <= 200 else url[:199] + "…"


def _secret_from_env(value_env: str, file_env: str) -> str | None:
    """The secret in the file named by ``file_env``, else in ``value_env``; None when neither is set."""
    file, value = os.environ.get(file_env), os.environ.get(value_env)
    if file and value:
        raise ValueError(f"both {file_env} and {value_env} are set; set one")
    if file:
        try:
            return read_secret_file(file)
        except ValueError as e:
            raise ValueError(f"{file_env}: {e}") from None
    return value or None
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


def open_store(url: str, *, reader: bool = False, migrate: bool | None = None) -> Store:
    """The store a URL names, not yet opened (``await store.open()``); ``ValueError`` for a bad URL.

    A ``reader`` never creates nor changes the store: a SQLite file must exist, and an older schema is
    read as it is when that is safe, else refused (:mod:`core.store.schema`). Otherwise opening
    migrates an older store, unless ``migrate`` is False (``mieruka migrate`` and backups look first)."""
    def bad(why: str) -> ValueError:
        return ValueError(f"bad store URL {mask_url(url)!r}: {why}; use {URL_FORMS}")

    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///"):
            raise bad("a SQLite URL has three slashes before a relative path, four before an absolute one")
        path = url[len("sqlite:///"):]
        if not path or path.endswith("/") or "?" in path or "#" in path:
            raise bad("no file path")
        from core.store.sqlite import SqliteStore

        return SqliteStore(unquote(path), create=not reader, url=mask_url(url),
                           migrate=(not reader) if migrate is None else migrate)
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
            # a password with an unencoded '/' ends up in the path: then the name is not repeated
            shown = f" {database!r}" if "@" not in database and len(database) <= 80 else ""
            raise bad(f"database name{shown} must match {DATABASE_RE.pattern}")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if username is None and password is not None:
            raise bad("a password needs a user name")
        token = _secret_from_env(TOKEN_ENV, TOKEN_FILE_ENV)
        if password is None:
            password = _secret_from_env(PASSWORD_ENV, PASSWORD_FILE_ENV)
            if password is not None and username is None and token is None:
                raise ValueError(f"{PASSWORD_ENV}(_FILE) is set, but the store URL {mask_url(url)!r} names no "
                                 "user; write influxdb://user@host:port/database")
        from core.store.influx import InfluxStore

        return InfluxStore(host, port, database, username=username, password=password, token=token,
                           migrate=(not reader) if migrate is None else migrate, url=mask_url(url))
    raise bad("unknown scheme")
