"""A small typed client of the mieruka API (sync httpx: Dash callbacks run in worker threads).

Exceptions, all under :class:`ApiError`:

- :class:`ApiUnreachable`: no answer (connection refused, timeout, DNS);
- :class:`ApiUnavailable`: the API answered 503 (its store is down); ``retry_after_s`` if given;
- :class:`ApiResponseError`: any other non-2xx answer, with its status and ``detail``.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)

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
    name: str = ""  # in the asked language; the id when the plant file gives none (or an older API)

    @property
    def label(self) -> str:
        return self.name or self.id


@dataclass(frozen=True, slots=True)
class Point:
    start: datetime
    end: datetime
    good: int
    scrap: int
    target: float | None = None  # the API's target for the bucket: breaks and time off shift excluded
    cumulative_good: int | None = None  # from the window's start to this bucket's end
    cumulative_target: float | None = None


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
                     datetime.fromisoformat(d["end"]), str(d.get("name") or d["id"]))


def _time(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v is not None else None


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


State = Literal["running", "idle", "down", "changeover", "planned", "offline"]
STATES: tuple[State, ...] = ("running", "idle", "down", "changeover", "planned", "offline")


def _state(v: str) -> State:
    for s in STATES:
        if v == s:
            return s
    return "offline"


@dataclass(frozen=True, slots=True)
class Reason:
    code: int
    label: str | None  # the catalogue's name in the asked language; None for a code the catalogue lacks
    category: str | None


@dataclass(frozen=True, slots=True)
class MachineStatus:
    id: str
    name: str
    state: State
    reason: Reason | None
    since: datetime | None
    last_data: datetime | None
    stale: bool = False  # no data for longer than its stale_after_s: the state shown may be out of date


@dataclass(frozen=True, slots=True)
class ShiftCounts:
    good: int
    scrap: int
    target_per_hour: float
    shift_target: float
    expected: float
    difference: float
    standing: Literal["ahead", "behind", "on_target"]
    elapsed_s: float
    planned_production_elapsed_s: float
    rate_per_hour: float | None


@dataclass(frozen=True, slots=True)
class Ratios:
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    no_data: bool


@dataclass(frozen=True, slots=True)
class LineStatus:
    line: str
    name: str
    as_of: datetime
    shift: ShiftInfo | None
    counts: ShiftCounts | None
    oee: Ratios | None
    machines: tuple[MachineStatus, ...]


@dataclass(frozen=True, slots=True)
class OeePoint:
    start: datetime
    end: datetime
    ratios: Ratios
    good: int
    scrap: int


@dataclass(frozen=True, slots=True)
class Oee:
    id: str
    start: datetime
    end: datetime
    figures: OeePoint
    points: tuple[OeePoint, ...]


@dataclass(frozen=True, slots=True)
class ParetoRow:
    state: str
    reason: int | None
    label: str
    category: str | None
    seconds: float
    count: int
    share: float
    cumulative_share: float


@dataclass(frozen=True, slots=True)
class Downtime:
    line: str
    start: datetime
    end: datetime
    pareto: tuple[ParetoRow, ...]
    total_s: float
    events: int


@dataclass(frozen=True, slots=True)
class Stretch:
    start: datetime
    end: datetime
    state: State
    reason: int | None
    label: str
    seconds: float


@dataclass(frozen=True, slots=True)
class States:
    machine: str
    start: datetime
    end: datetime
    timeline: tuple[Stretch, ...]


@dataclass(frozen=True, slots=True)
class GaugePoint:
    start: datetime
    end: datetime
    mean: float | None
    min: float | None
    max: float | None
    count: int


@dataclass(frozen=True, slots=True)
class Gauge:
    machine: str
    signal: str
    unit: str | None
    bucket: str
    points: tuple[GaugePoint, ...]


@dataclass(frozen=True, slots=True)
class SignalInfo:
    name: str
    kind: str
    unit: str | None


@dataclass(frozen=True, slots=True)
class MachineDetail:
    id: str
    name: str
    output: bool
    signals: tuple[SignalInfo, ...]

    @property
    def gauges(self) -> tuple[SignalInfo, ...]:
        return tuple(s for s in self.signals if s.kind == "gauge")


@dataclass(frozen=True, slots=True)
class LineDetail:
    id: str
    name: str
    target_per_hour: float
    machines: tuple[MachineDetail, ...]


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    """A stop reason of the plant's catalogue: code, name in the asked language, category."""

    code: int
    name: str
    category: str


