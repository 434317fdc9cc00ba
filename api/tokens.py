"""API tokens: a JSON file of (name, role, SHA-256 of the token), never the tokens themselves.

A token is 32 random bytes from :mod:`secrets` (``mk_`` + URL-safe base64). Only its SHA-256 is
stored. A plain, unsalted hash is enough *because* the token is high-entropy: guessing a 256-bit
secret from its hash is as hopeless as guessing it outright, so a slow password hash (bcrypt,
scrypt, argon2 — there to stretch short human passwords) would only add latency to every request.

The file (``--tokens FILE`` or ``MIERUKA_TOKENS``) is written atomically (a temp file in the same
folder, fsync, rename) with mode 0600; :class:`TokenFile` re-reads it when it changes on disk
(inode, size or mtime), so ``mieruka token create|revoke`` take effect in a running API without a
restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast, get_args

log = logging.getLogger(__name__)

Role = Literal["read", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
TOKENS_ENV = "MIERUKA_TOKENS"
TOKEN_PREFIX = "mk_"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
FILE_VERSION = 1


def role_allows(held: Role, needed: Role) -> bool:
    """admin ⊃ operator ⊃ read."""
    return ROLES.index(held) >= ROLES.index(needed)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenFileError(ValueError):
    """A token file that cannot be read or written; ``str()`` names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    role: Role
    sha256: str
    created: str  # ISO-8601 UTC


def _parse(path: Path, text: str) -> list[TokenRecord]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise TokenFileError(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list):
        raise TokenFileError(f"{path}: expected an object with a 'tokens' list")
    out: list[TokenRecord] = []
    for i, t in enumerate(doc["tokens"]):
        if not isinstance(t, dict):
            raise TokenFileError(f"{path}: tokens[{i}] is not an object")
        name, role, digest, created = t.get("name"), t.get("role"), t.get("sha256"), t.get("created", "")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise TokenFileError(f"{path}: tokens[{i}].name {name!r} is not a name ({NAME_RE.pattern})")
        if role not in ROLES:
            raise TokenFileError(f"{path}: tokens[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise TokenFileError(f"{path}: tokens[{i}].sha256 is not a SHA-256 hex digest")
        out.append(TokenRecord(name, cast(Role, role), digest, str(created)))
    return out


def read_tokens(path: Path) -> list[TokenRecord]:
    """The records of a token file; a missing file has none. Raises :class:`TokenFileError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise TokenFileError(f"{path}: {e.strerror or e}") from None
    return _parse(path, text)


def write_tokens(path: Path, records: Sequence[TokenRecord]) -> None:
    """Replace the file atomically; the new file has mode 0600 from its creation on."""
    body = json.dumps({"version": FILE_VERSION, "tokens": [asdict(r) for r in records]}, indent=2) + "\n"
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)  # mode 0600
    except OSError as e:
        raise TokenFileError(f"{path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise TokenFileError(f"{path}: {e.strerror or e}") from None
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def create_token(path: Path, name: str, role: Role) -> str:
    """Add a token named ``name`` with ``role``; returns the token (the only time it is seen)."""
    if not NAME_RE.fullmatch(name):
        raise TokenFileError(f"name {name!r} is not allowed: use letters, digits and _ . @ - (at most 64)")
    if role not in ROLES:
        raise TokenFileError(f"role {role!r} is not one of {', '.join(ROLES)}")
    records = read_tokens(path)
    if any(r.name == name for r in records):
        raise TokenFileError(f"{path}: a token named {name!r} exists; revoke it first or pick another name")
    token = new_token()
    created = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    write_tokens(path, [*records, TokenRecord(name, role, token_hash(token), created)])
    return token


def revoke_token(path: Path, name: str) -> TokenRecord:
    records = read_tokens(path)
    gone = [r for r in records if r.name == name]
    if not gone:
        known = ", ".join(r.name for r in records) or "none"
        raise TokenFileError(f"{path}: no token named {name!r}; tokens: {known}")
    write_tokens(path, [r for r in records if r.name != name])
    return gone[0]


class TokenFile:
    """The token file as the API sees it: re-read whenever it changed on disk.

    A file that turns unreadable or malformed while the API runs makes every token invalid (fail
    closed) until it is fixed; the problem is logged once per change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._records: tuple[TokenRecord, ...] = ()
        self.load()

    def load(self) -> tuple[TokenRecord, ...]:
        """Read the file now; raises :class:`TokenFileError` (used at startup, where that is fatal)."""
        stamp = self._stat()
        records = tuple(read_tokens(self.path))
        with self._lock:
            self._stamp, self._records = stamp, records
        return records

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def records(self) -> tuple[TokenRecord, ...]:
        try:
            stamp = self._stat()
        except OSError as e:
            log.error("token file %s cannot be read (%s); no token is valid until it can", self.path, e)
            return ()
        with self._lock:
            if stamp == self._stamp:
                return self._records
        try:
            records = tuple(read_tokens(self.path))
        except TokenFileError as e:
            log.error("token file changed and is not valid (%s); no token is valid until it is fixed", e)
            records = ()
        else:
            log.info("token file %s re-read: %d tokens", self.path, len(records))
        with self._lock:
            self._stamp, self._records = stamp, records
        return records

    def lookup(self, token: str) -> TokenRecord | None:
        digest = token_hash(token)
        found = None
        for r in self.records():
            # compare every record in constant time: no early exit that timing could tell apart
            if hmac.compare_digest(r.sha256, digest):
                found = r
        return found
