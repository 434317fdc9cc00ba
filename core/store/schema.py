"""Schema versions of the stores (docs/architecture.md, "Schema versions").

SQLite keeps its version in ``PRAGMA user_version`` (the file header: read without touching a
table, changed in the same transaction as a migration's DDL, so a crash leaves the old version and
the old schema, or the new and the new); each migration also adds a row to ``schema_history``.
InfluxDB keeps it as points of the measurement ``mieruka_schema`` (field ``version`` integer, field
``mieruka`` the program version; one point per migration at the time it ran): the store's version
is the largest ``version`` there. A store without one is schema 0, what mieruka made before
versions were recorded.

Writers (the collector, ``mieruka import``) migrate an older store when they open it. Readers
(the API) never change a store: they read an older one when every migration it lacks is
*additive* (the old layout reads the same), else they refuse it with :class:`SchemaNeedsMigration`,
which names ``mieruka migrate --store URL``. Any store newer than this code is refused
(:class:`SchemaTooNew`), by readers and writers alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Protocol, runtime_checkable

from core.store.base import StoreError

SCHEMA_MEASUREMENT = "mieruka_schema"  # InfluxDB: not one of the fact, operator or claim measurements


@dataclass(frozen=True, slots=True)
class Migration:
    """What brings a store from ``version - 1`` to ``version``."""

    version: int
    summary: str
    additive: bool  # True: a store without it reads the same (readers may read it unmigrated)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "record the schema version (SQLite: user_version and a schema_history table; InfluxDB: the "
                 f"{SCHEMA_MEASUREMENT} measurement); the data stays as it is", additive=True),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


@runtime_checkable
class VersionedStore(Protocol):
    """What both backends add for schema versions (``check_schema`` False: ``open()`` neither checks nor
    migrates, for ``mieruka migrate`` and backups, which look first)."""

    check_schema: bool

    async def schema_version(self) -> int:
        """The store's version now (0: made before versions were recorded)."""

    async def migrate(self) -> list[Migration]:
        """Apply the pending migrations; the ones applied. :class:`SchemaTooNew` for a newer store."""


class SchemaError(StoreError):
    """The store's schema version does not fit this code."""


class SchemaTooNew(SchemaError):
    """The store was made by a newer mieruka."""


class SchemaNeedsMigration(SchemaError):
    """A reader met a store that must be migrated first; ``command`` says how."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command


def program_version() -> str:
    try:
        return metadata.version("mieruka")
    except metadata.PackageNotFoundError:
        return "unknown"


def pending(found: int) -> list[Migration]:
    """The migrations a store of version ``found`` lacks, oldest first."""
    return [m for m in MIGRATIONS if m.version > found]


def check_version(found: int, store: str, url: str, *, reader: bool) -> list[Migration]:
    """The migrations to apply to a store of version ``found`` (``store`` names it in messages, ``url``
    is the masked URL for the command). Raises :class:`SchemaTooNew` for a newer store and, for a
    ``reader``, :class:`SchemaNeedsMigration` when a pending migration is not additive."""
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(f"{store} was made by a newer mieruka (schema {found}); this one knows schema "
                           f"{SCHEMA_VERSION}: upgrade mieruka ({program_version()}) to read or write it")
    todo = pending(found)
    if reader and any(not m.additive for m in todo):
        command = f"mieruka migrate --store '{url}'"
        raise SchemaNeedsMigration(f"{store} has schema {found}, this mieruka needs schema {SCHEMA_VERSION}; "
                                   f"stop the collector and run: {command}", command)
    return todo
