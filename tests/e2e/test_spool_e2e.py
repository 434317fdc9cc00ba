"""Collector that loses nothing, live: the simulators (``mieruka simulate`` with faults) → the
collector in-process, with its durable spool and dead-letter file as ``mieruka collect`` wires them
→ a real store → the API process; the simulators' ground-truth ledger is the oracle.

- Malformed MQTT payloads (``--fault malformed:5%@...``): the valid data is complete (the API's
  line totals over a window equal the ledger) and every malformed message is counted and kept in
  the dead-letter file with its reason and raw payload.
- An OPC UA server that goes away (``--fault restart@...``): its machines are ``offline`` in
  ``/machines/{id}/states`` for the outage and back to their ledger state after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from collector.deadletter import DeadLetters
from collector.pipeline import Collector
from collector.spool import Spool
from core.plant import Plant, dump_plant, parse_plant
from core.store import open_store
from core.store.base import Store
from tests.support.influxd import Influxd
from tests.support.ledger import LedgerStretch, line_totals, ms, parse_t, state_stretches
from tests.support.procs import (
    api_process,
    collector_running,
    counting_everywhere,
    interrupt,
    mieruka,
    wait_until,
)
from tests.support.services import Mosquitto, free_port, wait_port

FLUSH_S = 0.5
STATE_MAP = {1: "running", 2: "idle", 3: "down", 4: "changeover", 5: "planned"}
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
MALFORMED_KINDS = {"not_json", "wrong_type", "missing_field"}  # what the JSON simulator sends (mqtt_plc.py)


# ---- plants: one source each, short cycles so a few seconds hold many messages ------------------------


def _plant(sources: dict[str, Any], line: dict[str, Any]) -> Plant:
    return parse_plant({
        "site": {"id": "spool-e2e", "name": "Spool e2e", "timezone": "Asia/Tokyo", "locale": "en"},
        "calendar": {"shifts": [{"id": "all", "start": "00:00", "end": "00:00", "days": ALL_DAYS}],
                     "micro_stop_s": 120},
        "reasons": {10: {"name": "Tool change", "category": "changeover"},
                    20: {"name": "Spindle fault", "category": "breakdown"},
                    21: {"name": "Hydraulic fault", "category": "breakdown"}},
        "sources": sources,
        "lines": [line],
    }, "<spool e2e plant>")


def mqtt_plant(broker_port: int, prefix: str) -> Plant:
    """One MQTT line of two machines, ~17 messages a second between them."""
    t = {"time_field": "ts", "time_unit": "ms"}

    def machine(mid: str, cycle: float) -> dict[str, Any]:
        base = f"{prefix}/mq/{mid}"
        return {"id": mid, "ideal_cycle_s": cycle, "source": "broker", "signals": {
            "good": {"topic": f"{base}/counts", "field": "good", "counter_bits": 32, **t},
            "scrap": {"topic": f"{base}/counts", "field": "scrap", "counter_bits": 32, **t},
            "state": {"topic": f"{base}/state", "field": "code", "map": STATE_MAP, **t},
            "reason": {"topic": f"{base}/state", "field": "reason", **t},
        }, "simulation": {"scrap_rate": 0.1, "mtbf_s": 8, "mttr_s": 1, "reasons": [21],
                          "micro_stop_rate_per_h": 0}}

    return _plant({"broker": {"mqtt": {"host": "127.0.0.1", "port": broker_port, "qos": 1}}},
                  {"id": "mq", "name": "MQTT line", "target_per_hour": 30000,
                   "machines": [machine("mq-1", 0.1), machine("mq-2", 0.15)]})


def opcua_plant(port: int) -> Plant:
    """One OPC UA line of two machines that change state every few seconds."""

    def machine(mid: str, cycle: float) -> dict[str, Any]:
        n = f"ns=2;s=ua.{mid}"
        return {"id": mid, "ideal_cycle_s": cycle, "source": "plc", "signals": {
            "good": {"node": f"{n}.GoodCount", "counter_bits": 16},
            "scrap": {"node": f"{n}.ScrapCount", "counter_bits": 16},
            "state": {"node": f"{n}.State", "map": STATE_MAP},
            "reason": {"node": f"{n}.StopReason"},
        }, "simulation": {"scrap_rate": 0.1, "mtbf_s": 4, "mttr_s": 2, "reasons": [20, 10],
                          "micro_stop_rate_per_h": 0}}

    return _plant({"plc": {"opcua": {"endpoint": f"opc.tcp://127.0.0.1:{port}"}}},
                  {"id": "ua", "name": "OPC UA line", "target_per_hour": 3000,
                   "machines": [machine("ua-1", 0.6), machine("ua-2", 0.8)]})


# ---- the ledger, read while the simulator writes it ----------------------------------------------------


def ledger_records(path: Path) -> list[dict[str, Any]]:
    """The complete lines of the ledger so far (the simulator may be writing the last one)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    out = []
    for line in text[: text.rfind("\n") + 1].splitlines():
        if line.strip():
            rec: dict[str, Any] = json.loads(line)
            rec["_t"] = parse_t(rec["t"])
            out.append(rec)
    return out


