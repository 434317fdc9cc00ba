"""One error body for every 4xx and 5xx: ``{"detail": "<one sentence>", ...}``.

``detail`` is always a string a person can read; a 422 from parameter validation also carries
``errors`` (where and what, one entry per problem). Upstream failures (the store) reach clients
only as a generic sentence: what the store said, its URL, user or query go to the log, never into a
body. ``install_error_handlers`` hooks every source of an error response (FastAPI's request
validation, ``HTTPException`` including 404 for unknown paths and 405, the store's errors, the
figure math's refusals, and anything unhandled) into that one shape, and ``problem_openapi``
documents it as one ``Problem`` schema on every operation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import FieldProblem, Problem
from core import figures
from core.store.base import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

# The sentences for upstream trouble: nothing in them comes from the store.
STORE_UNAVAILABLE = "the store is unavailable; retry in {retry} s"
STORE_FAILED = "the store failed the request; the API's log has the details"
INTERNAL = "the API failed the request (an internal error); its log has the details"
TIMED_OUT = "the request took longer than the API's limit of {limit:g} s; ask for a shorter window or fewer buckets"

_STATUS_SENTENCES: dict[int, str] = {
    401: "a valid bearer token is required",
    403: "this token's role may not do this",
    404: "not found",
    405: "method not allowed",
}


def problem(status: int, detail: str, *, headers: Mapping[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    """A response in the one error shape."""
    body = Problem(detail=detail, **extra).model_dump(exclude_none=True)
    return JSONResponse(status_code=status, content=body, headers=dict(headers) if headers else None)


def _where(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] in ("query", "path", "header", "cookie"):
        return f"{parts[0]} parameter '{'.'.join(parts[1:])}'"
    return ".".join(parts) or "the request"


def validation_problem(exc: RequestValidationError) -> JSONResponse:
    errors = [FieldProblem(location=_where(e.get("loc", ())), message=str(e.get("msg", "invalid")))
              for e in exc.errors()]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        detail = f"{first.location}: {first.message}{more}"
    else:
        detail = "the request is not valid"
    return problem(422, detail, errors=[e.model_dump() for e in errors])


def install_error_handlers(app: FastAPI, *, retry_after_s: int) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail else None
        if detail is None or detail in ("Not Found", "Method Not Allowed"):
            detail = _STATUS_SENTENCES.get(exc.status_code, f"the request failed ({exc.status_code})")
            if exc.status_code == 404:
                detail = f"no such path: {request.url.path}"
            elif exc.status_code == 405:
                detail = f"{request.method} is not allowed on {request.url.path}"
        return problem(exc.status_code, detail, headers=exc.headers)

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("store unavailable for %s: %s", request.url.path, exc)
        return problem(503, STORE_UNAVAILABLE.format(retry=retry_after_s),
                       headers={"Retry-After": str(retry_after_s)})

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store error for %s: %s", request.url.path, exc)
        return problem(502, STORE_FAILED)

    @app.exception_handler(figures.FigureError)
    async def _figure_error(request: Request, exc: figures.FigureError) -> JSONResponse:
        return problem(404 if isinstance(exc, figures.NotFound) else 422, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware calls this, then re-raises so the server logs the traceback
        log.error("unhandled error for %s %s: %r", request.method, request.url.path, exc)
        return problem(500, INTERNAL)


# ---- OpenAPI ------------------------------------------------------------------------------------------

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_ERROR_DESCRIPTIONS: dict[str, str] = {
    "401": "No valid bearer token (see WWW-Authenticate)",
    "403": "The token's role is too small for this",
    "422": "Bad parameters; detail says what is allowed",
    "500": "Internal error (details only in the API's log)",
    "502": "The store failed the request (details only in the API's log)",
    "503": "The store is unreachable (see Retry-After), or the request exceeded the API's time limit",
}
# Query parameters that are instants: documented as date-time (the API's own parser also accepts a
# '+' that a URL turned into a space, and a trailing Z).
TIME_PARAMS = frozenset({"start", "end", "as_of"})
DATE_PARAMS = frozenset({"date"})


def problem_openapi(app: FastAPI, *, secured: Callable[[str], bool]) -> Callable[[], dict[str, Any]]:
    """An ``app.openapi`` that documents every error as ``Problem``, time parameters as date-time, and
    the 401/403 of operations ``secured(path)`` says need a token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, summary=app.summary,
                          description=app.description, routes=app.routes)
        schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schemas["Problem"].pop("$defs", {}).items():
            schemas[name] = sub
        for path, ops in doc.get("paths", {}).items():
            for op in ops.values():
                for p in op.get("parameters", []):
                    if p.get("in") == "query" and p.get("name") in TIME_PARAMS:
                        _string_format(p.setdefault("schema", {}), "date-time")
                    elif p.get("in") == "query" and p.get("name") in DATE_PARAMS:
                        _string_format(p.setdefault("schema", {}), "date")
                responses: dict[str, Any] = op.setdefault("responses", {})
                codes = ["500", "503"]
                if op.get("parameters"):
                    codes.append("422")
                if secured(path):
                    codes += ["401", "403", "502"]
                for code in codes:
                    responses.setdefault(code, {"description": _ERROR_DESCRIPTIONS[code]})
                for code, resp in responses.items():
                    if code[:1] in ("4", "5"):
                        resp["content"] = {"application/json": {"schema": _PROBLEM_REF}}
                        resp.setdefault("description", _ERROR_DESCRIPTIONS.get(code, "Error"))
        app.openapi_schema = doc
        return doc

    return openapi


def _string_format(schema: dict[str, Any], fmt: str) -> None:
    """Give the string branch of a (possibly nullable) parameter schema a ``format``."""
    branches = schema.get("anyOf")
    if isinstance(branches, list):
        for b in branches:
            if b.get("type") == "string":
                b["format"] = fmt
    elif schema.get("type") == "string":
        schema["format"] = fmt
