"""Grafana's InfluxQL macro expansion, for running a dashboard's queries without Grafana.

Grafana is not packaged for Debian, so the tests cannot run it; they run each query of a dashboard
model (``deploy/grafana/*.json``) against a real influxd after expanding it the way Grafana's
InfluxDB data source does in raw-query mode (InfluxQL). The rules, as Grafana applies them:

- **Variable syntax**: ``$name``, ``${name}``, ``${name:raw}`` and ``[[name]]`` all name the variable
  ``name``. Any other ``${name:format}`` is refused here (the dashboard does not use one).
- **Template variables** (Grafana's ``interpolateQueryExpr`` for InfluxDB): a variable that is neither
  multi-value nor has "include All" is pasted as is. Otherwise each value is regex-escaped
  (``\\^$*+?.()|[]{}/`` get a backslash) and several values become ``(a|b|c)``, one stays ``a``;
  so a query writes ``"machine" =~ /^$machine$/``. "All" is the variable's ``allValue`` when it has
  one (pasted raw), else every option's value, formatted as a multi-value.
- **A repeated panel** (``"repeat": "reason"``) is one panel per selected value of the variable,
  with that variable bound to that one value in the panel's queries.
- **Time range**: ``$timeFilter`` is ``time >= <from>ms and time <= <to>ms`` (inclusive at both ends,
  for an absolute range); ``$__from`` and ``$__to`` are the range's ends in epoch milliseconds.
- **Interval**: ``$__interval`` is the panel's interval as an InfluxQL duration (``30s``, ``5m``,
  ``1h``: Grafana derives it from the range and the panel width, at least the panel's ``interval``);
  ``$__interval_ms`` the same in milliseconds.
- A name that is neither a built-in nor a variable is an error here (Grafana would leave it in the
  query, and InfluxDB would refuse the query).
- Queries go to ``GET /query`` with ``db`` and ``epoch=ms`` (what Grafana sends); a variable's
  values from a query are Grafana's ``metricFindQuery`` rule: per row, the second column when there
  is one (``SHOW TAG VALUES`` answers ``key, value``; a ``SELECT`` answers ``time, value``), else
  the first.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_VAR_RE = re.compile(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)\]\]")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_DURATION_RE = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class ExpandError(ValueError):
    """A query names something Grafana would not replace."""


@dataclass(frozen=True)
class Variable:
    """A dashboard variable's selection: ``values`` (the selected ones; ``all`` for "All")."""

    name: str
    values: tuple[str, ...]
    multi: bool = False
    include_all: bool = False
    all_selected: bool = False
    all_value: str | None = None
    options: tuple[str, ...] = ()


def duration_ms(d: str) -> int:
    m = _DURATION_RE.fullmatch(d)
    if m is None:
        raise ExpandError(f"{d!r} is not an InfluxQL duration like 30s, 5m or 1h")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def regex_escape(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _format(var: Variable) -> str:
    if var.all_selected and var.include_all:
        if var.all_value is not None:
            return var.all_value
        values: Sequence[str] = var.options
    else:
        values = var.values
    if not var.multi and not var.include_all:
        if len(values) != 1:
            raise ExpandError(f"variable {var.name!r} is single-value but has {len(values)} values")
        return values[0]
    escaped = [regex_escape(v) for v in values]
    if not escaped:
        raise ExpandError(f"variable {var.name!r} has no value selected")
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(query: str, *, from_ms: int, to_ms: int, interval: str = "1m",
           variables: Mapping[str, Variable] | None = None) -> str:
    """``query`` with Grafana's macros and variables replaced (see the module docstring)."""
    variables = variables or {}
    builtins = {
        "timeFilter": f"time >= {from_ms}ms and time <= {to_ms}ms",
        "__from": str(from_ms),
        "__to": str(to_ms),
        "__interval": interval,
        "__interval_ms": str(duration_ms(interval)),
    }

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3)
        if fmt is not None and fmt != "raw":
            raise ExpandError(f"format :{fmt} of ${{{name}}} is not supported by this expander")
        if name in builtins:
            return builtins[name]
        if name in variables:
            var = variables[name]
            if fmt == "raw":
                return ",".join(var.values)
            return _format(var)
        raise ExpandError(f"${name} is neither a Grafana built-in nor a dashboard variable (query: {query})")

    return _VAR_RE.sub(repl, query)


# ---- the dashboard model ---------------------------------------------------------------------------

def load(path: Path) -> dict[str, Any]:
    model: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return model


def panels(model: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed panels included, rows themselves left out."""
    for p in model.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def template_vars(model: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = model.get("templating", {}).get("list", [])
    return out


def group_by_tags(query: str) -> set[str]:
    """The tags a query groups by (``GROUP BY time(...), "machine", "signal"`` → machine, signal)."""
    m = re.search(r"GROUP BY (.*?)(?: fill\(| ORDER BY| LIMIT|$)", query.split(") WHERE")[-1], re.S | re.I)
    if m is None:
        return set()
    return {t.strip().strip('"') for t in m.group(1).split(",") if t.strip() and not t.strip().startswith("time(")}


# ---- running queries as Grafana does ---------------------------------------------------------------

def run(base_url: str, database: str, query: str) -> list[dict[str, Any]]:
    """``GET /query?db=…&epoch=ms&q=…``; the statements' results. An error answer raises."""
    params = urllib.parse.urlencode({"db": database, "epoch": "ms", "q": query})
    with urllib.request.urlopen(f"{base_url}/query?{params}", timeout=60) as r:
        body: dict[str, Any] = json.loads(r.read())
    if "error" in body:
        raise RuntimeError(f"influxd: {body['error']} (query: {query})")
    results: list[dict[str, Any]] = body.get("results", [])
    for res in results:
        if "error" in res:
            raise RuntimeError(f"influxd: {res['error']} (query: {query})")
    return results


def series(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [s for res in results for s in res.get("series", [])]


def find_values(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """A query variable's values from its query's answer (Grafana's ``metricFindQuery`` rule)."""
    out: dict[str, None] = {}
    for s in series(results[:1]):
        for row in s.get("values", []):
            v = row[1] if len(row) > 1 else row[0]
            out[str(v)] = None
    return list(out)