@dataclass(frozen=True)
class FaultRecord:
    t: datetime
    duration_s: float

    @property
    def end(self) -> datetime:
        return self.t + timedelta(seconds=self.duration_s)


async def fault_record(ledger: Path, kind: str, deadline_s: float) -> FaultRecord:
    found: list[FaultRecord] = []

    async def written() -> bool:
        for r in ledger_records(ledger):
            if r.get("kind") == "fault" and r.get("fault") == kind:
                found.append(FaultRecord(r["_t"], float(r["duration_s"])))
                return True
        return False

    await wait_until(written, deadline_s, f"the ledger's {kind} fault record", poll_s=0.1)
    return found[0]


# ---- running the pieces -------------------------------------------------------------------------------


@dataclass
class Run:
    plant: Plant
    plant_file: Path
    ledger: Path
    store: Store
    collector: Collector
    dead_path: Path
    sim_log: Path


@asynccontextmanager
async def collecting(tmp_path: Path, plant: Plant, store_url: str) -> AsyncIterator[tuple[Run, str]]:
    """Store, spool, dead letters and collector wired as ``mieruka collect`` wires them, plus the API
    process (started first: its start-up blocks, and must not block a running collector's loop).
    Yields before the collector runs; :func:`run_collector` starts it."""
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(dump_plant(plant), encoding="utf-8")
    spool_dir = tmp_path / "spool"
    dead_path = spool_dir / "dead-letters.jsonl"
    store = open_store(store_url)
    await store.open()
    try:
        with Spool(spool_dir) as spool, DeadLetters(dead_path, logging.getLogger("collector.deadletter")) as dead:
            collector = Collector(plant, store, spool=spool, dead_letters=dead, flush_interval_s=FLUSH_S)
            with api_process(plant_file, store_url, tmp_path / "api.log") as base:
                yield Run(plant, plant_file, tmp_path / "ledger.jsonl", store, collector, dead_path,
                          tmp_path / "simulate.log"), base
    finally:
        await store.close()


@asynccontextmanager
async def simulating(run: Run, seed: int, duration_s: float,
                     *faults: str) -> AsyncIterator[subprocess.Popen[bytes]]:
    args = ["simulate", "--plant", str(run.plant_file), "--seed", str(seed), "--duration", str(duration_s),
            "--truth", str(run.ledger)]
    for f in faults:
        args += ["--fault", f]
    sim = mieruka(*args, log=run.sim_log)
    try:
        yield sim
    finally:
        interrupt(sim)