@dataclass(frozen=True, slots=True)
class PlantDetail:
    site: Site
    lines: tuple[LineDetail, ...]
    reasons: dict[int, str]
    catalogue: tuple[ReasonInfo, ...] = ()  # the reasons with their category, by code

    def machine(self, machine_id: str) -> tuple[LineDetail, MachineDetail] | None:
        for line in self.lines:
            for m in line.machines:
                if m.id == machine_id:
                    return line, m
        return None


@dataclass(frozen=True, slots=True)
class StopPart:
    """A stop (or a part of one made by an operator's split) of ``/lines/{id}/stops``."""

    machine: str
    start: str  # as the API wrote it: the key of ``PUT …/stops/{start}/reason``
    end: datetime | None  # None: still open
    open: bool
    seconds: float
    state: State
    reason: int | None
    label: str
    category: str | None
    named_by: str | None
    micro_stop: bool

    @property
    def started(self) -> datetime:
        return datetime.fromisoformat(self.start)


@dataclass(frozen=True, slots=True)
class Note:
    time: datetime
    text: str
    author: str


@dataclass(frozen=True, slots=True)
class Written:
    """What a write answered: the audit entry's subject and its new value, for the confirmation."""

    status: int
    body: dict[str, Any]


def _ratios(d: dict[str, Any]) -> Ratios:
    return Ratios(_opt_float(d.get("availability")), _opt_float(d.get("performance")), _opt_float(d.get("quality")),
                  _opt_float(d.get("oee")), bool(d.get("no_data", False)))


def _oee_point(d: dict[str, Any]) -> OeePoint:
    counts = d.get("counts") or {}
    return OeePoint(datetime.fromisoformat(d["start"]), datetime.fromisoformat(d["end"]), _ratios(d),
                    int(counts.get("good", 0)), int(counts.get("scrap", 0)))


def _answer(r: httpx.Response) -> Any:
    """The JSON of a 2xx answer; otherwise the error with the API's ``detail``."""
    if r.status_code >= 400:
        try:
            body = r.json()
            detail = str(body.get("detail", r.text)) if isinstance(body, dict) else r.text
        except ValueError:
            detail = r.text
        if r.status_code == 503:
            ra = r.headers.get("Retry-After")
            raise ApiUnavailable(detail, float(ra) if ra and ra.isdigit() else None)
        raise ApiResponseError(r.status_code, detail)
    return r.json()


