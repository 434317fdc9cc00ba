"""The FastAPI application: figures from the store, over HTTP.

``create_app(plant, store, auth=...)`` builds an app whose lifespan opens and closes ``store`` and
runs the figure workers; ``create_app_from_settings`` is the process edge that reads the plant
file, the token file and picks the store from its URL. Nothing is built at import time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.types import Scope

from api.alerts import AlertOptions, AlertService, Observation, Observe
from api.auth import Auth, bearer, require_role
from api.cache import DEFAULT_REFRESH_PERIOD_S, AnswerCache, Generation, Refresh
from api.errors import TIMED_OUT, install_error_handlers, problem, problem_openapi
from api.metrics import ApiMetrics, MeteredStore, RequestMetrics
from api.metrics import router as metrics_router
from api.routes import figures as figure_routes
from api.routes import health, operator, plant_detail, report, shifts, status, stream, throughput
from api.routes import plant as plant_routes
from api.settings import Settings, SettingsError
from api.work import DEFAULT_REQUEST_TIMEOUT_S, DEFAULT_WORKERS, HomeLoopStore, TimeLimit, Workers, loop_bound
from core.plant import Plant, load_plant
from core.store.base import Store, StoreUnavailable

log = logging.getLogger(__name__)

API_VERSION = "0.1.0"


def create_app(plant: Plant, store: Store, *, auth: Auth, retry_after_s: int = 5,
               request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, workers: int = DEFAULT_WORKERS,
               cors_origins: Sequence[str] = (), refresh: Refresh | float = DEFAULT_REFRESH_PERIOD_S,
               stream_options: dict[str, Any] | None = None, alerts: bool = True,
               alert_options: AlertOptions | None = None) -> FastAPI:
    """An API over ``plant`` and ``store``; the app owns the store from startup to shutdown.

    ``auth`` says who may ask (there is no default on purpose: the caller decides whether reads are
    anonymous); every request gets ``request_timeout_s``; figures run on ``workers`` threads;
    ``refresh`` is the refresh period in seconds (0: no cache, no alignment; see :mod:`api.cache`) or a
    :class:`~api.cache.Refresh` with its clock; ``stream_options`` go to the stream's producer.
    With ``alerts`` (and rules in the plant file) the lifespan runs the alert checks
    (:mod:`api.alerts`); the webhooks' URLs are resolved here, so a missing ``url_env``/``url_file``
    is a :class:`~core.plant.CredentialError` before anything starts."""
    pool = Workers(workers)
    period = refresh if isinstance(refresh, Refresh) else Refresh(float(refresh))
    metrics = ApiMetrics()
    alert_service: AlertService | None = None
    if alerts and plant.alerts.rules:
        def on_worker(observe: Observe) -> Awaitable[list[Observation]]:
            async def reads() -> list[Observation]:
                if not app.state.store_open:  # the store was down at startup: try it again
                    await app.state.store_here.open()
                    app.state.store_open = True
                return await observe()

            return pool.run(reads)

        alert_service = AlertService(plant, store, options=alert_options or AlertOptions(), metrics=metrics,
                                     observe_on=on_worker,
                                     on_check=lambda result: metrics.alerts_checks.labels(result).inc())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.start()
        if loop_bound(store):
            app.state.store_here = MeteredStore(HomeLoopStore(store, asyncio.get_running_loop()), metrics)
        try:
            try:
                await store.open()
                app.state.store_open = True
                # /healthz's answer while its first ping is still queued behind heavy reads
                app.state.store_ok = True
            except StoreUnavailable as e:
                # Serve anyway: /healthz says so, figures answer 503 and each request tries again.
                log.warning("store unavailable at startup (%s); answering 503 until it is back", e)
            if alert_service is not None:
                # reads go through the app's store (a worker reaches an InfluxDB store on this loop)
                alert_service.evaluator.store = app.state.store_here
                await alert_service.start()
            yield
        finally:
            if alert_service is not None:
                await alert_service.stop()
            app.state.stream.close()
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
    # every read counted (api.metrics); wrapped around a HomeLoopStore once the lifespan runs, if the store needs one
    app.state.store_here = MeteredStore(store, metrics)
    app.state.store_open = False
    app.state.auth = auth
    app.state.workers = pool
    app.state.refresh = period
    app.state.metrics = metrics
    app.state.generation = generation = Generation()  # bumped by every write: kept answers are dropped
    app.state.alerts = alert_service
    app.state.stream = stream.StatusStream(
        stream.status_compute(app), refresh=period, on_event=metrics.stream_events.inc,
        on_drop=metrics.stream_dropped.inc, on_count=metrics.stream_subscribers.set, **(stream_options or {}))
    install_error_handlers(app, retry_after_s=retry_after_s)

    def timed_out(scope: Scope, limit_s: float) -> Response:
        return problem(503, TIMED_OUT.format(limit=limit_s), headers={"Retry-After": str(retry_after_s)})

    def is_stream(path: str) -> bool:
        return path == stream.STREAM_PATH

    def uncached(path: str) -> bool:
        # the audit needs admin: a kept answer must never reach a reader (the cache checks only read)
        return is_stream(path) or path == operator.AUDIT_PATH

    read_role = require_role("read")

    async def may_read(request: Request) -> None:
        await read_role(request, await bearer(request))

    # innermost first: the time limit (not for the stream), the once-per-period answers (inside CORS,
    # whose headers depend on the caller's Origin), the request metrics (they see cached answers too)
    app.add_middleware(TimeLimit, limit_s=request_timeout_s, on_timeout=timed_out, exempt=is_stream)
    app.add_middleware(AnswerCache, refresh=period, authorize=may_read, skip=uncached,
                       on_result=lambda kind: metrics.answers.labels(kind).inc(), generation=generation)
    app.add_middleware(RequestMetrics, metrics=metrics, routes=lambda: app.routes, untimed=is_stream)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "PUT", "POST"],
                           allow_headers=["Authorization", "Accept", "Accept-Language", "Last-Event-ID",
                                      "Content-Type"],
                           allow_credentials=False)

    app.include_router(health.router)
    readers = [Depends(require_role("read"))]
    for r in (plant_routes.router, shifts.router, throughput.router, plant_detail.router, figure_routes.router,
              status.router, stream.router, report.router, metrics_router):
        app.include_router(r, dependencies=readers)
    app.include_router(operator.router)  # each route declares its own role (read, operator, admin)
    app.openapi = problem_openapi(app, secured=lambda path: path != "/healthz")  # type: ignore[method-assign]
    return app


def reader_store(url: str) -> Store:
    """The store a URL names, for reading: a SQLite file must exist already (the collector or
    ``mieruka import`` creates it), and it is opened without ever creating one. ``SettingsError``
    for a bad URL or a missing file."""
    from core.store import open_store
    from core.store.sqlite import SqliteStore

    try:
        store: Store = open_store(url, reader=True)  # never migrates (core.store.schema)
    except ValueError as e:
        raise SettingsError(str(e)) from None
    if isinstance(store, SqliteStore) and not store.path.is_file():
        raise SettingsError(f"the SQLite store {store.path} does not exist; the collector ('mieruka collect') "
                            "or 'mieruka import' creates it: check the path, or run one of them first")
    return store


def create_app_from_settings(settings: Settings) -> FastAPI:
    """The process edge: load the plant file (``PlantFileError`` names what is wrong), the token file
    and the store (``SettingsError`` says what to fix)."""
    plant = load_plant(settings.plant_file)
    store = reader_store(settings.store_url)
    return create_app(plant, store, auth=settings.auth(), retry_after_s=settings.retry_after_s,
                      request_timeout_s=settings.request_timeout_s, cors_origins=settings.cors_origins,
                      refresh=settings.refresh_period_s)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    config = uvicorn.Config(create_app_from_settings(settings), host=host, port=port, log_level=log_level)
    stream.uvicorn_server(config).run()