def every_machine_stored(run: Run, sim: subprocess.Popen[bytes], task: asyncio.Task[None], *,
                         counting: bool = True) -> Callable[[], Awaitable[bool]]:
    """A count from every machine (``counting``: the counter baselines are behind us), or any
    fact (enough for states once the server listened before the collector started)."""
    machines = [m.id for _, m in run.plant.machines()]

    async def stored() -> bool:
        assert sim.poll() is None, run.sim_log.read_text()
        assert not task.done(), task
        if counting:
            return await counting_everywhere(run.store, machines)
        return set(await run.store.last_times(machines)) == set(machines)

    return stored


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def ms_floor(t: datetime) -> datetime:
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


# ---- 1. malformed payloads -------------------------------------------------------------------------------

FAULT_AT_S, FAULT_FOR_S = 5, 12


def malformed_why_not(kind: str, payload: str) -> str | None:
    """None when ``payload`` is malformed the way ``kind`` says (independently of the collector's parser),
    else what is wrong with that claim."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return None if kind == "not_json" else "not JSON, yet not filed as not_json"
    if kind == "not_json":
        return "valid JSON filed as not_json"
    if not isinstance(obj, dict) or not isinstance(obj.get("ts"), int):
        return "not an object with an integer ts"
    fields = {k: v for k, v in obj.items() if k != "ts"}
    if kind == "missing_field":
        return None if not fields else f"has fields {sorted(fields)}"
    if kind == "wrong_type":
        return None if fields and all(v == "n/a" for v in fields.values()) else f"fields {fields}"
    return f"unexpected kind {kind}"


async def test_malformed_payloads_are_dead_lettered_and_the_valid_data_is_complete(
        tmp_path: Path, mosquitto_broker: Mosquitto, influxd_server: Influxd) -> None:
    plant = mqtt_plant(mosquitto_broker.port, f"spool-{uuid.uuid4().hex[:6]}")
    [line] = plant.lines
    machines = [m.id for m in line.machines]
    topics = {sig.topic: m.id for m in line.machines for sig in m.signals.values()}
    store_url = influxd_server.url(f"spool_{uuid.uuid4().hex[:8]}")

    async with collecting(tmp_path, plant, store_url) as (run, base):
        collector = run.collector
        async with collector_running(collector) as running, \
                simulating(run, 3, 60, f"malformed:5%@{FAULT_AT_S}s+{FAULT_FOR_S}s") as sim:
            await wait_until(every_machine_stored(run, sim, running.task), 30,
                             "a count from every machine in the store")
            baselined = datetime.now(UTC)
            fault = await fault_record(run.ledger, "malformed", 30)
            # Messages before the fault are all valid. A malformed counter message is not lost count: the
            # next valid one carries the cumulative value, at its own (later) time. So the window opens a
            # second before the fault (events reach the publisher within a tick of their time) and closes
            # once every machine has sent a valid counter message after the fault ended.
            t0 = fault.t - timedelta(seconds=1)
            assert baselined < t0, "the collector had its baselines before the window opened"
            valid_again = fault.end + timedelta(seconds=0.5)  # the fault's end, on the simulator's clock
            first_after: dict[str, datetime] = {}

            async def every_machine_counted_again() -> bool:
                for r in ledger_records(run.ledger):
                    if (r.get("kind") == "part" and r["machine"] in machines and r["_t"] > valid_again
                            and r["machine"] not in first_after):
                        first_after[r["machine"]] = r["_t"]
                return set(first_after) == set(machines)

            await wait_until(every_machine_counted_again, FAULT_AT_S + FAULT_FOR_S + 30,
                             "a part on every machine after the fault ended")
            t1 = max(first_after.values()) + timedelta(milliseconds=1)
            records = ledger_records(run.ledger)
            expected = line_totals(records, t0, t1, line.output_machines[0].id, machines)
            assert expected[0] > 30, expected  # a window with production

            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                got: list[tuple[int, int]] = []

                async def api_equals_ledger() -> bool:
                    r = await client.get(f"/api/v1/lines/{line.id}/throughput",
                                         params={"start": iso(t0), "end": iso(t1), "bucket": "5m"})
                    assert r.status_code == 200, r.text
                    body = r.json()
                    got.append((body["total_good"], body["total_scrap"]))
                    return got[-1] == expected

                try:
                    await wait_until(api_equals_ledger, 20, "the API's line totals equal to the ledger", poll_s=0.25)
                finally:
                    print("window", iso(t0), iso(t1), "ledger", expected, "API", got[-1:] if got else None)
        # collector stopped: every commit done, the dead-letter file flushed
        src_errors = collector.sources["broker"].stats.errors
        counted = collector.stats.dead_letters
        assert collector.spool.stats.facts == 0 and collector.stats.facts_written == collector.stats.facts_out

    letters = [json.loads(x) for x in run.dead_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    print("dead letters by kind:", dict(counted), "source errors:", dict(src_errors))
    assert len(letters) == sum(counted.values()) > 0
    assert counted == src_errors  # every dead letter is a malformed MQTT payload, counted once by each
    assert set(counted) <= MALFORMED_KINDS, counted
    bad: list[tuple[dict[str, Any], str]] = []
    for letter in letters:
        why = malformed_why_not(letter["kind"], letter["payload"])
        if letter["source"] != "broker" or letter["topic"] not in topics or not letter["reason"]:
            why = "no source, known topic or reason"
        if why is not None:
            bad.append((letter, why))
    assert bad == [], "dead letters that are not malformed messages of the simulated machines"

    # the malformed messages were sent while the fault was on: those that kept their time field name an
    # event of the ledger on that machine inside the fault's window
    events = {(r["machine"], ms(r["_t"])) for r in records if r.get("kind") in ("part", "state")}
    in_fault = (ms(fault.t) - 1000, ms(fault.end) + 1000)
    for letter in letters:
        if letter["kind"] != "not_json":
            ts = json.loads(letter["payload"])["ts"]
            assert in_fault[0] <= ts <= in_fault[1], letter
            assert (topics[letter["topic"]], ts) in events, letter
    # about 5 % of the messages sent during the fault (one per part, one per state change)
    messages = sum(1 for r in records if r.get("kind") in ("part", "state") and r["machine"] in machines
                   and fault.t <= r["_t"] < fault.end)
    distinct = len({(x["topic"], x["payload"]) for x in letters})
    print(f"{distinct} malformed messages of {messages} sent during the fault")
    assert 0.01 * messages <= distinct <= 0.12 * messages, (distinct, messages)


# ---- 2. an OPC UA server that goes away --------------------------------------------------------------------

RESTART_AT_S, AWAY_S = 7, 4
# The collector sees the server go away when its connection fails: at once for a closed socket, or at
# asyncua's next watchdog read (every watchdog_interval_s = 1 s). One more second for scheduling.
DETECT_S = 2.0
# The collector reconnects with capped exponential backoff (0.5 s doubling, each delay drawn from
# [d/2, d]): a delay is at most twice the time already spent retrying plus 0.5 s, so the first attempt
# after the server is back comes at most 2 × (away + detection) + 0.5 s later; one more second to connect
# and subscribe.
RECONNECT_S = 2 * (AWAY_S + DETECT_S) + 1.5
AFTER_S = 4.0  # how long after the recovery the timeline must follow the ledger again

Stretch = tuple[int, int, str, int | None]  # start ms, end ms, state, reason


def clip(stretches: list[Stretch], start_ms: int, end_ms: int) -> list[Stretch]:
    out = []
    for a, b, state, reason in stretches:
        a, b = max(a, start_ms), min(b, end_ms)
        if a < b:
            out.append((a, b, state, reason))
    return out


def ledger_stretches(records: list[dict[str, Any]], machine: str, end_ms: int) -> list[Stretch]:
    def until(s: LedgerStretch) -> int:
        return end_ms if s.until_ms is None else s.until_ms

    return [(s.since_ms, until(s), s.state, s.reason) for s in state_stretches(records, machine)]


def api_stretches(body: dict[str, Any]) -> list[Stretch]:
    return [(ms(datetime.fromisoformat(x["start"])), ms(datetime.fromisoformat(x["end"])), x["state"], x["reason"])
            for x in body["timeline"]]


async def test_an_opcua_server_that_goes_away_shows_its_machines_offline_for_the_outage(tmp_path: Path) -> None:
    port = free_port()
    plant = opcua_plant(port)
    machines = [m.id for _, m in plant.machines()]

    async with collecting(tmp_path, plant, f"sqlite:///{tmp_path / 'live.db'}") as (run, base):
        collector = run.collector
        source = collector.sources["plc"]
        async with simulating(run, 4, 60, f"restart@{RESTART_AT_S}s+{AWAY_S}s") as sim:
            # connect once the server listens, rather than after a backoff that grew while it started
            await asyncio.to_thread(wait_port, port, 30.0, sim)
            async with collector_running(collector) as running:
                await wait_until(every_machine_stored(run, sim, running.task, counting=False), 20,
                                 "a fact from every machine in the store")
                stored = datetime.now(UTC)
                fault = await fault_record(run.ledger, "restart", 30)
                w_start = ms_floor(fault.t - timedelta(seconds=3))
                assert stored < w_start, "the collector had every machine's state before the window opens"
                try:
                    async with asyncio.timeout(DETECT_S + AWAY_S + RECONNECT_S + 5):
                        await collector.wait_until(lambda _: source.stats.losses >= 1 and source.stats.connected)
                except TimeoutError:
                    raise AssertionError(f"the collector did not lose and regain {source.source_id}: "
                                         f"{source.stats}") from None
                assert collector.stats.offline_facts >= len(machines)
                w_end = ms_floor(datetime.now(UTC) + timedelta(seconds=AFTER_S))

                async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                    timelines: dict[str, list[Stretch]] = {}

                    async def all_states_in() -> bool:
                        if datetime.now(UTC) < w_end + timedelta(seconds=FLUSH_S):
                            return False  # the window's end has to pass first
                        for m in machines:
                            r = await client.get(f"/api/v1/machines/{m}/states",
                                                 params={"start": iso(w_start), "end": iso(w_end)})
                            assert r.status_code == 200, r.text
                            timelines[m] = api_stretches(r.json())
                        records = ledger_records(run.ledger)
                        # done once the store shows each machine's last ledger change before the window's end
                        return all(timelines[m][-1][2:] == clip(ledger_stretches(records, m, ms(w_end)),
                                                                 ms(w_start), ms(w_end))[-1][2:]
                                   for m in machines)

                    try:
                        await wait_until(all_states_in, AFTER_S + 20, "the states up to the window's end stored",
                                         poll_s=0.25)
                    finally:
                        for m, tl in timelines.items():
                            print(m, [(a - ms(fault.t), b - ms(fault.t), s, r) for a, b, s, r in tl])
        records = ledger_records(run.ledger)

    t_fault, t_back = ms(fault.t), ms(fault.end)
    for m in machines:
        timeline = timelines[m]
        offline = [x for x in timeline if x[2] == "offline"]
        assert len(offline) == 1, (m, timeline)
        off_start, off_end = offline[0][0], offline[0][1]
        # offline from the loss (no earlier than the server went, within the detection delay) ...
        assert t_fault <= off_start <= t_fault + DETECT_S * 1000, (m, off_start - t_fault)
        # ... until the reconnect: not before the server was back, within the backoff's bound
        assert t_back <= off_end <= t_back + RECONNECT_S * 1000, (m, off_end - t_back)
        assert off_end <= ms(w_end) - AFTER_S * 1000 + 1, "the recovery was seen before the window's end was set"
        truth = ledger_stretches(records, m, ms(w_end))
        # before the outage (up to a second before the fault: a change in the last publishing interval
        # before the server went is delivered after the reconnect) the timeline is the ledger's
        before = ms(fault.t) - 1000
        assert clip(timeline, ms(w_start), before) == clip(truth, ms(w_start), before), m
        # and after the outage the machine is back to its ledger state, change for change
        assert clip(timeline, off_end, ms(w_end)) == clip(truth, off_end, ms(w_end)), m