def _window_params(start: datetime, end: datetime, lang: Lang | None = None) -> dict[str, str]:
    params = {"start": start.isoformat(), "end": end.isoformat()}
    if lang:
        params["lang"] = lang
    return params


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
        return _answer(r)

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

    def current_shift(self, as_of: datetime | None = None, lang: Lang | None = None) -> ShiftInfo | None:
        params = {"as_of": as_of.isoformat()} if as_of else {}
        if lang is not None:
            params["lang"] = lang
        d = self._get("/api/v1/shifts/current", params)
        return _shift(d["shift"])

    def shift_report(self, day: str, shift: str, *, lang: Lang | None = None,
                     as_of: datetime | None = None) -> dict[str, Any]:
        """The shift report's JSON as the API gives it (``GET /api/v1/reports/shift``): the printable
        page and ``mieruka report`` render it whole, so it is not mapped onto dataclasses here."""
        params = {"date": day, "shift": shift}
        if lang is not None:
            params["lang"] = lang
        if as_of is not None:
            params["as_of"] = as_of.isoformat()
        result: dict[str, Any] = self._get("/api/v1/reports/shift", params)
        return result

    def throughput(self, line_id: str, *, start: datetime | None = None, end: datetime | None = None,
                   bucket: str = "1h", shift: Literal["current"] | None = None,
                   as_of: datetime | None = None, lang: Lang | None = None) -> Throughput:
        params: dict[str, str] = {"bucket": bucket}
        if start is not None:
            params["start"] = start.isoformat()
        if end is not None:
            params["end"] = end.isoformat()
        if shift is not None:
            params["shift"] = shift
        if as_of is not None:
            params["as_of"] = as_of.isoformat()
        if lang is not None:
            params["lang"] = lang
        d = self._get(f"/api/v1/lines/{line_id}/throughput", params)
        return Throughput(
            line=d["line"], bucket=d["bucket"], bucket_s=int(d["bucket_s"]), start=_time(d["start"]),
            end=_time(d["end"]), shift=_shift(d.get("shift")),
            points=tuple(Point(datetime.fromisoformat(p["start"]), datetime.fromisoformat(p["end"]), int(p["good"]),
                               int(p["scrap"]), _opt_float(p.get("target")),
                               None if p.get("cumulative_good") is None else int(p["cumulative_good"]),
                               _opt_float(p.get("cumulative_target")))
                         for p in d["points"]),
            total_good=int(d["total_good"]), total_scrap=int(d["total_scrap"]),
        )

    def plant(self, lang: Lang | None = None) -> PlantDetail:
        d = self._get("/api/v1/plant", {"lang": lang} if lang else None)
        s = d["site"]
        return PlantDetail(
            site=Site(s["id"], s["name"], s["timezone"], s["locale"]),
            lines=tuple(LineDetail(ln["id"], ln["name"], float(ln["target_per_hour"]), tuple(
                MachineDetail(m["id"], m["name"], bool(m.get("output", False)), tuple(
                    SignalInfo(g["name"], g["kind"], g.get("unit")) for g in m.get("signals", [])))
                for m in ln["machines"])) for ln in d["lines"]),
            reasons={int(r["code"]): str(r["name"]) for r in d.get("reasons", [])},
            catalogue=tuple(ReasonInfo(int(r["code"]), str(r["name"]), str(r.get("category") or "other"))
                            for r in d.get("reasons", [])))

    def status(self, line_id: str, *, as_of: datetime | None = None, lang: Lang | None = None) -> LineStatus:
        params: dict[str, str] = {}
        if as_of is not None:
            params["as_of"] = as_of.isoformat()
        if lang is not None:
            params["lang"] = lang
        d = self._get(f"/api/v1/lines/{line_id}/status", params)
        c = d.get("counts")
        return LineStatus(
            line=d["line"], name=d["name"], as_of=datetime.fromisoformat(d["as_of"]), shift=_shift(d.get("shift")),
            counts=None if c is None else ShiftCounts(
                int(c["good"]), int(c["scrap"]), float(c["target_per_hour"]), float(c["shift_target"]),
                float(c["expected"]), float(c["difference"]), c["standing"], float(c["elapsed_s"]),
                float(c["planned_production_elapsed_s"]), _opt_float(c.get("rate_per_hour"))),
            oee=None if d.get("oee") is None else _ratios(d["oee"]),
            machines=tuple(MachineStatus(
                m["id"], m["name"], _state(m["state"]),
                None if m.get("reason") is None else Reason(int(m["reason"]["code"]), m["reason"].get("label"),
                                                            m["reason"].get("category")),
                _time(m.get("since")), _time(m.get("last_data")), m.get("stale") is True) for m in d["machines"]))

    def line_oee(self, line_id: str, *, start: datetime, end: datetime, bucket: str | None = None,
                 lang: Lang | None = None) -> Oee:
        params = _window_params(start, end, lang)
        if bucket is not None:
            params["bucket"] = bucket
        d = self._get(f"/api/v1/lines/{line_id}/oee", params)
        return Oee(d["id"], datetime.fromisoformat(d["start"]), datetime.fromisoformat(d["end"]),
                   _oee_point(d["figures"]), tuple(_oee_point(p) for p in d.get("points", [])))

    def downtime(self, line_id: str, *, start: datetime, end: datetime, lang: Lang | None = None) -> Downtime:
        d = self._get(f"/api/v1/lines/{line_id}/downtime", _window_params(start, end, lang))
        return Downtime(d["line"], datetime.fromisoformat(d["start"]), datetime.fromisoformat(d["end"]),
                        tuple(ParetoRow(r["state"], r.get("reason"), r["label"], r.get("category"),
                                        float(r["seconds"]), int(r["count"]), float(r["share"]),
                                        float(r["cumulative_share"])) for r in d["pareto"]),
                        float(d["total_s"]), len(d.get("events", [])))

    def states(self, machine_id: str, *, start: datetime, end: datetime, lang: Lang | None = None) -> States:
        d = self._get(f"/api/v1/machines/{machine_id}/states", _window_params(start, end, lang))
        return States(d["machine"], datetime.fromisoformat(d["start"]), datetime.fromisoformat(d["end"]),
                      tuple(Stretch(datetime.fromisoformat(x["start"]), datetime.fromisoformat(x["end"]),
                                    _state(x["state"]), x.get("reason"), x["label"], float(x["seconds"]))
                            for x in d["timeline"]))

    def gauge(self, machine_id: str, signal: str, *, start: datetime, end: datetime, bucket: str = "5m") -> Gauge:
        params = _window_params(start, end)
        params["bucket"] = bucket
        d = self._get(f"/api/v1/machines/{machine_id}/signals/{signal}", params)
        return Gauge(d["machine"], d["signal"], d.get("unit"), d["bucket"], tuple(
            GaugePoint(datetime.fromisoformat(p["start"]), datetime.fromisoformat(p["end"]), _opt_float(p.get("mean")),
                       _opt_float(p.get("min")), _opt_float(p.get("max")), int(p["count"])) for p in d["points"]))

    def stops(self, line_id: str, *, start: datetime, end: datetime, lang: Lang | None = None) -> tuple[StopPart, ...]:
        d = self._get(f"/api/v1/lines/{line_id}/stops", _window_params(start, end, lang))
        return tuple(StopPart(x["machine"], str(x["start"]), _time(x.get("end")), bool(x["open"]), float(x["seconds"]),
                              _state(x["state"]), None if x.get("reason") is None else int(x["reason"]),
                              str(x["label"]), x.get("category"), x.get("named_by"), bool(x.get("micro_stop")))
                     for x in d["stops"])

    def notes(self, line_id: str, *, start: datetime, end: datetime) -> tuple[Note, ...]:
        d = self._get(f"/api/v1/lines/{line_id}/notes", _window_params(start, end))
        return tuple(Note(datetime.fromisoformat(x["time"]), str(x["text"]), str(x["author"])) for x in d["notes"])


