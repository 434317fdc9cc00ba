"""The FastAPI application: figures from the store, over HTTP.

``create_app(plant, store)`` builds an app whose lifespan opens and closes ``store``;
``create_app_from_settings`` is the process edge that reads the plant file and picks the store
from its URL. Nothing is built at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.routes import figures as figure_routes
from api.routes import health, plant_detail, shifts, status, throughput
from api.routes import plant as plant_routes
from api.settings import Settings
from core import figures
from core.plant import Plant, load_plant
from core.store.base import Store, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

API_VERSION = "0.1.0"


def create_app(plant: Plant, store: Store, *, retry_after_s: int = 5) -> FastAPI:
    """An API over ``plant`` and ``store``; the app owns the store from startup to shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await store.open()
            app.state.store_open = True
        except StoreUnavailable as e:
            # Serve anyway: /healthz says so, figures answer 503 and each request tries again.
            log.warning("store unavailable at startup (%s); answering 503 until it is back", e)
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(
        title="mieruka API",
        version=API_VERSION,
        summary="Production figures of one plant: lines, shifts, throughput.",
        description="Times are ISO-8601 with an offset (a time without one is rejected); windows are "
                    "[start, end); buckets are written 30s, 5m, 1h, 1d.",
        lifespan=lifespan,
    )
    app.state.plant = plant
    app.state.store = store
    app.state.store_open = False

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("store unavailable for %s: %s", request.url.path, exc)
        return JSONResponse(status_code=503, headers={"Retry-After": str(retry_after_s)},
                            content={"detail": f"the store is unavailable ({exc}); retry in {retry_after_s} s"})

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store error for %s: %s", request.url.path, exc)
        return JSONResponse(status_code=502, content={"detail": f"the store failed the request: {exc}"})

    @app.exception_handler(figures.FigureError)
    async def _figure_error(request: Request, exc: figures.FigureError) -> JSONResponse:
        status = 404 if isinstance(exc, figures.UnknownLine) else 422
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    app.include_router(health.router)
    app.include_router(plant_routes.router)
    app.include_router(shifts.router)
    app.include_router(throughput.router)
    app.include_router(plant_detail.router)
    app.include_router(figure_routes.router)
    app.include_router(status.router)
    return app


def create_app_from_settings(settings: Settings) -> FastAPI:
    """The process edge: load the plant file (``PlantFileError`` names what is wrong) and pick the store."""
    from core.store import open_store

    plant = load_plant(settings.plant_file)
    store: Store = open_store(settings.store_url)
    return create_app(plant, store, retry_after_s=settings.retry_after_s)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the API with uvicorn until interrupted (what ``mieruka api`` calls)."""
    import uvicorn

    uvicorn.run(create_app_from_settings(settings), host=host, port=port, log_level=log_level)
