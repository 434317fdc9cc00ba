"""The Grafana dashboard (deploy/grafana/mieruka-influxql.json) over a real influxd.

Grafana itself is not installable here, so every templating query and every panel query is expanded
the way Grafana's InfluxDB data source does (tests/support/grafana.py documents the rules) and run on
a real influxd holding a fast-forward day of the demo plant, stored through the product's own path
(``mieruka simulate`` then ``mieruka import``). Each query must run and return data, and its figures
must equal what ``mieruka api`` (a real process on the same database) answers for the same window:
counts per machine, throughput buckets, seconds per state and per stop reason."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.plant import Plant, load_plant
from tests.conftest import DEMO_PLANT, ROOT
from tests.support import grafana as g
from tests.support.influxd import Influxd
from tests.support.ledger import ms, parts_by_product, read_ledger
from tests.support.procs import api_process, mieruka_ok

DASHBOARD = ROOT / "deploy" / "grafana" / "mieruka-influxql.json"
START = datetime.fromisoformat("2026-11-26T08:00:00+09:00")  # a Thursday: day shift, then night shift
END = START + timedelta(days=1)
# the dashboard's time range: from inside a break to inside the night shift, stops cut at both ends
FROM, TO = START + timedelta(hours=2), START + timedelta(hours=20)
FROM_MS, TO_MS = ms(FROM), ms(TO)
NS, MS_NS = 1_000_000_000, 1_000_000
V1 = "/api/v1"
WINDOW = {"start": FROM.isoformat(), "end": TO.isoformat()}


@dataclass
class Stack:
    influx: Influxd
    database: str
    api: httpx.Client
    truth: Path

    def run(self, query: str) -> list[dict[str, Any]]:
        return g.run(self.influx.base_url, self.database, query)

    def get(self, path: str, **params: str) -> Any:
        r = self.api.get(V1 + path, params={**WINDOW, **params})
        assert r.status_code == 200, r.text
        return r.json()



@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return g.load(DASHBOARD)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, influxd_server: Influxd) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("grafana")
    samples, truth = d / "samples.csv", d / "truth.jsonl"
    mieruka_ok("simulate", "--plant", str(DEMO_PLANT), "--seed", "11", "--from", START.isoformat(),
               "--to", END.isoformat(), "--samples", str(samples), "--truth", str(truth))
    database = f"grafana_{uuid.uuid4().hex[:8]}"
    url = influxd_server.url(database)
    mieruka_ok("import", "--plant", str(DEMO_PLANT), "--store", url, str(samples))
    with api_process(DEMO_PLANT, url, d / "api.log") as base, httpx.Client(base_url=base, timeout=120) as api:
        yield Stack(influxd_server, database, api, truth)


# ---- the dashboard's variables and queries, expanded -------------------------------------------------

def resolve_variables(model: Mapping[str, Any], stack: Stack, pick: Mapping[str, list[str]] | None = None
                      ) -> dict[str, g.Variable]:
    """Each templating variable in order (a query may use the ones before it): its options from its
    query (or its custom list), selected as in ``pick`` or else its saved ``current`` selection."""
    out: dict[str, g.Variable] = {}
    for v in g.template_vars(model):
        name = v["name"]
        if v["type"] == "query":
            options = tuple(g.find_values(stack.run(g.expand(v["query"], from_ms=FROM_MS, to_ms=TO_MS,
                                                              variables=out))))
        else:
            options = tuple(str(o["value"]) for o in v["options"])
        current = v["current"]["value"]
        chosen = (pick or {}).get(name)
        if chosen is None:
            chosen = current if isinstance(current, list) else [current]
        all_selected = chosen == ["$__all"]
        values = options if all_selected else tuple(chosen)
        out[name] = g.Variable(name, values, multi=bool(v.get("multi")), include_all=bool(v.get("includeAll")),
                               all_selected=all_selected, all_value=v.get("allValue"), options=options)
    return out


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    text: str
    repeat_value: str | None


def queries(model: Mapping[str, Any], variables: Mapping[str, g.Variable], interval: str = "5m") -> list[Query]:
    """Every target of every panel, expanded; a repeated panel once per value of its variable."""
    out: list[Query] = []
    for p in g.panels(model):
        repeat = p.get("repeat")
        bindings: list[tuple[str | None, Mapping[str, g.Variable]]] = [(None, variables)]
        if repeat:
            var = variables[repeat]
            bindings = [(value, {**variables, repeat: replace(var, values=(value,), all_selected=False)})
                        for value in var.values]
        for value, vs in bindings:
            for t in p.get("targets", []):
                out.append(Query(p["title"], t["refId"], g.expand(t["query"], from_ms=FROM_MS, to_ms=TO_MS,
                                                                  interval=interval, variables=vs), value))
    return out


def panel(model: Mapping[str, Any], title: str) -> dict[str, Any]:
    found = [p for p in g.panels(model) if p["title"] == title]
    assert len(found) == 1, f"one panel titled {title!r} expected, found {len(found)}"
    return found[0]


def first_values(stack: Stack, q: str) -> dict[str, Any]:
    """machine → the value of a query grouped by machine alone (one row per series)."""
    out: dict[str, Any] = {}
    for s in g.series(stack.run(q)):
        assert len(s["values"]) == 1, s
        out[s["tags"]["machine"]] = s["values"][0][1]
    return out


# ---- what the API says, in the shapes the panels show ------------------------------------------------

def ns(t: str) -> int:
    d = datetime.fromisoformat(t)
    return (int(d.timestamp()) * 1_000_000 + d.microsecond) * 1000


def sampled_seconds(timeline: list[dict[str, Any]], keep: Any) -> int:
    """Seconds of [FROM, TO) whose sample instant (the last nanosecond of the second: the state a
    ``last()`` per second carries) falls in a stretch ``keep`` accepts (the API's timeline)."""
    f = FROM_MS * MS_NS
    n = 0
    for x in timeline:
        if keep(x):
            a, b = ns(x["start"]), ns(x["end"])
            # second j (1-based) is sampled at f + j*NS - 1; it lies in [a, b) iff f + j*NS in [a+1, b+1)
            lo = -(-(a + 1 - f) // NS)
            hi = -(-(b + 1 - f) // NS) - 1
            n += max(0, hi - lo + 1)
    return n


@pytest.fixture(scope="module")
def timelines(stack: Stack, plant: Plant) -> dict[str, dict[str, Any]]:
    return {m.id: stack.get(f"/machines/{m.id}/states") for _, m in plant.machines()}


# ---- the model -------------------------------------------------------------------------------------

def test_dashboard_is_an_importable_grafana_model(model: dict[str, Any]) -> None:
    assert isinstance(model["schemaVersion"], int) and model["schemaVersion"] >= 36
    assert model["uid"] and model["title"]
    (inp,) = model["__inputs"]
    assert inp == {**inp, "name": "DS_MIERUKA", "type": "datasource", "pluginId": "influxdb"}
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = {v["name"] for v in g.template_vars(model)}
    assert {"line", "machine"} <= names
    for v in g.template_vars(model):
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${DS_MIERUKA}", v["name"]
    with_queries = [p for p in g.panels(model) if p.get("targets")]
    assert len(with_queries) >= 6
    for p in with_queries:
        assert len(p.get("description", "")) > 80, f"panel {p['title']!r} must say what it shows and does not"
        assert {k for k in ("x", "y", "w", "h")} <= set(p["gridPos"])
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_MIERUKA}" and t["rawQuery"] is True, (p["title"], t["refId"])
            for tag in {w.removeprefix("$tag_") for w in t.get("alias", "").split() if w.startswith("$tag_")}:
                assert tag in g.group_by_tags(t["query"]), f"{p['title']}: alias names ${tag} it does not group by"


def test_the_expander_follows_grafanas_rules() -> None:
    multi = g.Variable("machine", ("cnc-1", "a.b"), multi=True, include_all=True)
    assert g.expand('"machine" =~ /^$machine$/', from_ms=1, to_ms=2, variables={"machine": multi}) \
        == '"machine" =~ /^(cnc-1|a\\.b)$/'
    one = replace(multi, values=("cnc-1",))
    assert g.expand("/^${machine}$/ [[machine]]", from_ms=1, to_ms=2, variables={"machine": one}) == "/^cnc-1$/ cnc-1"
    plain = g.Variable("lookback", ("1d",))
    assert g.expand("time >= ${__from}ms - $lookback", from_ms=5, to_ms=9, variables={"lookback": plain}) \
        == "time >= 5ms - 1d"
    every = replace(multi, all_selected=True, options=("x", "y"))
    assert g.expand("$machine", from_ms=1, to_ms=2, variables={"machine": every}) == "(x|y)"
    assert g.expand("$machine", from_ms=1, to_ms=2, variables={"machine": replace(every, all_value=".*")}) == ".*"
    assert g.expand("$timeFilter GROUP BY time($__interval) $__interval_ms $__to", from_ms=1000, to_ms=2000,
                    interval="5m") == "time >= 1000ms and time <= 2000ms GROUP BY time(5m) 300000 2000"
    with pytest.raises(g.ExpandError, match=r"\$nope"):
        g.expand("$nope", from_ms=1, to_ms=2)


# ---- against influxd and the API -------------------------------------------------------------------

def test_templating_lists_the_plants_lines_machines_and_the_windows_reasons(
        model: dict[str, Any], stack: Stack, plant: Plant, timelines: dict[str, dict[str, Any]]) -> None:
    vs = resolve_variables(model, stack)
    assert sorted(vs["line"].options) == sorted(ln.id for ln in plant.lines)
    assert sorted(vs["machine"].options) == sorted(m.id for _, m in plant.machines())
    one = resolve_variables(model, stack, {"line": ["blade-1"]})
    blade = plant.line("blade-1")
    assert blade is not None
    assert sorted(one["machine"].options) == sorted(m.id for m in blade.machines)
    stopped = {str(x["reason"]) for t in timelines.values() for x in t["timeline"]
               if x["reason"] is not None and x["state"] != "running"}
    assert stopped and stopped <= set(vs["reason"].options)


def test_every_panel_query_runs_and_returns_data(model: dict[str, Any], stack: Stack) -> None:
    vs = resolve_variables(model, stack)
    qs = queries(model, vs)
    titles = {p["title"] for p in g.panels(model) if p.get("targets")}
    assert {q.panel for q in qs} == titles
    with_data: set[str] = set()
    for q in qs:
        if g.series(stack.run(q.text)):  # an error answer raises
            with_data.add(q.panel)
        else:
            # one target of several may be empty (no machine was 'offline'; a reason whose stop ended
            # before the range), never a panel's only query
            assert sum(1 for x in qs if x.panel == q.panel) > 1, f"{q.panel} {q.ref} returned no data: {q.text}"
    assert with_data == titles, f"panels showing no data at all: {sorted(titles - with_data)}"


@pytest.mark.parametrize("interval", ["5m", "1h"])
def test_throughput_buckets_equal_the_apis(model: dict[str, Any], stack: Stack, plant: Plant, interval: str) -> None:
    vs = resolve_variables(model, stack)
    (q,) = [x for x in queries(model, vs, interval) if x.panel == "Good and scrap per interval"]
    per: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for s in g.series(stack.run(q.text)):
        for t, v in s["values"]:
            per[(s["tags"]["machine"], s["tags"]["signal"])][t] = v
    for line in plant.lines:
        api = stack.get(f"/lines/{line.id}/throughput", bucket=interval)
        outputs = [m.id for m in line.output_machines]
        want_good = {ns(p["start"]) // MS_NS: p["good"] for p in api["points"]}
        want_scrap = {ns(p["start"]) // MS_NS: p["scrap"] for p in api["points"]}
        times = set(want_good) | {t for (m, _), b in per.items() if m in [x.id for x in line.machines] for t in b}
        got_good = {t: sum(per[(m, "good")].get(t, 0) for m in outputs) for t in times}
        got_scrap = {t: sum(per[(m.id, "scrap")].get(t, 0) for m in line.machines) for t in times}
        assert {t: v for t, v in got_good.items() if v} == {t: v for t, v in want_good.items() if v}, line.id
        assert {t: v for t, v in got_scrap.items() if v} == {t: v for t, v in want_scrap.items() if v}, line.id
        assert sum(got_good.values()) == api["total_good"] > 100
        assert sum(got_scrap.values()) == api["total_scrap"]


def test_counts_in_the_range_and_oee_inputs_equal_the_apis_counts(model: dict[str, Any], stack: Stack,
                                                                  plant: Plant) -> None:
    vs = resolve_variables(model, stack)
    qs = queries(model, vs)
    (counts,) = [q for q in qs if q.panel == "Counts in the range"]
    in_range = {(s["tags"]["machine"], s["tags"]["signal"]): s["values"][0][1]
                for s in g.series(stack.run(counts.text))}
    inputs = {q.ref: first_values(stack, q.text) for q in qs if q.panel == "OEE inputs per machine"}
    for _, m in plant.machines():
        api = stack.get(f"/machines/{m.id}/oee")["figures"]["counts"]
        assert api["good"] > 0, m.id
        assert in_range.get((m.id, "good"), 0) == api["good"] == inputs["C"].get(m.id, 0), m.id
        assert in_range.get((m.id, "scrap"), 0) == api["scrap"] == inputs["D"].get(m.id, 0), m.id
        # the demo's machines count good and scrap: no 'total' series, and the API's total is their sum
        assert (m.id, "total") not in in_range and m.id not in inputs["E"]
        assert api["total"] == api["good"] + api["scrap"]


def test_state_seconds_equal_the_apis_timeline(model: dict[str, Any], stack: Stack, plant: Plant,
                                               timelines: dict[str, dict[str, Any]]) -> None:
    """The sampled panels equal the API's timeline sampled the same way (the last nanosecond of each
    second), exactly; and differ from its exact seconds by under a second per state change."""
    vs = resolve_variables(model, stack)
    qs = queries(model, vs)
    per_state = {q.ref: q for q in qs if q.panel == "Time per state (s)"}
    targets = {t["refId"]: t["alias"].split()[-1] for t in panel(model, "Time per state (s)")["targets"]}
    assert sorted(targets.values()) == sorted(["running", "idle", "down", "changeover", "planned", "offline"])
    inputs = {q.ref: first_values(stack, q.text) for q in qs if q.panel == "OEE inputs per machine"}
    checked = 0
    for ref, state in targets.items():
        got = first_values(stack, per_state[ref].text)
        for _, m in plant.machines():
            t = timelines[m.id]
            want = sampled_seconds(t["timeline"], lambda x, s=state: x["state"] == s)
            assert got.get(m.id, 0) == want, (m.id, state)
            changes = len(t["timeline"])
            assert abs(want - t["state_seconds"].get(state, 0.0)) <= changes, (m.id, state)
            if state == "running":
                assert inputs["A"].get(m.id, 0) == want, m.id
            if state == "planned":
                assert inputs["B"].get(m.id, 0) == want, m.id
            checked += want
    assert checked == len(timelines) * (TO_MS - FROM_MS) // 1000  # every second of every machine, once


def test_stop_time_per_reason_equals_the_apis_timeline(model: dict[str, Any], stack: Stack, plant: Plant,
                                                       timelines: dict[str, dict[str, Any]]) -> None:
    vs = resolve_variables(model, stack)
    per_reason = [q for q in queries(model, vs) if q.panel == "Stop time with reason $reason (s)"]
    assert len(per_reason) == len(vs["reason"].values) >= 3
    for q in per_reason:
        got = first_values(stack, q.text)
        for _, m in plant.machines():
            want = sampled_seconds(timelines[m.id]["timeline"],
                                   lambda x, r=q.repeat_value: x["state"] != "running" and str(x["reason"]) == r)
            assert got.get(m.id, 0) == want, (m.id, q.repeat_value)


def render(points: list[list[Any]], start_ms: int, end_ms: int) -> list[tuple[int, int, Any]]:
    """What a state-timeline panel draws in [start, end): each value from its time until the next."""
    out: list[tuple[int, int, Any]] = []
    for i, (t, v) in enumerate(points):
        nxt = points[i + 1][0] if i + 1 < len(points) else end_ms
        a, b = max(t, start_ms), min(nxt, end_ms)
        if b > a:
            out.append((a, b, v))
    return out


def test_state_timeline_equals_the_apis(model: dict[str, Any], stack: Stack, plant: Plant,
                                        timelines: dict[str, dict[str, Any]]) -> None:
    """Grafana gets times in milliseconds (epoch=ms), the store keeps nanoseconds: each change may
    move by under a millisecond."""
    (q,) = [x for x in queries(model, resolve_variables(model, stack)) if x.panel == "State timeline"]
    drawn = {s["tags"]["machine"]: render(s["values"], FROM_MS, TO_MS) for s in g.series(stack.run(q.text))}
    assert set(drawn) == set(timelines)
    for mid, stretches in drawn.items():
        assert stretches[0][0] == FROM_MS and stretches[-1][1] == TO_MS, f"{mid}: the range is not covered"
        secs: dict[str, float] = defaultdict(float)
        for a, b, v in stretches:
            secs[v] += (b - a) / 1000
        want = timelines[mid]["state_seconds"]
        slack = 0.001 * (len(stretches) + 1)
        assert set(secs) == {k for k, v in want.items() if v > 0}, mid
        for state, s in want.items():
            assert abs(secs[state] - s) <= slack, (mid, state, secs[state], s)


def test_product_timeline_agrees_with_the_ledger(model: dict[str, Any], stack: Stack, plant: Plant) -> None:
    """Every part the simulators made in the range is drawn under the product the ledger says it was."""
    (q,) = [x for x in queries(model, resolve_variables(model, stack)) if x.panel == "Product"]
    records = read_ledger(stack.truth)
    drawn = {s["tags"]["machine"]: render(s["values"], FROM_MS, TO_MS) for s in g.series(stack.run(q.text))}
    with_product = [m.id for _, m in plant.machines() if "product" in m.signals]
    assert sorted(drawn) == sorted(with_product) and with_product
    for mid in with_product:
        want = {p: gd + sc for p, (gd, sc) in parts_by_product(records, mid, FROM, TO).items()}
        got: Counter[str | None] = Counter()
        for r in records:
            if r.get("kind") == "part" and r["machine"] == mid and FROM <= r["_t"] < TO:
                t = ms(r["_t"])
                # a part made at the instant of a product change was the product before it (as in core.oee)
                got[next((v for a, b, v in drawn[mid] if a < t <= b), None)] += 1
        assert dict(got) == want and len(want) >= 1, mid
