"""Computed once per refresh period: "now" aligned to the period, and one answer per identical request.

- :class:`Refresh`: the refresh period (default 5 s, ``mieruka api --refresh-period``) and the clock.
  A request that names no instant (no ``as_of``; a window without ``end``) means "now", and "now"
  is the start of the current period (epoch-aligned), so every screen asking within one period
  asks about the same instant and gets the same answer.
- :class:`AnswerCache`: ASGI middleware in front of the read routes (``GET /api/v1/...``, the stream
  excepted). Identical requests within one period cost one computation: the first one computes
  (in a task of its own, so a caller that goes away does not cancel it for the others), the ones
  arriving while it runs wait for it, the ones after it get the kept answer until the period ends.
  The key is everything that changes an answer: the path, the query parameters (in any order),
  the language an ``Accept-Language`` header picks, whether ``Accept`` asks for CSV, and the period.
  The caller's token is not part of it (a role does not change a read answer), but it is checked
  before a kept answer is handed out: a caller the route would refuse goes on to the route and is
  refused there. Only 200 answers are kept; a period's answers are all dropped when the next
  period begins (or a write succeeds: :class:`Generation`), and at most ``max_entries`` answers
  (``max_bytes`` in all) are held.

A period of 0 switches both off (every request computes, "now" is the clock's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.model import from_ns

log = logging.getLogger(__name__)

DEFAULT_REFRESH_PERIOD_S = 5.0
MAX_REFRESH_PERIOD_S = 3600.0
DEFAULT_MAX_ENTRIES = 2048
DEFAULT_MAX_BYTES = 64 << 20
CACHED_PREFIX = "/api/v1/"
NS = 1_000_000_000

Clock = Callable[[], float]  # seconds since the epoch, like time.time


@dataclass(frozen=True, slots=True)
class Refresh:
    """The refresh period and the clock "now" is read from (tests inject one)."""

    period_s: float = DEFAULT_REFRESH_PERIOD_S
    clock: Clock = field(default=time.time)

    def __post_init__(self) -> None:
        if not 0 <= self.period_s <= MAX_REFRESH_PERIOD_S:
            raise ValueError(f"the refresh period must be 0 (off) to {MAX_REFRESH_PERIOD_S:g} s, got {self.period_s}")

    @property
    def on(self) -> bool:
        return self.period_s > 0

    @property
    def period_ns(self) -> int:
        return max(1, round(self.period_s * NS))

    def now_ns(self) -> int:
        """The clock's time in epoch ns, floored to the period when it is on."""
        t = int(self.clock() * NS)
        return t - t % self.period_ns if self.on else t

    def now(self) -> datetime:
        return from_ns(self.now_ns())

    def index(self) -> int:
        """Which period the clock is in (0 when off)."""
        return int(self.clock() * NS) // self.period_ns if self.on else 0


NOW_KEY = "mieruka.now_ns"  # the scope key where AnswerCache pins the period's start for a computation


def now_of(request: Request) -> datetime:
    """What "now" means for this request: the start of the refresh period it is answered for (pinned
    by :class:`AnswerCache`, so an answer computed across a period's end is still about its period)."""
    pinned = request.scope.get(NOW_KEY)
    if isinstance(pinned, int):
        return from_ns(pinned)
    refresh: Refresh | None = getattr(request.app.state, "refresh", None)
    return (refresh or Refresh(0)).now()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Generation:
    """Bumped by every successful write (operator input): kept answers of an older generation are
    dropped, and answers computed before the write are not kept, so the next read sees the write."""

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


Authorize = Callable[[Request], Any]  # an awaitable that raises HTTPException for a caller to refuse


class AnswerCache:
    """See the module docstring. ``authorize(request)`` raises ``HTTPException`` when the route would
    refuse the caller; ``on_result(kind)`` is told ``hit``, ``shared`` or ``miss`` for every request
    it serves."""

    def __init__(self, app: ASGIApp, *, refresh: Refresh, authorize: Authorize, skip: Callable[[str], bool],
                 on_result: Callable[[str], None] = lambda kind: None, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES, generation: Generation | None = None) -> None:
        self.app = app
        self.generation = generation or Generation()
        self.refresh = refresh
        self.authorize = authorize
        self.skip = skip
        self.on_result = on_result
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._period: tuple[int, int] = (-1, -1)  # (refresh period, write generation)
        self._answers: OrderedDict[tuple[Any, ...], Answer] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[tuple[Any, ...], asyncio.Future[Answer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._answers)

    @staticmethod
    def key(scope: Scope, period: tuple[int, int]) -> tuple[Any, ...]:
        from api.deps import parse_accept_language

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = tuple(sorted(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)))
        accept = headers.get("accept", "").lower()
        return (scope["path"], query, parse_accept_language(headers.get("accept-language")), "text/csv" in accept,
                period)

    def _turn(self, period: tuple[int, int]) -> None:
        if period != self._period:
            self._period = period
            self._answers.clear()
            self._bytes = 0

    def _keep(self, key: tuple[Any, ...], answer: Answer) -> None:
        if answer.status != 200 or key[-1] != self._period or len(answer.body) > self.max_bytes // 4:
            return
        self._answers[key] = answer
        self._bytes += len(answer.body)
        while self._answers and (len(self._answers) > self.max_entries or self._bytes > self.max_bytes):
            _, old = self._answers.popitem(last=False)
            self._bytes -= len(old.body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") != "GET" or not self.refresh.on
                or not scope["path"].startswith(CACHED_PREFIX) or self.skip(scope["path"])):
            await self.app(scope, receive, send)
            return
        try:
            await self.authorize(Request(scope))
        except HTTPException:
            await self.app(scope, receive, send)  # the route refuses it, in its own words
            return
        period = self.refresh.index()
        scope[NOW_KEY] = period * self.refresh.period_ns
        turn = (period, self.generation.value)
        self._turn(turn)
        key = self.key(scope, turn)
        answer = self._answers.get(key)
        if answer is not None:
            self._answers.move_to_end(key)
            self.on_result("hit")
        else:
            running = self._inflight.get(key)
            if running is None:
                running = self._start(key, scope)
                self.on_result("miss")
            else:
                self.on_result("shared")
            answer = await asyncio.shield(running)
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        await send({"type": "http.response.body", "body": answer.body, "more_body": False})

    def _start(self, key: tuple[Any, ...], scope: Scope) -> asyncio.Future[Answer]:
        done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        task = asyncio.create_task(self._compute(key, dict(scope), done), name=f"answer {scope['path']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return done

    async def _compute(self, key: tuple[Any, ...], scope: Scope, done: asyncio.Future[Answer]) -> None:
        """Run the route with no client attached (a GET has no body) and hand the answer to all."""
        start: Message = {}
        chunks: list[bytes] = []
        finished = asyncio.Event()
        asked = False

        async def receive() -> Message:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, receive, capture)
            answer = Answer(int(start.get("status", 500)), list(start.get("headers", [])), b"".join(chunks))
        except BaseException as e:
            if not done.done():
                done.set_exception(e)
                done.exception()  # retrieved: a request that went away leaves no warning behind
            if not isinstance(e, Exception):
                raise
            return
        finally:
            finished.set()
            self._inflight.pop(key, None)
        self._keep(key, answer)
        if not done.done():
            done.set_result(answer)
