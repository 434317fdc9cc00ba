"""Scale-out, run here: the simulators (OPC UA + real Mosquitto) → two ``mieruka collect`` processes
partitioned by line (``--lines ua`` over OPC UA, ``--lines mq`` over MQTT, a spool each) → one real
influxd → two ``mieruka api`` replicas (same token file, refresh period 2 s, alert rules on both) →
a real HAProxy running the shipped ``deploy/haproxy/mieruka.cfg``.

- Through the load balancer, every line's and machine's good and scrap, and every machine's seconds
  per state and per (state, reason), over a window equal the simulators' ground-truth ledger once
  the simulators stopped and the collectors flushed; the requests reach both replicas.
- A stop's reason named on replica 1 is in replica 2's Pareto within one refresh period (+ a
  bounded margin) though replica 2 had the old answer kept, and on replica 1 at once; the Pareto
  seconds move by the stop's ledger seconds.
- Each alert message (a machine down for longer than the rule's time) is received exactly once
  although both replicas check the rules; every long breakdown begun and ended while they checked
  is told ("firing" and "resolved"), each naming the ledger's start of the breakdown.
- The live stream through the load balancer takes its own backend and sends an event per period;
  with replica 2 stopped, every request through the load balancer is still answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from api.tokens import create_token
from core.plant import Plant, dump_plant, parse_plant
from core.store import open_store
from tests.e2e.plants import fast_plant
from tests.support.haproxy import haproxy
from tests.support.influxd import Influxd
from tests.support.ledger import (
    LedgerStretch,
    down_runs,
    ms,
    parse_t,
    part_counts,
    read_ledger,
    state_seconds_between,
    state_stretches,
)
from tests.support.procs import counting_everywhere, interrupt, mieruka, wait_http, wait_until
from tests.support.services import Mosquitto, free_port, stop, wait_port
from tests.support.webhook import receiver

REFRESH_S = 2.0  # the replicas' --refresh-period
MARGIN_S = 1.0  # one Pareto computed on influxd plus the polling step
FLUSH_S = 0.5
CHECK_S = 0.5
MINUTES = 0.025  # the down rule's 1.5 s
LATENCY_S = 3.0  # flush + OPC UA publishing + a store read + the claim's settle time + the POST
WINDOW_S = 20
BURST = 12  # requests through the load balancer to see both replicas answer
V1 = "/api/v1"
THROUGHPUT_ROUTE = f"{V1}/lines/{{line_id}}/throughput"
ALERTED = ("ua-1", "mq-1")  # machines with a down rule




def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def scaleout_plant(mqtt_port: int, hook_url: str) -> Plant:
    """The e2e plant's two lines (``ua`` over OPC UA, ``mq`` over MQTT); ua-1 breaks down often and
    long (the alerts' subject); every stop is downtime (micro-stops off), so each is in the Pareto."""
    raw: dict[str, Any] = yaml.safe_load(dump_plant(fast_plant(free_port(), mqtt_port,
                                                               prefix=f"so-{uuid.uuid4().hex[:6]}")))
    raw["calendar"]["micro_stop_s"] = 0
    for line in raw["lines"]:
        for m in line["machines"]:
            if m["id"] == "ua-1":
                m["simulation"].update(mtbf_s=4, mttr_s=6, reasons=[20])
    raw["alerts"] = {"check_period_s": CHECK_S, "webhooks": [{"id": "chat", "url": hook_url}],
                     "rules": [{"id": f"{m}-down", "down": {"machine": m, "minutes": MINUTES}} for m in ALERTED]}
    return parse_plant(raw)


@contextlib.contextmanager
def replicas(plant_file: Path, store_url: str, tokens: Path, logs: Path,
             n: int) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """``n`` ``mieruka api`` processes on one store, started together; (base URL, process) once all answer."""
    ports = [free_port() for _ in range(n)]
    procs = [mieruka("api", "--plant", str(plant_file), "--store", store_url, "--port", str(p), "--tokens",
                     str(tokens), "--refresh-period", str(REFRESH_S), log=logs / f"api-{i + 1}.log")
             for i, p in enumerate(ports)]
    try:
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        for base, proc in zip(bases, procs, strict=True):
            wait_http(f"{base}/healthz", deadline_s=60, proc=proc)
        yield list(zip(bases, procs, strict=True))
    finally:
        for proc in procs:
            stop(proc)


def route_requests(metrics_text: str, route: str) -> float:
    """``mieruka_api_requests_total`` of one route template, every method and status."""
    return sum(s.value for fam in text_string_to_metric_families(metrics_text) for s in fam.samples
               if s.name == "mieruka_api_requests_total" and s.labels.get("route") == route)


def ledger_so_far(path: Path) -> list[dict[str, Any]]:
    """The ledger's complete records while the simulators still write it."""
    text = path.read_text(encoding="utf-8")
    out = []
    for line in text[: text.rfind("\n") + 1].splitlines():
        if line.strip():
            rec = json.loads(line)
            rec["_t"] = parse_t(rec["t"])
            out.append(rec)
    return out



def told_runs(records: list[dict[str, Any]], checking_from: datetime, now: datetime) -> list[tuple[str, datetime]]:
    """Breakdowns of the alerts' machines that must have been told by ``now``: begun while both
    replicas checked, long enough to be seen (the rule's time + a check + the latency), ended long
    enough ago for the "resolved" message to have arrived."""
    threshold, slack = timedelta(seconds=MINUTES * 60), timedelta(seconds=CHECK_S + LATENCY_S)
    return [(m, s) for m, s, u in down_runs(records)
            if m in ALERTED and s >= checking_from and u is not None and u - s >= threshold + slack
            and u <= now - slack]


def pareto(body: dict[str, Any]) -> dict[tuple[str, int | None], float]:
    return {(r["state"], r["reason"]): float(r["seconds"]) for r in body["pareto"]}


def plain_stop(records: list[dict[str, Any]], plant: Plant, t0: datetime, t1: datetime) -> tuple[str, LedgerStretch]:
    """A stop inside the window that is one ``down`` stretch between two running ones (naming it moves
    exactly its seconds), preferring ua-1, the machine that breaks down most."""
    for _, m in sorted(plant.machines(), key=lambda lm: lm[1].id != "ua-1"):
        xs = state_stretches(records, m.id)
        for i in range(1, len(xs) - 1):
            x = xs[i]
            if (x.state == "down" and x.until_ms is not None and xs[i - 1].state == "running"
                    and xs[i + 1].state == "running" and ms(t0) <= x.since_ms and x.until_ms <= ms(t1)):
                return m.id, x
    raise AssertionError("no plain breakdown inside the window; raise WINDOW_S or ua-1's mttr_s")


async def test_two_collectors_two_replicas_behind_haproxy(tmp_path: Path, influxd_server: Influxd,
                                                          mosquitto_broker: Mosquitto) -> None:
    tokens = tmp_path / "tokens.json"
    rd = {"Authorization": f"Bearer {create_token(tokens, 'scaleout-read', 'read')}"}
    opr = {"Authorization": f"Bearer {create_token(tokens, 'scaleout-operator', 'operator')}"}
    store_url = influxd_server.url(f"scaleout_{uuid.uuid4().hex[:8]}")
    ledger = tmp_path / "ledger.jsonl"
    with receiver() as hook, contextlib.ExitStack() as running:
        plant = scaleout_plant(mosquitto_broker.port, hook.url())
        plant_file = tmp_path / "plant.yaml"
        plant_file.write_text(dump_plant(plant), encoding="utf-8")
        machines = [m.id for _, m in plant.machines()]
        assert {ln.id for ln in plant.lines} == {"ua", "mq"}

        sim = mieruka("simulate", "--plant", str(plant_file), "--seed", "7", "--duration", "150",
                      "--truth", str(ledger), log=tmp_path / "simulate.log")
        running.callback(interrupt, sim)
        opcua_port = int(str(plant.sources["plc"].opcua.endpoint).rsplit(":", 1)[1])  # type: ignore[union-attr]
        await asyncio.to_thread(wait_port, opcua_port, 60.0, sim)
        collectors = {line: mieruka("collect", "--plant", str(plant_file), "--store", store_url, "--lines", line,
                                    "--spool-dir", str(tmp_path / f"spool-{line}"), "--flush-interval", str(FLUSH_S),
                                    log=tmp_path / f"collect-{line}.log")
                      for line in ("ua", "mq")}
        for proc in collectors.values():
            running.callback(interrupt, proc)
        store = open_store(store_url)
        await store.open()
        try:
            async def counting() -> bool:
                assert sim.poll() is None, (tmp_path / "simulate.log").read_text()
                for line, proc in collectors.items():
                    assert proc.poll() is None, (tmp_path / f"collect-{line}.log").read_text()
                return await counting_everywhere(store, machines)

            await wait_until(counting, 60, "a count from every machine in the store, from both collectors")
        finally:
            await store.close()

        started = running.enter_context(replicas(plant_file, store_url, tokens, tmp_path, 2))
        api = [base for base, _ in started]
        ports = [int(b.rsplit(":", 1)[1]) for b in api]
        lb = running.enter_context(haproxy(tmp_path / "haproxy", ports))
        up = datetime.now(UTC)  # both replicas check the alert rules from here on
        t0 = datetime.now(UTC) + timedelta(seconds=1)
        t0 = t0.replace(microsecond=t0.microsecond // 1000 * 1000)  # the API gets it to the millisecond
        t1 = t0 + timedelta(seconds=WINDOW_S)
        await asyncio.sleep((t1 - datetime.now(UTC)).total_seconds())  # the window must pass first
        # the simulators break down as they will: run on until a long breakdown (begun while both
        # replicas checked) is over and its messages had their time to arrive
        checking_from = up + timedelta(seconds=2)

        async def a_breakdown_told() -> bool:
            assert sim.poll() is None, (tmp_path / "simulate.log").read_text()
            return bool(told_runs(ledger_so_far(ledger), checking_from, datetime.now(UTC)))

        await wait_until(a_breakdown_told, 60, "a long breakdown of ua-1 or mq-1 in the ledger", poll_s=0.5)
        end = stopping = datetime.now(UTC)  # the simulators' machines go offline from here on, as they shut down
        assert interrupt(sim) == 0, (tmp_path / "simulate.log").read_text()
        records = read_ledger(ledger)  # complete: the simulators have stopped
        W = {"start": _iso(t0), "end": _iso(t1)}
        parts = part_counts(records, t0, t1)
        want: dict[str, Any] = {}
        for line in plant.lines:
            want[f"line {line.id}"] = (parts.good[line.output_machines[0].id],
                                       sum(parts.scrap[m.id] for m in line.machines))
        for m in machines:
            by_state, by_reason = state_seconds_between(records, m, t0, t1)
            want[f"machine {m}"] = (parts.good[m], parts.scrap[m])
            want[f"states {m}"] = {k: round(v, 3) for k, v in by_state.items()}
            want[f"reasons {m}"] = {f"{s}/{r}": round(v, 3) for (s, r), v in by_reason.items()}
        assert all(want[f"line {ln.id}"][0] > 0 for ln in plant.lines), want  # a window with production

        async with httpx.AsyncClient(base_url=lb.url, headers=rd, timeout=30) as client:
            got: dict[str, Any] = {}

            async def ask(path: str, **params: str) -> dict[str, Any]:
                r = await client.get(path, params={**W, **params})
                assert r.status_code == 200, (path, r.text)
                body: dict[str, Any] = r.json()
                return body

            async def lb_matches_ledger() -> bool:
                for line in plant.lines:
                    b = await ask(f"{V1}/lines/{line.id}/throughput", bucket="5m")
                    got[f"line {line.id}"] = (b["total_good"], b["total_scrap"])
                for m in machines:
                    c = (await ask(f"{V1}/machines/{m}/oee"))["figures"]["counts"]
                    got[f"machine {m}"] = (c["good"], c["scrap"])
                    tl = await ask(f"{V1}/machines/{m}/states")
                    got[f"states {m}"] = {k: round(v, 3) for k, v in tl["state_seconds"].items() if v}
                    reasons: Counter[str] = Counter()
                    for x in tl["timeline"]:
                        reasons[f"{x['state']}/{x['reason']}"] += x["seconds"]
                    got[f"reasons {m}"] = {k: round(v, 3) for k, v in reasons.items() if v}
                return got == want

            # the collectors flush every 0.5 s: wait on the condition, not a sleep
            t_check = time.monotonic()
            try:
                await wait_until(lb_matches_ledger, 30, "figures through the load balancer equal to the ledger")
            finally:
                print("want", want, "\ngot ", got)
            print(f"figures equal to the ledger {time.monotonic() - t_check:.2f} s after the simulators stopped")

            # the load balancer sends requests to both replicas (each counts the requests it answers)
            async def served(base: str) -> float:
                r = await client.get(f"{base}/metrics")
                assert r.status_code == 200, r.text
                return route_requests(r.text, THROUGHPUT_ROUTE)

            before = [await served(b) for b in api]
            for _ in range(BURST):
                r = await client.get(f"{V1}/lines/ua/throughput", params=W)
                assert r.status_code == 200, r.text
            share = [await served(b) - n for b, n in zip(api, before, strict=True)]
            print("requests per replica through the load balancer:", share)
            assert sum(share) == BURST and all(n >= 1 for n in share), share

            # operator input on replica 1, seen from replica 2 within one refresh period
            machine, stop_ = plain_stop(records, plant, t0, t1)
            assert stop_.until_ms is not None and stop_.reason is not None
            line_id = next(ln.id for ln in plant.lines if any(m.id == machine for m in ln.machines))
            new_reason = next(c for c in sorted(plant.reasons) if c != stop_.reason)
            downtime = f"{V1}/lines/{line_id}/downtime"
            p0 = pareto(await ask(f"{api[1]}{downtime}"))  # replica 2 keeps this answer for its period
            assert pareto(await ask(f"{api[0]}{downtime}")) == p0
            seconds = (stop_.until_ms - stop_.since_ms) / 1000
            want_p = dict(p0)
            want_p[("down", stop_.reason)] = round(want_p.get(("down", stop_.reason), 0.0) - seconds, 3)
            want_p[("down", new_reason)] = round(want_p.get(("down", new_reason), 0.0) + seconds, 3)
            want_p = {k: round(v, 3) for k, v in want_p.items() if round(v, 3)}

            def moved(p: dict[tuple[str, int | None], float]) -> bool:
                return {k: round(v, 3) for k, v in p.items()} == want_p

            start = datetime.fromtimestamp(stop_.since_ms / 1000, UTC)
            r = await client.put(f"{api[0]}{V1}/machines/{machine}/stops/{quote(start.isoformat(), safe='')}/reason",
                                 json={"reason": new_reason, "note": "seen on the other replica"}, headers=opr)
            assert r.status_code == 200, r.text
            written = time.monotonic()
            assert r.json()["previous_reason"] == stop_.reason
            assert moved(pareto(await ask(f"{api[0]}{downtime}"))), "replica 1 did not see its own write at once"
            last: dict[tuple[str, int | None], float] = {}

            async def replica_2_sees_it() -> bool:
                nonlocal last
                last = pareto(await ask(f"{api[1]}{downtime}"))
                return moved(last)

            try:
                await wait_until(replica_2_sees_it, REFRESH_S + 10, "the named stop in replica 2's Pareto",
                                 poll_s=0.05)
            finally:
                print("pareto before", p0, "\nwant", want_p, "\nreplica 2", last)
            took = time.monotonic() - written
            print(f"replica 2 saw the named stop {took:.2f} s after the write (refresh period {REFRESH_S} s)")
            assert took <= REFRESH_S + MARGIN_S, f"replica 2 saw the write only after {took:.2f} s"
            assert moved(pareto(await ask(downtime)))  # and through the load balancer

            # the live stream through the load balancer: an event every refresh period, not held back
            ids: list[int] = []
            async with asyncio.timeout(3 * REFRESH_S + 10), \
                    client.stream("GET", f"{V1}/stream", params={"lines": "ua"}) as sse:
                assert sse.status_code == 200 and sse.headers["content-type"].startswith("text/event-stream")
                async for text in sse.aiter_lines():
                    if text.startswith("id: "):
                        ids.append(int(text[4:]))
                    if len(ids) == 3:
                        break
            assert ids == sorted(set(ids)), ids
            assert int(lb.stats()[("mieruka_stream", "BACKEND")]["stot"]) == 1  # on its own backend

            # a replica goes away: HAProxy sends its requests to the other one (redispatch), then
            # its health checks take it out; no request fails meanwhile
            stop(started[1][1])
            slowest = 0.0
            for _ in range(BURST):
                t = time.monotonic()
                r = await client.get(f"{V1}/lines/ua/throughput", params=W)
                slowest = max(slowest, time.monotonic() - t)
                assert r.status_code == 200, r.text
                assert (r.json()["total_good"], r.json()["total_scrap"]) == want["line ua"]
            stats = lb.stats()
            print(f"replica 2 stopped: {BURST} requests answered by replica 1, slowest {slowest:.2f} s; "
                  "redispatched (per server switched away from):",
                  {sv: stats[("mieruka_api", sv)]["wredis"] for sv in ("api-1", "api-2")})

    # alerts: every message once, each naming a ledger breakdown by its exact start
    runs = {(m, s): u for m, s, u in down_runs(records)}
    got_alerts = [(r.body["rule"], r.body["kind"], datetime.fromisoformat(r.body["since"]), r.wall)
                  for r in hook.records]
    print("alerts:", [(rule, kind, since.isoformat(), (at - since).total_seconds())
                      for rule, kind, since, at in got_alerts])
    keys = [(rule, kind, since) for rule, kind, since, _ in got_alerts]
    assert len(keys) == len(set(keys)), f"a message was sent twice: {Counter(keys).most_common(3)}"
    threshold = timedelta(seconds=MINUTES * 60)
    for rule, kind, since, at in got_alerts:
        m = rule.removesuffix("-down")
        assert (m, since) in runs, f"{rule} {kind} since {since}: no breakdown of {m} starts then"
        until = runs[(m, since)]
        if kind == "firing":
            assert at >= since + threshold - timedelta(milliseconds=50)
        else:  # after the breakdown's end, or once the simulators stopped (the machine went offline)
            assert (until is not None and at >= until - timedelta(milliseconds=50)) or at >= stopping, (rule, since)
            assert (rule, "firing", since) in keys
    told = told_runs(records, checking_from, end)
    assert told
    for m, s in told:
        assert keys.count((f"{m}-down", "firing", s)) == 1 and keys.count((f"{m}-down", "resolved", s)) == 1, (m, s)
    print(f"{len(keys)} alert messages, each once; {len(told)} long breakdowns told")
