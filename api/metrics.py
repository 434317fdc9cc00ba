"""Prometheus metrics of the API, served at ``GET /metrics`` (text exposition format).

- ``mieruka_api_store_queries_total{query}``: every store read, counted by wrapping the store the
  routes and the stream use (:class:`MeteredStore`), so no call site can forget it. ``query`` is the
  store method (``count_buckets``, ``count_ranges``, ``state_changes``, ``product_changes``, ``gauge_buckets``,
  ``last_times``); the health probe's ping is not a read and is not counted.
- ``mieruka_api_request_duration_seconds{route,method}``: a histogram per route template
  (``/api/v1/lines/{line_id}/status``, never the raw path, so line ids do not multiply series);
  requests that match no route are ``route="unmatched"``. The stream is left out (its requests
  last as long as the client listens); ``mieruka_api_requests_total{route,method,status}`` counts
  every request, the stream's too.
- ``mieruka_api_answers_total{result}``: read answers from the once-per-period cache: ``miss``
  (computed), ``shared`` (waited for an identical request's computation), ``hit`` (kept answer).
- ``mieruka_api_operator_writes_total{action}``: operator input stored (``stop_reason``, ``scrap``,
  ``note``).
- ``mieruka_api_stream_subscribers``, ``mieruka_api_stream_events_total``,
  ``mieruka_api_stream_dropped_total``: the live stream.
- ``mieruka_alerts_sent_total{webhook,kind}`` (kind ``firing``/``resolved``),
  ``mieruka_alerts_failed_total{webhook,kind}`` (given up after its tries),
  ``mieruka_alerts_retries_total{webhook}``, ``mieruka_alerts_delayed_total{webhook}`` (held back
  by the rate limit), ``mieruka_alerts_checks_total{result}`` (``ok``/``error``): alerts
  (``api/alerts.py``); messages another replica won count on that replica.

``/metrics`` needs a token with role ``read`` like the figures (or none with anonymous reads): it
tells how the API is used. Prometheus sends one with ``authorization: {credentials_file: ...}``.
Each app has its own registry (several apps in one process do not mix their counts).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

READS = frozenset({"count_buckets", "count_ranges", "state_changes", "product_changes", "gauge_buckets", "last_times"})
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METRICS_PATH = "/metrics"


class ApiMetrics:
    """The API's metrics in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.store_queries = Counter("mieruka_api_store_queries", "Store reads made by the API, by store method",
                                     ["query"], registry=r)
        self.duration = Histogram("mieruka_api_request_duration_seconds",
                                  "Time to answer a request, by route template (the stream excluded)",
                                  ["route", "method"], buckets=DURATION_BUCKETS, registry=r)
        self.requests = Counter("mieruka_api_requests", "Requests answered, by route template and status",
                                ["route", "method", "status"], registry=r)
        self.answers = Counter("mieruka_api_answers", "Read answers: miss (computed), shared (waited for an "
                               "identical request's computation), hit (kept from earlier in the period)",
                               ["result"], registry=r)
        self.operator_writes = Counter("mieruka_api_operator_writes", "Operator input stored, by action "
                                       "(stop_reason, scrap, note)", ["action"], registry=r)
        self.stream_subscribers = Gauge("mieruka_api_stream_subscribers", "Clients listening to the stream now",
                                        registry=r)
        self.stream_events = Counter("mieruka_api_stream_events", "Status events the stream produced", registry=r)
        self.stream_dropped = Counter("mieruka_api_stream_dropped", "Stream clients dropped for not keeping up",
                                      registry=r)
        self.alerts_sent = Counter("mieruka_alerts_sent", "Alert messages a webhook accepted (2xx)",
                                   ["webhook", "kind"], registry=r)
        self.alerts_failed = Counter("mieruka_alerts_failed", "Alert messages given up on after their tries",
                                     ["webhook", "kind"], registry=r)
        self.alerts_retries = Counter("mieruka_alerts_retries", "Alert sends tried again after a failure",
                                      ["webhook"], registry=r)
        self.alerts_delayed = Counter("mieruka_alerts_delayed", "Alert messages held back by the webhook's "
                                      "rate limit", ["webhook"], registry=r)
        self.alerts_checks = Counter("mieruka_alerts_checks", "Alert checks run, by result (ok, error)",
                                     ["result"], registry=r)
        for q in sorted(READS):
            self.store_queries.labels(q)
        for kind in ("hit", "shared", "miss"):
            self.answers.labels(kind)

    def sent(self, webhook: str, kind: str) -> None:
        self.alerts_sent.labels(webhook, kind).inc()

    def failed(self, webhook: str, kind: str) -> None:
        self.alerts_failed.labels(webhook, kind).inc()

    def retried(self, webhook: str) -> None:
        self.alerts_retries.labels(webhook).inc()

    def delayed(self, webhook: str) -> None:
        self.alerts_delayed.labels(webhook).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MeteredStore:
    """A store whose reads are counted in ``mieruka_api_store_queries_total``; everything else passes."""

    def __init__(self, store: Any, metrics: ApiMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"MeteredStore({self._store!r})"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in READS:
            return attr
        counter = self._metrics.store_queries.labels(name)

        async def read(*args: Any, **kwargs: Any) -> Any:
            counter.inc()
            result = attr(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return read


def flat_routes(routes: list[BaseRoute]) -> list[tuple[BaseRoute, str]]:
    """Each endpoint route with its full path template (included routers flattened)."""
    try:
        from fastapi.routing import iter_route_contexts  # a FastAPI that keeps included routers as branches
    except ImportError:
        return [(r, r.path) for r in routes if isinstance(getattr(r, "path", None), str)]  # type: ignore[attr-defined]
    return [(c.route, c.path) for c in iter_route_contexts(routes) if c.path]


def route_template(routes: list[tuple[BaseRoute, str]], scope: Scope) -> str:
    """The path template of the route that serves ``scope`` (``unmatched`` if none)."""
    partial: str | None = None
    for route, path in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return path
        if match == Match.PARTIAL and partial is None:
            partial = path
    return partial or "unmatched"


class RequestMetrics:
    """ASGI middleware: duration and count of every HTTP request by route template."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics, routes: Callable[[], list[BaseRoute]],
                 untimed: Callable[[str], bool]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.untimed = untimed
        self._flat: list[tuple[BaseRoute, str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._flat is None:  # on the first request: every route is in place by then
            self._flat = flat_routes(self.routes())
        route = route_template(self._flat, scope)
        method = str(scope.get("method", ""))
        status = 500
        started = time.perf_counter()

        async def watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watching)
        finally:
            if not self.untimed(route):
                self.metrics.duration.labels(route, method).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, method, str(status)).inc()


router = APIRouter(tags=["health"])


@router.get(METRICS_PATH, response_class=Response, responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}},
          "description": "Prometheus text exposition format"}})
async def metrics(request: Request) -> Response:
    """The API's Prometheus metrics: store reads, request durations by route, cache answers, the stream."""
    m: ApiMetrics = request.app.state.metrics
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
