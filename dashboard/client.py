"""A small typed client of the mieruka API (sync httpx: Dash callbacks run in worker threads).

Exceptions, all under :class:`ApiError`:

- :class:`ApiUnreachable`: no answer (connection refused, timeout, DNS);
- :class:`ApiUnavailable`: the API answered 503 (its store is down); ``retry_after_s`` if given;
- :class:`ApiResponseError`: any other non-2xx answer, with its status and ``detail``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import httpx

Lang = Literal["ja", "en"]
DEFAULT_TIMEOUT_S = 2.0


class ApiError(Exception):
    """The API could not give an answer."""


class ApiUnreachable(ApiError):
    """No answer from the API at all."""


class ApiResponseError(ApiError):
    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {detail}")


class ApiUnavailable(ApiResponseError):
    """503: the API is up but its store is not."""

    def __init__(self, detail: str, retry_after_s: float | None) -> None:
        super().__init__(503, detail)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    name: str
    timezone: str
    locale: Lang


@dataclass(frozen=True, slots=True)
class MachineInfo:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class LineInfo:
    id: str
    name: str
    target_per_hour: float
    machines: tuple[MachineInfo, ...]


@dataclass(frozen=True, slots=True)
class ShiftInfo:
    id: str
    day: date
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Point:
    start: datetime
    end: datetime
    good: int
    scrap: int
    target: float | None = None  # the API's target for the bucket: breaks and time off shift excluded


@dataclass(frozen=True, slots=True)
class Throughput:
    line: str
    bucket: str
    bucket_s: int
    start: datetime | None
    end: datetime | None
    shift: ShiftInfo | None
    points: tuple[Point, ...]
    total_good: int
    total_scrap: int


def _shift(d: dict[str, Any] | None) -> ShiftInfo | None:
    if d is None:
        return None
    return ShiftInfo(d["id"], date.fromisoformat(d["day"]), datetime.fromisoformat(d["start"]),
                     datetime.fromisoformat(d["end"]))


def _time(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v is not None else None


class ApiClient:
    """``ApiClient("http://127.0.0.1:8000")``; thread-safe; close it (or use ``with``) when done."""

    def __init__(self, base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, token: str | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, headers=headers,
                                  transport=transport)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            r = self._http.get(path, params={k: v for k, v in (params or {}).items() if v is not None})
        except httpx.TransportError as e:  # connect errors and timeouts alike
            raise ApiUnreachable(f"{self._http.base_url}{path}: {e!r}") from e
        if r.status_code >= 400:
            try:
                detail = str(r.json().get("detail", r.text))
            except ValueError:
                detail = r.text
            if r.status_code == 503:
                ra = r.headers.get("Retry-After")
                raise ApiUnavailable(detail, float(ra) if ra and ra.isdigit() else None)
            raise ApiResponseError(r.status_code, detail)
        return r.json()

    def healthz(self) -> dict[str, str]:
        result: dict[str, str] = self._get("/healthz")
        return result

    def site(self, lang: Lang | None = None) -> Site:
        d = self._get("/api/v1/plant/site", {"lang": lang} if lang else None)
        return Site(d["id"], d["name"], d["timezone"], d["locale"])

    def lines(self, lang: Lang | None = None) -> list[LineInfo]:
        data = self._get("/api/v1/lines", {"lang": lang} if lang else None)
        return [LineInfo(d["id"], d["name"], float(d["target_per_hour"]),
                         tuple(MachineInfo(m["id"], m["name"]) for m in d["machines"])) for d in data]

    def current_shift(self, as_of: datetime | None = None) -> ShiftInfo | None:
        d = self._get("/api/v1/shifts/current", {"as_of": as_of.isoformat()} if as_of else None)
        return _shift(d["shift"])

    def throughput(self, line_id: str, *, start: datetime | None = None, end: datetime | None = None,
                   bucket: str = "1h", shift: Literal["current"] | None = None,
                   as_of: datetime | None = None) -> Throughput:
        params: dict[str, str] = {"bucket": bucket}
        if start is not None:
            params["start"] = start.isoformat()
        if end is not None:
            params["end"] = end.isoformat()
        if shift is not None:
            params["shift"] = shift
        if as_of is not None:
            params["as_of"] = as_of.isoformat()
        d = self._get(f"/api/v1/lines/{line_id}/throughput", params)
        return Throughput(
            line=d["line"], bucket=d["bucket"], bucket_s=int(d["bucket_s"]), start=_time(d["start"]),
            end=_time(d["end"]), shift=_shift(d.get("shift")),
            points=tuple(Point(datetime.fromisoformat(p["start"]), datetime.fromisoformat(p["end"]), int(p["good"]),
                               int(p["scrap"]), None if p.get("target") is None else float(p["target"]))
                         for p in d["points"]),
            total_good=int(d["total_good"]), total_scrap=int(d["total_scrap"]),
        )
