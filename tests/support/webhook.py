"""A webhook receiver on 127.0.0.1 that records every POST: the far side of alerts, a seam we own.

``fail_first`` answers the first N requests with ``fail_status`` (then 200); every request, failed
or not, is an attempt, and the accepted ones are the records.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() on arrival
    wall: datetime  # and the wall clock (to compare with a simulator's ledger)
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class Receiver:
    def __init__(self, fail_first: int = 0, fail_status: int = 500) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.attempts: list[float] = []
        self.records: list[Received] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with receiver._cond:
                    receiver.attempts.append(time.monotonic())
                    failing = len(receiver.attempts) <= receiver.fail_first
                    if not failing:
                        receiver.records.append(Received(time.monotonic(), datetime.now(UTC), self.path,
                                                         dict(self.headers.items()), json.loads(raw)))
                    receiver._cond.notify_all()
                status = receiver.fail_status if failing else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"failing on purpose" if failing else b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    def url(self, path: str = "/hooks/T000/B000/secret-part") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, pred: Callable[[list[Received]], bool], timeout_s: float) -> list[Received]:
        """The records once ``pred(records)`` holds; AssertionError with what came after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred(list(self.records)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"webhook receiver: condition not met in {timeout_s} s; got "
                                         f"{[(r.body.get('rule'), r.body.get('kind')) for r in self.records]}")
                self._cond.wait(left)
            return list(self.records)

    def kinds(self) -> list[tuple[str | None, str | None]]:
        with self._cond:
            return [(r.body.get("rule"), r.body.get("kind")) for r in self.records]


@contextmanager
def receiver(fail_first: int = 0, fail_status: int = 500) -> Iterator[Receiver]:
    r = Receiver(fail_first, fail_status)
    r._thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
