"""Bounded work per request: figure routes run off the event loop, each request has a time limit.

- :class:`Workers`: a few threads, each running its own event loop. A route whose router uses
  :class:`OffloadedRoute` runs its whole handler there (dependencies, the figure math, building and
  rendering the answer), one request per worker at a time; more requests wait for a free worker.
  The server's own loop only accepts connections and sends answers, so ``/healthz`` is answered at
  once however heavy the figures asked for are (Python threads share the GIL, but the loop gets it
  back every few milliseconds).
- :class:`HomeLoopStore`: where a store's connections belong to the loop that opened it (aiohttp's
  session for InfluxDB), store calls made on a worker are run on that home loop and awaited there
  (:func:`loop_bound`; SQLite is called from the worker directly).
- :class:`TimeLimit`: ASGI middleware giving every request at most ``limit_s`` seconds; past it the
  request is cancelled and answered 503 in the one error shape. A cancelled figure stops at its
  next await (a store read); its worker is free again only once it has, so the number of
  computations running never exceeds the number of workers.
- :func:`check_span`: windows longer than :data:`MAX_WINDOW_DAYS` are refused up front (422).

Nothing here knows a route: a router opts in with ``route_class=OffloadedRoute``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_WORKERS = 4
DEFAULT_REQUEST_TIMEOUT_S = 30.0
MAX_WINDOW_DAYS = 400
MAX_WINDOW = timedelta(days=MAX_WINDOW_DAYS)


def check_span(start: datetime, end: datetime) -> None:
    """422 for a window longer than :data:`MAX_WINDOW_DAYS` (checked before any work starts)."""
    if end - start > MAX_WINDOW:
        days = (end - start) / timedelta(days=1)
        raise HTTPException(422, f"the window {start.isoformat()} – {end.isoformat()} is {days:,.0f} days long; "
                                 f"at most {MAX_WINDOW_DAYS} days are allowed: ask for a shorter window")


class Workers:
    """``size`` threads with an event loop each; :meth:`run` runs a coroutine on a free one."""

    def __init__(self, size: int = DEFAULT_WORKERS) -> None:
        if size < 1:
            raise ValueError(f"workers must be at least 1, got {size}")
        self.size = size
        self._loops: list[asyncio.AbstractEventLoop] = []
        self._threads: list[threading.Thread] = []
        self._free: list[asyncio.AbstractEventLoop] = []
        self._slots: asyncio.Semaphore | None = None
        self._home: asyncio.AbstractEventLoop | None = None
        self._waiting = 0

    @property
    def home(self) -> asyncio.AbstractEventLoop | None:
        return self._home

    @property
    def busy(self) -> int:
        """Workers running a request now (a cancelled one counts until it has really stopped)."""
        return len(self._loops) - len(self._free)

    @property
    def waiting(self) -> int:
        """Requests waiting for a free worker."""
        return self._waiting

    def start(self) -> None:
        """Start the threads; call on the loop that will call :meth:`run` (the server's)."""
        if self._home is not None:
            return
        self._home = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.size)
        for i in range(self.size):
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve(loop: asyncio.AbstractEventLoop = loop, ready: threading.Event = ready) -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()
                # stopped: cancel what is left (requests cut short by shutdown) and close
                pending = asyncio.all_tasks(loop)
                for t in pending:
                    t.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

            th = threading.Thread(target=serve, name=f"api-worker-{i}", daemon=True)
            th.start()
            ready.wait(10)
            self._loops.append(loop)
            self._threads.append(th)
        self._free = list(self._loops)
        log.debug("started %d API workers", self.size)

    def stop(self) -> None:
        for loop in self._loops:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        for th in self._threads:
            th.join(timeout=10)
        self._loops, self._threads, self._free = [], [], []
        self._home = self._slots = None

    async def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Await ``make()`` run on a worker loop; waits for a free worker first.

        If the caller is cancelled (the time limit), the worker's task is cancelled too; the worker
        counts as busy until that task has really ended."""
        slots, home = self._slots, self._home
        if slots is None or home is None:  # not started (an app without lifespan): run here
            return await make()
        self._waiting += 1
        try:
            await slots.acquire()
        finally:
            self._waiting -= 1
        loop = self._free.pop()
        finished: concurrent.futures.Future[T] = concurrent.futures.Future()
        tasks: list[asyncio.Task[T]] = []

        def give_back() -> None:
            self._free.append(loop)
            slots.release()

        def done(task: asyncio.Task[T]) -> None:  # on the worker, once the task has ended
            with contextlib.suppress(RuntimeError):  # the home loop is closed: nothing to give back
                home.call_soon_threadsafe(give_back)
            if task.cancelled():
                finished.cancel()
            elif (exc := task.exception()) is not None:
                finished.set_exception(exc)
            else:
                finished.set_result(task.result())

        coro = make()

        def start() -> None:
            task = loop.create_task(coro)
            tasks.append(task)
            task.add_done_callback(done)

        try:
            loop.call_soon_threadsafe(start)
        except BaseException:
            coro.close()
            give_back()
            raise
        try:
            return await asyncio.shield(asyncio.wrap_future(finished))
        except asyncio.CancelledError:
            # start() ran or is queued before this on the worker's loop, so tasks[0] exists by then
            loop.call_soon_threadsafe(lambda: tasks[0].cancel())
            raise


def loop_bound(store: object) -> bool:
    """Whether a store's connections belong to the loop that opened it, so that calls from a worker
    must hop to that loop (InfluxDB's aiohttp session). SQLite's do not: each call runs in a thread
    under the store's own locks, so a worker calls it directly and turns rows into objects on its own
    loop, not on the server's. A store may say so itself with a boolean ``loop_bound`` attribute."""
    from core.store.sqlite import SqliteStore

    declared = getattr(store, "loop_bound", None)
    if isinstance(declared, bool):
        return declared
    return not isinstance(store, SqliteStore)


class HomeLoopStore:
    """A store whose coroutine methods, called from any loop, run on the loop that owns it."""

    def __init__(self, store: Any, home: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._home = home

    def __repr__(self) -> str:
        return f"HomeLoopStore({self._store!r})"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if asyncio.get_running_loop() is self._home:
                return await attr(*args, **kwargs)
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(attr(*args, **kwargs), self._home))

        return call


class OffloadedRoute(APIRoute):
    """A route whose handler runs on one of ``app.state.workers`` instead of the server's loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def offloaded(request: Request) -> Response:
            workers: Workers | None = getattr(request.app.state, "workers", None)
            if workers is None:
                return await handler(request)
            # the ASGI receive channel belongs to the server's loop: read a body here (Starlette
            # caches it on the request), so a handler on a worker never awaits that channel
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                await request.body()
            return await workers.run(lambda: handler(request))

        return offloaded


class TimeLimit:
    """Every HTTP request gets at most ``limit_s`` seconds; then 503 (if nothing was sent yet)."""

    def __init__(self, app: ASGIApp, *, limit_s: float,
                 on_timeout: Callable[[Scope, float], Response],
                 exempt: Callable[[str], bool] = lambda path: False) -> None:
        self.app = app
        self.limit_s = limit_s
        self.on_timeout = on_timeout
        self.exempt = exempt  # paths whose answers last as long as the client listens (the stream)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        deadline = asyncio.timeout(self.limit_s)
        try:
            async with deadline:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours
            log.warning("%s %s exceeded the time limit of %g s", scope.get("method"), scope.get("path"),
                        self.limit_s)
            if started:
                raise  # the answer was on its way; nothing sensible to send now
            await self.on_timeout(scope, self.limit_s)(scope, receive, send)
