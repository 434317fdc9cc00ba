"""A collector that loses nothing, live: the simulators (OPC UA + a real Mosquitto) run with their
ground-truth ledger while one part of the chain fails mid-run, and the per-line totals in the store
over a window that holds the failure still equal the ledger exactly.

- the store (a real influxd of the test's own) is stopped for 10 s and started again on the same
  port and data directory: the collector holds the facts in its spool meanwhile;
- the broker (a real Mosquitto of the test's own, persistence on) is restarted: the collector's
  persistent session (fixed client id) and the simulator's backlog bring every message, late;
- the collector (a ``mieruka collect`` process) is killed with SIGKILL while data flows and started
  again on the same spool directory and client id: the saved normalizer state and the broker's
  re-delivery of unacknowledged messages make the totals whole, and nothing counts twice (replayed
  spool batches and re-delivered messages land on the same fact keys).

The totals are read straight from the store (``count_buckets`` over the same ``[t0, t1)`` the API
would sum). Besides the window totals, the MQTT machines' counts per second must equal the
ledger's: their payloads carry the event time, so a message lost and "healed" by the next
cumulative count would show up one bucket late even when the window total is right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.pipeline import Collector
from collector.spool import Spool
from core.plant import Plant, dump_plant
from core.store import open_store
from core.store.base import Store
from mieruka.status import StatusError, fetch_metrics
from tests.e2e.plants import fast_plant
from tests.support.influxd import Influxd, influxd
from tests.support.ledger import line_totals, ms, read_ledger
from tests.support.procs import collector_running, counting_everywhere, interrupt, mieruka, wait_until
from tests.support.services import Mosquitto, free_port, mosquitto

FLUSH_S = 0.5
SIM_S = 75  # the simulators outlive every window below by far; the test interrupts them when done
SECOND_NS = 1_000_000_000
Totals = dict[str, tuple[int, int]]  # line id -> (good, scrap)
PerSecond = dict[tuple[str, str, int], int]  # (machine, good|scrap, epoch second) -> parts


# ---- helpers ---------------------------------------------------------------------------------


def write_plant(tmp_path: Path, mqtt_port: int, tag: str) -> tuple[Plant, Path]:
    plant = fast_plant(free_port(), mqtt_port, prefix=f"{tag}-{uuid.uuid4().hex[:6]}")
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(dump_plant(plant), encoding="utf-8")
    return plant, plant_file


def simulate(plant_file: Path, ledger: Path, seed: int, log: Path) -> subprocess.Popen[bytes]:
    return mieruka("simulate", "--plant", str(plant_file), "--seed", str(seed), "--duration", str(SIM_S),
                   "--truth", str(ledger), log=log)


def window_start(delay_s: float = 1.0) -> datetime:
    t0 = datetime.now(UTC) + timedelta(seconds=delay_s)
    return t0.replace(microsecond=t0.microsecond // 1000 * 1000)  # ledger times are whole milliseconds


async def sleep_until(t: datetime) -> None:
    await asyncio.sleep(max(0.0, (t - datetime.now(UTC)).total_seconds()))


def ns(t: datetime) -> int:
    return ms(t) * 1_000_000


def mqtt_machines(plant: Plant) -> list[str]:
    return [m.id for _, m in plant.machines() if plant.sources[m.source].mqtt is not None]


def ledger_totals(plant: Plant, ledger: Path, t0: datetime, t1: datetime) -> Totals:
    records = read_ledger(ledger)
    out: Totals = {}
    for line in plant.lines:
        out[line.id] = line_totals(records, t0, t1, line.output_machines[0].id, [m.id for m in line.machines])
    return out


def ledger_per_second(ledger: Path, machines: list[str], t0: datetime, t1: datetime) -> PerSecond:
    out: Counter[tuple[str, str, int]] = Counter()
    for r in read_ledger(ledger):
        if r.get("kind") == "part" and r["machine"] in machines and t0 <= r["_t"] < t1:
            out[(r["machine"], "good" if r["good"] else "scrap", ms(r["_t"]) // 1000)] += 1
    return dict(out)


async def store_totals(store: Store, plant: Plant, t0: datetime, t1: datetime) -> Totals:
    machines = [m.id for _, m in plant.machines()]
    # one bucket as long as the window: at most two buckets overlap it, and nothing outside [t0, t1) counts
    buckets = await store.count_buckets(machines, ["good", "scrap"], ns(t0), ns(t1), ns(t1) - ns(t0))
    sums: Counter[tuple[str, str]] = Counter()
    for b in buckets:
        sums[(b.machine, b.signal)] += b.total
    out: Totals = {}
    for line in plant.lines:
        out[line.id] = (sums[(line.output_machines[0].id, "good")], sum(sums[(m.id, "scrap")] for m in line.machines))
    return out


async def store_per_second(store: Store, machines: list[str], t0: datetime, t1: datetime) -> PerSecond:
    out: PerSecond = {}
    for b in await store.count_buckets(machines, ["good", "scrap"], ns(t0), ns(t1), SECOND_NS):
        if b.total:
            out[(b.machine, b.signal, b.start_ns // SECOND_NS)] = b.total
    return out


async def assert_store_equals_ledger(store: Store, plant: Plant, ledger: Path, t0: datetime, t1: datetime,
                                     deadline_s: float = 30.0) -> Totals:
    """Once the window has passed: both lines produced in it, and the store's totals (and the MQTT
    machines' per-second counts) reach the ledger's within ``deadline_s``. Returns the totals."""
    await sleep_until(t1)
    expected = ledger_totals(plant, ledger, t0, t1)
    assert all(good > 0 for good, _ in expected.values()), expected  # both lines produced in the window
    mq = mqtt_machines(plant)
    expected_s = ledger_per_second(ledger, mq, t0, t1)
    got: Totals = {}
    got_s: PerSecond = {}

    async def matches() -> bool:
        nonlocal got, got_s
        got = await store_totals(store, plant, t0, t1)
        got_s = await store_per_second(store, mq, t0, t1)
        return got == expected and got_s == expected_s

    try:
        await wait_until(matches, deadline_s, "store totals equal to the ledger", poll_s=0.25)
    finally:
        print("window", t0.isoformat(), t1.isoformat(), "expected", expected, "got", got)
        if got_s != expected_s:
            diff = {k: (expected_s.get(k, 0), got_s.get(k, 0)) for k in sorted(set(expected_s) | set(got_s))
                    if expected_s.get(k, 0) != got_s.get(k, 0)}
            print("per second (ledger, store) where they differ:", diff)
    return got


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.contextmanager
def stopped_after(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        interrupt(proc)


async def every_machine_stored(store: Store, plant: Plant, *alive: subprocess.Popen[bytes] | asyncio.Task[None],
                               logs: list[Path]) -> None:
    machines = [m.id for _, m in plant.machines()]

    async def stored() -> bool:
        for p in alive:
            done = p.done() if isinstance(p, asyncio.Task) else p.poll() is not None
            assert not done, (p, [f.read_text(errors="replace")[-3000:] for f in logs if f.exists()])
        return await counting_everywhere(store, machines)

    await wait_until(stored, 60, "a count from every machine in the store")


async def wait_for(cond: Callable[[], bool], deadline_s: float, what: str) -> None:
    async def check() -> bool:
        return cond()

    await wait_until(check, deadline_s, what, poll_s=0.05)


def spooled_facts(spool_dir: Path) -> int:
    """Facts in a spool no process holds (read-only, straight from its SQLite file)."""
    db = sqlite3.connect(f"file:{spool_dir / 'spool.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COALESCE(SUM(facts), 0) FROM batches").fetchone()[0])
    finally:
        db.close()


def metric_values(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus exposition, by name."""
    return {s.name: float(s.value) for fam in text_string_to_metric_families(text) for s in fam.samples
            if not s.labels}


