"""The FastAPI application: figures from the store, over HTTP.

``create_app(plant, store, auth=...)`` builds an app whose lifespan opens and closes ``store`` and
runs the figure workers; ``create_app_from_settings`` is the process edge that reads the plant
file, the token file and picks the store from its URL. Nothing is built at import time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.types import Scope

from api.auth import Auth, require_role
from api.errors import TIMED_OUT, install_error_handlers, problem, problem_openapi
from api.routes import figures as figure_routes
from api.routes import health, plant_detail, shifts, status, throughput
from api.routes import plant as plant_routes
from api.settings import Settings, SettingsError
from api.work import DEFAULT_REQUEST_TIMEOUT_S, DEFAULT_WORKERS, HomeLoopStore, TimeLimit, Workers, loop_bound
from core.plant import Plant, load_plant
from core.store.base import Store, StoreUnavailable

log = logging.getLogger(__name__)

API_VERSION = "0.1.0"


def create_app(plant: Plant, store: Store, *, auth: Auth, retry_after_s: int = 5,
               request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, workers: int = DEFAULT_WORKERS,
               cors_origins: Sequence[str] = ()) -> FastAPI:
    """An API over ``plant`` and ``store``; the app owns the store from startup to shutdown.

    ``auth`` says who may ask (there is no default on purpose: the caller decides whether reads are
    anonymous); every request gets ``request_timeout_s``; figures run on ``workers`` threads."""
    pool = Workers(workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.start()
        if loop_bound(store):
            app.state.store_here = HomeLoopStore(store, asyncio.get_running_loop())
        try:
            try:
                await store.open()
                app.state.store_open = True
                # /healthz's answer while its first ping is still queued behind heavy reads
                app.state.store_ok = True
            except StoreUnavailable as e:
                # Serve anyway: /healthz says so, figures answer 503 and each request tries again.
                log.warning("store unavailable at startup (%s); answering 503 until it is back", e)
            yield
        finally:
            pool.stop()
            await store.close()

    app = FastAPI(
        title="mieruka API",
        version=API_VERSION,
        summary="Production figures of one plant: lines, shifts, throughput.",
        description="Times are ISO-8601 with an offset (a time without one is rejected); windows are "
                    "[start, end), at most 400 days; buckets are written 30s, 5m, 1h, 1d, at most 10 000 per "
                    "answer. Every route but /healthz needs `Authorization: Bearer <token>` (unless the API "
                    "runs with anonymous reads). Every error answer is a Problem: "
                    '`{"detail": "<one sentence>"}`.',
        lifespan=lifespan,
    )
    app.state.plant = plant
    app.state.store = store
    app.state.store_here = store  # a HomeLoopStore once the lifespan runs, if the store needs one
    app.state.store_open = False
    app.state.auth = auth
    app.state.workers = pool
    install_error_handlers(app, retry_after_s=retry_after_s)

    def timed_out(scope: Scope, limit_s: float) -> Response:
        return problem(503, TIMED_OUT.format(limit=limit_s), headers={"Retry-After": str(retry_after_s)})

    app.add_middleware(TimeLimit, limit_s=request_timeout_s, on_timeout=timed_out)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET"],
                           allow_headers=["Authorization", "Accept", "Accept-Language"], allow_credentials=False)

    app.include_router(health.router)
    readers = [Depends(require_role("read"))]
    for r in (plant_routes.router, shifts.router, throughput.router, plant_detail.router, figure_routes.router,
              status.router):
        app.include_router(r, dependencies=readers)
    app.openapi = problem_openapi(app, secured=lambda path: path != "/healthz")  # type: ignore[method-assign]
    return app


def reader_store(url: str) -> Store:
    """The store a URL names, for reading: a SQLite file must exist already (the collector or
    ``mieruka import`` creates it), and it is opened without ever creating one. ``SettingsError``
    for a bad URL or a missing file."""
    from core.store import open_store
    from core.store.sqlite import SqliteStore

    try:
        store: Store = open_store(url)
    except ValueError as e:
        raise SettingsError(str(e)) from None
    if isinstance(store, SqliteStore):
        if not store.path.is_file():
            raise SettingsError(f"the SQLite store {store.path} does not exist; the collector ('mieruka collect') "
                                "or 'mieruka import' creates it: check the path, or run one of them first")
        store = SqliteStore(store.path, create=False)
    return store


def create_app_from_settings(settings: Settings) -> FastAPI:
    """The process edge: load the plant file (``PlantFileError`` names what is wrong), the token file
    and the store (``SettingsError`` says what to fix)."""
    plant = load_plant(settings.plant_file)
    store = reader_store(settings.store_url)
    return create_app(plant, store, auth=settings.auth(), retry_after_s=settings.retry_after_s,
                      request_timeout_s=settings.request_timeout_s, cors_origins=settings.cors_origins)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app_from_settings(settings), host=host, port=port, log_level=log_level)
