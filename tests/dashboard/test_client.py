"""dashboard.client: typed answers and its exception tree, over httpx's mock transport."""

from __future__ import annotations

import httpx
import pytest

from dashboard.client import ApiClient, ApiResponseError, ApiUnavailable, ApiUnreachable


def handler(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/api/v1/lines/blade-1/throughput":
        assert request.headers["Authorization"] == "Bearer s3cret"
        assert request.url.params["start"] == "2026-11-27T08:00:00+09:00"
        return httpx.Response(200, json={
            "line": "blade-1", "bucket": "1h", "bucket_s": 3600, "start": "2026-11-27T08:00:00+09:00",
            "end": "2026-11-27T09:00:00+09:00", "shift": None, "as_of": None,
            "points": [{"start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T09:00:00+09:00", "good": 4,
                        "scrap": 1}], "total_good": 4, "total_scrap": 1})
    if request.url.path == "/api/v1/lines/down/throughput":
        return httpx.Response(503, headers={"Retry-After": "5"}, json={"detail": "the store is unavailable"})
    if request.url.path == "/api/v1/shifts/current":
        return httpx.Response(200, json={"as_of": "2026-11-27T10:00:00+09:00", "shift": {
            "id": "day", "day": "2026-11-27", "start": "2026-11-27T08:00:00+09:00",
            "end": "2026-11-27T17:00:00+09:00"}})
    if request.url.path == "/refused":
        raise httpx.ConnectError("connection refused", request=request)
    return httpx.Response(404, json={"detail": "unknown line 'x'"})


def test_client_answers_and_errors() -> None:
    from datetime import datetime

    with ApiClient("http://api/", token="s3cret", transport=httpx.MockTransport(handler)) as c:
        tp = c.throughput("blade-1", start=datetime.fromisoformat("2026-11-27T08:00:00+09:00"),
                          end=datetime.fromisoformat("2026-11-27T09:00:00+09:00"))
        assert (tp.total_good, tp.points[0].good, tp.points[0].start.hour) == (4, 4, 8)
        shift = c.current_shift()
        assert shift is not None and shift.id == "day" and shift.day.isoformat() == "2026-11-27"
        with pytest.raises(ApiUnavailable) as down:
            c.throughput("down")
        assert down.value.retry_after_s == 5 and "unavailable" in down.value.detail
        with pytest.raises(ApiResponseError) as missing:
            c.throughput("x")
        assert missing.value.status == 404
        with pytest.raises(ApiUnreachable):
            c._get("/refused")