# ---- 1. the store goes away for 10 s ----------------------------------------------------------


async def test_influxd_outage_loses_nothing(tmp_path: Path, mosquitto_broker: Mosquitto) -> None:
    plant, plant_file = write_plant(tmp_path, mosquitto_broker.port, "dur-influx")
    ledger = tmp_path / "ledger.jsonl"
    with influxd(tmp_path / "influxd") as server, Spool(tmp_path / "spool") as spool:
        url = server.url()
        async with opened(url) as store, opened(url) as reader:
            collector = Collector(plant, store, spool=spool, flush_interval_s=FLUSH_S)
            async with collector_running(collector) as run:
                with stopped_after(simulate(plant_file, ledger, 11, tmp_path / "simulate.log")) as sim:
                    await every_machine_stored(reader, plant, sim, run.task, logs=[tmp_path / "simulate.log"])
                    t0 = window_start()
                    down_at, up_at, t1 = (t0 + timedelta(seconds=s) for s in (4, 14, 22))
                    offline = collector.stats.offline_facts  # the PLC may have been unreachable until it started

                    await sleep_until(down_at)
                    await asyncio.to_thread(server.stop)  # not on the event loop: the collector goes on meanwhile
                    stopped_at = datetime.now(UTC)
                    written = collector.stats.facts_written
                    by_source = Counter(collector.stats.facts_by_source)
                    async with asyncio.timeout((up_at - datetime.now(UTC)).total_seconds() - 1):
                        # the writer found the store gone, and facts pile up in the durable spool
                        await collector.wait_until(lambda s: s.write_failures > 0 and not s.store_up)
                        await collector.wait_until(lambda s: spool.stats.facts > 10)
                    await sleep_until(up_at)
                    assert not server.running
                    held = spool.stats.facts
                    stats = collector.stats
                    print("outage: spool held", held, "facts;", stats.write_failures, "write failures")
                    assert stats.facts_written == written, "the store confirmed writes while it was down"
                    # both sources went on being read while the store was away
                    assert all(stats.facts_by_source[s] > by_source[s] for s in ("plc", "broker")), \
                        (by_source, stats.facts_by_source)
                    assert spool.stats.oldest_spooled_at is not None
                    # held since the store went away, not passed through
                    assert spool.stats.oldest_spooled_at < stopped_at + timedelta(seconds=2)

                    await asyncio.to_thread(server.start)
                    await assert_store_equals_ledger(reader, plant, ledger, t0, t1)
                    async with asyncio.timeout(30):
                        await collector.wait_until(lambda s: s.store_up)
                    assert collector.stats.facts_rejected == 0
                    assert collector.stats.offline_facts == offline  # the sources never went away


