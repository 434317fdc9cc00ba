"""The wall board marks a machine whose newest data is older than its stale_after_s (the API's
``stale``): the state shown may be out of date."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from dashboard.client import ApiClient, LineStatus
from dashboard.pages.board import strip_children

TOKYO = ZoneInfo("Asia/Tokyo")


def status_json() -> dict[str, Any]:
    machine = {"reason": None, "since": "2026-11-27T10:00:00+09:00"}
    return {"line": "blade-1", "name": "Blade 1", "as_of": "2026-11-27T10:30:00+09:00", "shift": None,
            "counts": None, "oee": None, "machines": [
                {**machine, "id": "cnc-1", "name": "CNC 1", "state": "running",
                 "last_data": "2026-11-27T10:29:59+09:00", "stale": False},
                {**machine, "id": "cnc-2", "name": "CNC 2", "state": "running",
                 "last_data": "2026-11-27T10:12:00+09:00", "stale": True},
                {**machine, "id": "cnc-3", "name": "CNC 3", "state": "offline", "since": None,
                 "last_data": None, "stale": True},
                {**machine, "id": "old-api", "name": "Old", "state": "idle", "last_data": None}]}


def fetched() -> LineStatus:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=status_json())

    with ApiClient("http://api/", transport=httpx.MockTransport(handler)) as c:
        return c.status("blade-1", as_of=datetime(2026, 11, 27, 1, 30, tzinfo=UTC))


def texts(component: Any) -> list[str]:
    children = getattr(component, "children", None)
    if isinstance(children, str):
        return [children]
    out: list[str] = []
    for c in children if isinstance(children, list) else [children] if children is not None else []:
        out += texts(c)
    return out


def test_the_strip_marks_stale_machines_only() -> None:
    st = fetched()
    assert [m.stale for m in st.machines] == [False, True, True, False]  # an API without the field: not stale
    cells = {link.children.to_plotly_json()["props"]["data-machine"]: link
             for link in strip_children(st, "en", "", TOKYO)}
    for mid, stale in (("cnc-1", False), ("cnc-2", True), ("cnc-3", True), ("old-api", False)):
        props = cells[mid].children.to_plotly_json()["props"]
        assert props["data-stale"] == ("1" if stale else "0")
        assert ("stale" in props["className"].split()) is stale
    assert "⚠ no data since 10:12" in texts(cells["cnc-2"])
    assert "⚠ no data" in texts(cells["cnc-3"])
    assert not any("⚠" in x for x in texts(cells["cnc-1"]))
    ja = {link.children.to_plotly_json()["props"]["data-machine"]: link
          for link in strip_children(st, "ja", "", TOKYO)}
    assert "⚠ データ途絶（最終 10:12）" in texts(ja["cnc-2"])
