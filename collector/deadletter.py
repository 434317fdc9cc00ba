"""Dead letters: input the collector could not use, counted, logged sparingly and kept on disk.

    dead = DeadLetters(spool_dir / "dead-letters.jsonl", log, collector.stats.dead_letters)
    dead.record("not_json", "payload is not JSON", source="broker", raw=msg.payload, topic=msg.topic)
    dead.flush()                      # before acknowledging the MQTT messages the letters came from

Every :meth:`DeadLetters.record`

- counts the letter in ``counts[kind]`` (the collector's stats, so metrics and tests see it);
- logs a warning the first time a kind is seen, then at most once every ``log_every_s`` per
  kind, saying how many of that kind were left out of the log since the previous line (a
  machine that sends garbage ten times a second must not bury every other log line);
- appends one JSON object per line to ``path`` (when given)::

    {"t": "2026-11-27T08:00:00.123Z", "source": "broker", "kind": "not_json",
     "reason": "payload is not JSON", "topic": "ashikaga-1/press-2/press-2a/counts",
     "payload": "{oops"}

  ``topic`` only when given; ``payload`` holds the raw input when it is valid UTF-8 (``str``
  input always), ``payload_b64`` its base64 otherwise; neither when there was no raw input.

The file is opened lazily (parent directories created) and kept open; :meth:`flush` writes the
buffer and ``fsync``s it. When a line would take the file past ``max_bytes``, the file is
renamed to ``<path>.1`` (replacing the previous old generation) and a new one is started, so the
letters take at most about twice ``max_bytes`` on disk. The first rotation is logged at
WARNING, later ones at DEBUG.

A dead-letter file that cannot be written (disk full, permissions) never stops collection: the
letter is still counted and logged as above, the failure is logged (first one at ERROR, later
ones rate-limited like a kind) and counted in :attr:`DeadLetters.write_errors`, and the next
record tries to open the file again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

__all__ = ["DeadLetters"]


def _utc_ms(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class _RateLimit:
    """Per-key "log now?" decisions: the first time, then at most once every ``every_s``."""

    def __init__(self, every_s: float, clock: Callable[[], float]) -> None:
        self.every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def check(self, key: str) -> tuple[bool, bool, int]:
        """``(log_it, first_time, suppressed_since_last_line)``."""
        now = self._clock()
        last = self._last.get(key)
        if last is None:
            self._last[key] = now
            return True, True, 0
        if now - last >= self.every_s:
            self._last[key] = now
            n = self._suppressed.pop(key, 0)
            return True, False, n
        self._suppressed[key] += 1
        return False, False, 0


class DeadLetters:
    """Counts, logs (rate-limited per kind) and appends to a JSONL file the input the collector
    could not use; see the module docstring. Not thread-safe: call it from the event loop."""

    def __init__(
        self,
        path: Path | str | None,
        logger: logging.Logger,
        counts: Counter[str] | None = None,
        *,
        log_every_s: float = 60.0,
        max_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.path: Path | None = Path(path) if path is not None else None
        self.counts: Counter[str] = counts if counts is not None else Counter()
        self.log_every_s = log_every_s
        self.max_bytes = max_bytes
        self.write_errors = 0  # failed writes (or fsyncs) of the file
        self._log = logger
        self._limit = _RateLimit(log_every_s, clock)
        self._error_limit = _RateLimit(log_every_s, clock)
        self._file: IO[bytes] | None = None
        self._size = 0
        self._rotations = 0

    # ---- recording -------------------------------------------------------------------------
    def record(
        self,
        kind: str,
        reason: str,
        *,
        source: str = "",
        raw: bytes | bytearray | str | None = None,
        topic: str | None = None,
    ) -> None:
        """Count, maybe log, and (with a path) keep one dead letter."""
        self.counts[kind] += 1
        self._maybe_log(kind, reason, source, topic)
        if self.path is not None:
            self._append(self._line(kind, reason, source, raw, topic))

    def _maybe_log(self, kind: str, reason: str, source: str, topic: str | None) -> None:
        log_it, first, suppressed = self._limit.check(kind)
        if not log_it:
            return
        where = source or "?"
        if topic is not None:
            where += f" on {topic}"
        if first:
            self._log.warning("dead letter %s from %s: %s (first of its kind; further ones are logged at most "
                              "every %gs)", kind, where, reason, self.log_every_s)
        else:
            self._log.warning("dead letter %s from %s: %s (%d more %s since the last line, %d in all)", kind, where,
                              reason, suppressed, kind, self.counts[kind])

    def _line(self, kind: str, reason: str, source: str, raw: bytes | bytearray | str | None,
              topic: str | None) -> bytes:
        obj: dict[str, Any] = {"t": _utc_ms(datetime.now(UTC)), "source": source, "kind": kind, "reason": reason}
        if topic is not None:
            obj["topic"] = topic
        if isinstance(raw, str):
            obj["payload"] = raw
        elif raw is not None:
            try:
                obj["payload"] = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                obj["payload_b64"] = base64.b64encode(raw).decode("ascii")
        return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"

    # ---- the file --------------------------------------------------------------------------
    def _append(self, line: bytes) -> None:
        try:
            f = self._open()
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                f = self._rotate()
            f.write(line)
            self._size += len(line)
        except OSError as e:
            self._write_failed(e)

    def _write_failed(self, e: OSError) -> None:
        self.write_errors += 1
        self._drop_file()
        log_it, first, suppressed = self._error_limit.check("write")
        if log_it:
            more = "" if first else f" ({suppressed} more failures since the last line)"
            self._log.error("cannot write dead letters to %s: %s; they are only counted%s", self.path, e, more)

    def _open(self) -> IO[bytes]:
        if self._file is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # kept open across records
            self._size = os.fstat(self._file.fileno()).st_size
        return self._file

    def _rotate(self) -> IO[bytes]:
        assert self.path is not None and self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        old = self.path.with_name(self.path.name + ".1")
        os.replace(self.path, old)
        self._rotations += 1
        level = logging.WARNING if self._rotations == 1 else logging.DEBUG
        self._log.log(level, "dead-letter file %s reached %d bytes; moved it to %s (one old file is kept%s)",
                      self.path, self.max_bytes, old,
                      "; further rotations are not logged" if self._rotations == 1 else "")
        return self._open()

    def _drop_file(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def flush(self) -> None:
        """Write buffered letters and ``fsync`` the file (before acknowledging their messages)."""
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            self._write_failed(e)

    def close(self) -> None:
        """Flush and close the file; a later :meth:`record` opens it again."""
        self.flush()
        self._drop_file()

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