# ---- 2. the broker restarts ---------------------------------------------------------------------


async def test_mosquitto_restart_loses_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="collector.sources.mqtt")
    ledger = tmp_path / "ledger.jsonl"
    with mosquitto(tmp_path / "mosquitto") as broker, Spool(tmp_path / "spool") as spool:
        plant, plant_file = write_plant(tmp_path, broker.port, "dur-mqtt")
        url = f"sqlite:///{tmp_path / 'store.db'}"
        async with opened(url) as store, opened(url) as reader:
            collector = Collector(plant, store, spool=spool, flush_interval_s=FLUSH_S,
                                  client_id=f"mieruka-dur-{uuid.uuid4().hex[:8]}")
            source: Any = collector.sources["broker"]
            async with collector_running(collector) as run:
                with stopped_after(simulate(plant_file, ledger, 12, tmp_path / "simulate.log")) as sim:
                    await every_machine_stored(reader, plant, sim, run.task, logs=[tmp_path / "simulate.log"])
                    t0 = window_start()
                    down_at, up_at, t1 = (t0 + timedelta(seconds=s) for s in (4, 7, 22))
                    offline = collector.stats.offline_facts  # the PLC may have been unreachable until it started

                    await sleep_until(down_at)
                    await asyncio.to_thread(broker.stop)
                    await wait_for(lambda: not source.stats.connected, 5, "the collector sees the broker gone")
                    caplog.clear()
                    await sleep_until(up_at)
                    await asyncio.to_thread(broker.start)  # same port, same persistence directory
                    await wait_for(lambda: source.stats.connected and source.stats.connects >= 2, 40,
                                   "the collector reconnects to the restarted broker")
                    back_at = datetime.now(UTC)
                    assert back_at < t1 - timedelta(seconds=5), "reconnected too late for the window"
                    # the broker kept the collector's session across its restart (its persistence works)
                    assert any("session present: True" in r.getMessage() for r in caplog.records), \
                        [r.getMessage() for r in caplog.records]
                    assert source.stats.losses >= 1

                    await assert_store_equals_ledger(reader, plant, ledger, t0, t1)
                    # the MQTT line made parts while the collector could not hear the broker: they reached
                    # the store late, and at their own times (the per-second check above)
                    during = sum(1 for r in read_ledger(ledger) if r.get("kind") == "part"
                                 and r["machine"] in mqtt_machines(plant) and down_at <= r["_t"] < back_at)
                    assert during > 0, "no MQTT production while the broker was away"
                    # a persistent session has no gap: no machine was marked offline
                    assert collector.stats.offline_facts == offline
                    assert collector.stats.facts_rejected == 0


