"""dashboard.client against the API's own OpenAPI document: every field the client reads exists in
the response schema of the operation it calls, so a renamed or removed API field fails here, not on
a wall screen.

Each client method is called over a transport that answers with a body generated from the schema
(every property, nullable ones filled, one element per array); the bodies are handed to the client
as dicts that record every key it reads. A key the schema does not have is a failure even where
the client reads it with ``.get`` (which would otherwise silently give None)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.auth import Auth
from core.plant import load_plant
from core.store.sqlite import SqliteStore
from dashboard.client import ApiClient
from tests.conftest import DEMO_PLANT

T0 = datetime.fromisoformat("2026-11-27T08:00:00+09:00")
T1 = datetime.fromisoformat("2026-11-27T11:00:00+09:00")


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db = tmp_path_factory.mktemp("contract") / "m.db"
    app = create_app(load_plant(DEMO_PLANT), SqliteStore(Path(db)), auth=Auth.open_reads())
    doc: dict[str, Any] = app.openapi()
    return doc


class Tracked(dict[str, Any]):
    """A response object that records the keys the client reads, and which it lacks."""

    def __init__(self, name: str, data: dict[str, Any], misses: list[str]) -> None:
        super().__init__(data)
        self.name = name
        self.misses = misses

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            self.misses.append(f"{self.name}.{key}")
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self.misses.append(f"{self.name}.{key}")
        return super().get(key, default)


class Generator:
    def __init__(self, doc: dict[str, Any], misses: list[str]) -> None:
        self.doc = doc
        self.misses = misses

    def resolve(self, schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        name = "value"
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = self.doc["components"]["schemas"][name]
        return name, schema

    def value(self, schema: dict[str, Any], key: str = "") -> Any:
        name, schema = self.resolve(schema)
        for alt in ("anyOf", "oneOf"):
            if alt in schema:  # a nullable field: fill it, so the client's parsing of it runs too
                options = [s for s in schema[alt] if s.get("type") != "null"]
                return self.value(options[0], key)
        if "enum" in schema:
            return schema["enum"][0]
        if "const" in schema:
            return schema["const"]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            props = schema.get("properties", {})
            data = {k: self.value(v, k) for k, v in props.items()}
            if not props and "additionalProperties" in schema:
                return {}
            return Tracked(name, data, self.misses)
        if kind == "array":
            return [self.value(schema.get("items", {}), key)]
        if kind == "integer":
            return 1
        if kind == "number":
            return 1.5
        if kind == "boolean":
            return False
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2026-11-27T08:00:00+09:00"
        if fmt == "date":
            return "2026-11-27"
        return "running" if key == "state" else "x"

    def body(self, path: str) -> Any:
        for template, ops in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, path):
                resp = ops["get"]["responses"]["200"]["content"]["application/json"]
                return self.value(resp["schema"])
        raise AssertionError(f"the client calls {path}, which the API does not have")


class SchemaClient(ApiClient):
    """The client with its one HTTP read answered from the schema (the seam is the client's own)."""

    def __init__(self, gen: Generator) -> None:
        super().__init__("http://api", transport=httpx.MockTransport(lambda r: httpx.Response(500)))
        self.gen = gen
        self.paths: list[str] = []

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        self.paths.append(path)
        return self.gen.body(path)


@pytest.fixture
def client(openapi: dict[str, Any]) -> Iterator[tuple[SchemaClient, list[str]]]:
    misses: list[str] = []
    c = SchemaClient(Generator(openapi, misses))
    try:
        yield c, misses
    finally:
        c.close()


def test_every_field_the_client_reads_is_in_the_openapi_document(client: tuple[SchemaClient, list[str]]) -> None:
    c, misses = client
    c.healthz()
    c.site()
    c.lines()
    c.current_shift()
    tp = c.throughput("blade-1", start=T0, end=T1)
    assert tp.points and tp.points[0].target == 1.5
    c.plant()
    st = c.status("blade-1")
    assert st.counts is not None and st.machines[0].state == "running"
    c.line_oee("blade-1", start=T0, end=T1, bucket="1h")
    dt = c.downtime("blade-1", start=T0, end=T1)
    assert dt.pareto
    c.states("cnc-1", start=T0, end=T1)
    c.gauge("cnc-1", "spindle_temp", start=T0, end=T1)
    stops = c.stops("blade-1", start=T0, end=T1)  # the operator page's reads
    assert stops and stops[0].reason == 1 and stops[0].named_by == "x"
    assert c.notes("blade-1", start=T0, end=T1)
    assert c.plant().catalogue
    assert misses == []
    assert len(c.paths) == 14


def test_a_renamed_field_fails(openapi: dict[str, Any]) -> None:
    """The check itself: with ``total_good`` renamed in the document, the client's read is caught."""
    schemas = openapi["components"]["schemas"]
    renamed = {**openapi, "components": {**openapi["components"], "schemas": {
        **schemas, "Throughput": {**schemas["Throughput"], "properties": {
            ("good_total" if k == "total_good" else k): v
            for k, v in schemas["Throughput"]["properties"].items()}}}}}
    misses: list[str] = []
    c = SchemaClient(Generator(renamed, misses))
    with pytest.raises(KeyError):
        c.throughput("blade-1", start=T0, end=T1)
    assert misses == ["Throughput.total_good"]
    c.close()