class TokenSource:
    """A token kept in a file, read at start and again whenever the file changes on disk (inode,
    size or mtime), so a replaced operator token takes effect without restarting the dashboard.

    Raises :class:`ValueError` at start when the file cannot be read or is empty; a file that turns
    unreadable later keeps the last token (the API refuses it once it is revoked)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._token = self._read()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> str:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ValueError(f"{self.path}: {e.strerror or e}; give a file holding one API token "
                             "('mieruka token create --role operator')") from None
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"{self.path}: expected one API token on one line "
                             "('mieruka token create --role operator' prints one)")
        return token

    def token(self) -> str:
        stamp = self._stat()
        with self._lock:
            if stamp is not None and stamp != self._stamp:
                try:
                    self._token = self._read()
                except ValueError as e:
                    log.warning("operator token file changed and is not usable (%s); keeping the last token", e)
                self._stamp = stamp
            return self._token


class OperatorClient:
    """The dashboard's writes (operator input), with the operator token; the reads keep their own
    client and token, so a page that only shows figures never holds a token that can write.

    Every method returns :class:`Written` or raises :class:`ApiError` (an
    :class:`ApiResponseError` carries the API's ``detail``, which the operator page shows)."""

    def __init__(self, base_url: str, token: TokenSource | str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._token = token
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, body: dict[str, Any]) -> Written:
        token = self._token if isinstance(self._token, str) else self._token.token()
        try:
            r = self._http.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
        except httpx.TransportError as e:
            raise ApiUnreachable(f"{self._http.base_url}{path}: {e!r}") from e
        answer = _answer(r)
        return Written(r.status_code, answer if isinstance(answer, dict) else {})

    def name_stop(self, machine_id: str, start: str, reason: int, *, until: datetime | None = None,
                  note: str | None = None) -> Written:
        """``PUT /machines/{id}/stops/{start}/reason``: ``start`` exactly as the stops route gave it."""
        return self._send("PUT", f"/api/v1/machines/{machine_id}/stops/{quote(start, safe='')}/reason",
                          {"reason": reason, "until": until.isoformat() if until else None, "note": note})

    def book_scrap(self, machine_id: str, time: datetime, quantity: int, reason: int | None = None,
                   note: str | None = None) -> Written:
        return self._send("POST", f"/api/v1/machines/{machine_id}/scrap",
                          {"time": time.isoformat(), "quantity": quantity, "reason": reason, "note": note})

    def add_note(self, line_id: str, text: str, time: datetime | None = None) -> Written:
        return self._send("POST", f"/api/v1/lines/{line_id}/notes",
                          {"time": time.isoformat() if time else None, "text": text})