# ---- 3. the collector is killed -------------------------------------------------------------------


async def test_collector_sigkill_loses_nothing_counts_nothing_twice(tmp_path: Path, mosquitto_broker: Mosquitto,
                                                                    influxd_server: Influxd) -> None:
    plant, plant_file = write_plant(tmp_path, mosquitto_broker.port, "dur-kill")
    ledger = tmp_path / "ledger.jsonl"
    url = influxd_server.url()
    spool_dir = tmp_path / "spool"
    client_id = f"mieruka-dur-{uuid.uuid4().hex[:8]}"
    logs = [tmp_path / "simulate.log", tmp_path / "collect-1.log", tmp_path / "collect-2.log"]

    def collect(log: Path, metrics_port: int) -> subprocess.Popen[bytes]:
        return mieruka("collect", "--plant", str(plant_file), "--store", url, "--spool-dir", str(spool_dir),
                       "--client-id", client_id, "--flush-interval", str(FLUSH_S),
                       "--metrics-port", str(metrics_port), log=log)

    async with opened(url) as reader:
        with stopped_after(simulate(plant_file, ledger, 13, logs[0])) as sim:
            port1 = free_port()
            first = collect(logs[1], port1)
            try:
                await every_machine_stored(reader, plant, sim, first, logs=logs)
                t0 = window_start()
                kill_after, restart_at, t1 = (t0 + timedelta(seconds=s) for s in (5, 8, 24))
                await sleep_until(kill_after)

                # kill the moment the collector holds facts the store has not confirmed yet
                pending: dict[str, float] = {}

                async def data_in_flight() -> bool:
                    assert first.poll() is None, logs[1].read_text()
                    try:
                        values = metric_values(fetch_metrics(f"http://127.0.0.1:{port1}/metrics", timeout_s=2))
                    except StatusError:
                        return False
                    pending.update(values)
                    # written before, and spooled facts waiting for the store now
                    return values.get("mieruka_spool_facts", 0) > 0 and values.get(
                        "mieruka_facts_written_total", 0) > 0

                await wait_until(data_in_flight, 10, "facts spooled in the first collector", poll_s=0.02)
                first.send_signal(signal.SIGKILL)
                killed_at = datetime.now(UTC)
                assert first.wait(10) == -signal.SIGKILL
            finally:
                if first.poll() is None:
                    first.kill()
                    first.wait()
            print("killed at", killed_at.isoformat(), "with", pending.get("mieruka_facts_pending"), "pending,",
                  pending.get("mieruka_spool_facts"), "spooled")
            assert t0 < killed_at < restart_at
            before = await store_totals(reader, plant, t0, t1)
            records = read_ledger(ledger)
            made = {ln.id: line_totals(records, t0, killed_at, ln.output_machines[0].id, [m.id for m in ln.machines])
                    for ln in plant.lines}
            print("store right after the kill", before, "ledger up to the kill", made,
                  "facts left in the spool", spooled_facts(spool_dir))
            assert all(before[ln.id][0] > 0 for ln in plant.lines), before  # data was flowing on both lines

            await sleep_until(restart_at)
            second = collect(logs[2], free_port())
            try:
                await assert_store_equals_ledger(reader, plant, ledger, t0, t1, deadline_s=40)
                text = logs[2].read_text(errors="replace")
                assert "continuing from saved state" in text, text  # the spool's state, not a fresh baseline
                assert "session present: True" in text, text  # the broker kept what the first one left unacked
                assert second.poll() is None, text
            finally:
                code = interrupt(second)
            assert code == 0, logs[2].read_text(errors="replace")
