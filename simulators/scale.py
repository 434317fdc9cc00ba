"""Scale mode: a synthetic plant of LINES × MACHINES machines with K signals each, generated as
a plant file and served live by several OPC UA server processes.

``mieruka simulate --scale 10x50 --signals-per-machine 20 --write-plant big.yaml`` writes a
valid plant file (one OPC UA source per server process, on consecutive free loopback ports)
and serves it until Ctrl-C or ``--duration``. Every gauge is written at ``--rate`` Hz (default
1), spread evenly over each period in slices; counters, state, stop reason and product come
from the line model (simulators/model.py) as in live mode, so the plant's figures stay
believable. Each process runs its own model over the lines it serves (the model is seeded per
machine, so a machine behaves the same whichever process runs it) and, with ``--truth``, writes
its own ledger next to the given path (``truth-plc-01.jsonl``...).

The number of processes defaults to what the load needs at ``PROCESS_CAPACITY_UPDATES_PER_S``
gauge updates a second per process (measured by bench/opcua_scale.py; see bench/README.md),
at most one per CPU. The servers bind 127.0.0.1 only; they stop with the parent: on a stop
message, on SIGINT/SIGTERM, or when the pipe to the parent closes (the parent died).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import yaml

from core.model import MEANINGFUL_SIGNALS
from core.plant import Plant, dump_plant, load_plant, parse_plant
from simulators.ledger import LedgerWriter
from simulators.model import PlantModel
from simulators.opcua_plc import OpcUaPlc, WritePath, wall_ms

log = logging.getLogger(__name__)

# gauge updates a second one server process sustains while a plain asyncua client subscribed to
# every variable receives >= 95 % of them, on the 2-core reference machine, with a margin
# (bench/README.md, "OPC UA simulator at scale")
PROCESS_CAPACITY_UPDATES_PER_S = 15_000
DEFAULT_BASE_PORT = 4840
TICK_S = 0.05
_YIELD_EVERY = 100
_STATE_MAP = {1: "running", 2: "idle", 3: "down", 4: "changeover", 5: "planned"}
_MEANINGFUL = (("good", "GoodCount"), ("state", "State"), ("scrap", "ScrapCount"), ("reason", "StopReason"),
               ("product", "Product"))
_NAMED_GAUGES = (("spindle_temp", "SpindleTemp", "°C"), ("pressure", "Pressure", "MPa"), ("power", "Power", "kW"))
_ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class ScaleInputError(ValueError):
    """Bad scale-mode arguments; the message says what would be right."""


class ScaleError(RuntimeError):
    """A server process failed to start or died."""


# ---- the plant ----------------------------------------------------------------------------------


def parse_scale(text: str) -> tuple[int, int]:
    """``"10x50"`` → (10 lines, 50 machines per line)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ScaleInputError(f"--scale '{text}': write LINESxMACHINES with both at least 1, e.g. 10x50")
    return int(m.group(1)), int(m.group(2))


def signal_specs(k: int) -> list[tuple[str, str, str | None]]:
    """The first ``k`` signals of a scale machine: (name, node suffix, unit)."""
    out: list[tuple[str, str, str | None]] = [(n, s, None) for n, s in _MEANINGFUL]
    out += list(_NAMED_GAUGES)
    out += [(f"g{i:03d}", f"G{i:03d}", None) for i in range(len(out) + 1, k + 1)]
    return out[:k]


def gauges_per_machine(k: int) -> int:
    return sum(1 for name, _, _ in signal_specs(k) if name not in MEANINGFUL_SIGNALS)


def scale_plant(lines: int, machines: int, k: int, ports: Sequence[int], *, host: str = "127.0.0.1",
                counter_bits: int = 16) -> dict[str, Any]:
    """Plant file data of the synthetic plant: ``len(ports)`` OPC UA sources ``plc-01``...,
    each on ``host:port``, machines handed out in plant order in equal contiguous runs."""
    if k < 1:
        raise ScaleInputError("--signals-per-machine must be at least 1")
    n_src = len(ports)
    total = lines * machines
    if not 1 <= n_src <= total:
        raise ScaleInputError(f"{n_src} sources for {total} machines: give between 1 and {total} processes")
    width = max(2, len(str(n_src)))
    sources = {f"plc-{i + 1:0{width}d}": {"opcua": {"endpoint": f"opc.tcp://{host}:{port}", "security": "none"}}
               for i, port in enumerate(ports)}
    source_ids = list(sources)
    lw, mw = max(2, len(str(lines))), max(3, len(str(machines)))
    specs = signal_specs(k)
    out_lines = []
    n = 0
    for li in range(1, lines + 1):
        line_id = f"line-{li:0{lw}d}"
        ms = []
        for mi in range(1, machines + 1):
            mid = f"l{li:0{lw}d}-m{mi:0{mw}d}"
            signals: dict[str, Any] = {}
            for name, suffix, unit in specs:
                sig: dict[str, Any] = {"node": f"ns=2;s={line_id}.{mid}.{suffix}"}
                if name in ("good", "scrap"):
                    sig["counter_bits"] = counter_bits
                elif name == "state":
                    sig["map"] = dict(_STATE_MAP)
                elif unit is not None:
                    sig["unit"] = unit
                signals[name] = sig
            ms.append({"id": mid, "ideal_cycle_s": 20 + 5 * ((mi - 1) % 5), "source": source_ids[n * n_src // total],
                       "signals": signals})
            n += 1
        out_lines.append({"id": line_id, "name": f"Line {li}", "target_per_hour": 100, "machines": ms})
    return {
        "site": {"id": "scale", "name": f"Scale plant {lines}x{machines}x{k}", "timezone": "Asia/Tokyo",
                 "locale": "en"},
        "calendar": {"shifts": [{"id": "all-day", "start": "00:00", "end": "00:00", "days": list(_ALL_DAYS)}]},
        "reasons": {10: {"name": "Tool change", "category": "changeover"},
                    20: {"name": "Spindle fault", "category": "breakdown"},
                    30: {"name": "Waiting for material", "category": "starved"},
                    31: {"name": "Output blocked", "category": "blocked"},
                    40: {"name": "Minor stop", "category": "micro_stop"}},
        "products": {"P-100": {"ideal_cycle_s": 25}, "P-200": {"ideal_cycle_s": 35}},
        "sources": sources,
        "lines": out_lines,
    }


def model_plant(plant: Plant, source_ids: Sequence[str]) -> Plant:
    """The lines that have machines on ``source_ids``, without gauges: what the model of one
    server process runs (gauges are written at the scale rate by the servers themselves)."""
    raw = yaml.safe_load(dump_plant(plant))
    wanted = set(source_ids)
    keep = [ln for ln in raw["lines"] if any(m["source"] in wanted for m in ln["machines"])]
    for ln in keep:
        for m in ln["machines"]:
            m["signals"] = {n: s for n, s in m["signals"].items() if n in MEANINGFUL_SIGNALS}
    raw["lines"] = keep
    return parse_plant(raw, "<scale model plant>")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(n: int, start: int = DEFAULT_BASE_PORT, host: str = "127.0.0.1") -> int:
    """The first port ``p >= start`` with ``p .. p+n-1`` all free on ``host``. The default
    start is below Linux's ephemeral range (32768-60999), where outgoing connections take
    ports."""
    p = start
    while p + n - 1 <= 65535:
        for i in range(n):
            if not port_free(p + i, host):
                p = p + i + 1
                break
        else:
            return p
    raise ScaleInputError(f"no {n} consecutive free ports on {host} from {start} on")


def default_processes(n_machines: int, gauges: int, rate_hz: float, cpus: int | None = None) -> tuple[int, int]:
    """(processes to use, processes the load needs) for ``n_machines`` with ``gauges`` gauges
    each at ``rate_hz``: the load over one process's measured capacity, at most one process per
    CPU and per machine."""
    load = n_machines * max(gauges, 1) * rate_hz
    need = max(1, math.ceil(load / PROCESS_CAPACITY_UPDATES_PER_S))
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(need, cpus, n_machines)), need


# ---- one server process -------------------------------------------------------------------------


@dataclass
class ServeStats:
    sources: list[str]
    ports: list[int]
    machines: int
    variables: int
    gauges: int
    build_s: float
    writes: int = 0
    events: int = 0
    slices: int = 0
    late_slices: int = 0  # slices begun more than a slice late
    dropped_slices: int = 0  # slices skipped to catch up after falling a whole period behind
    max_lag_s: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0


async def serve_sources(plant: Plant, source_ids: Sequence[str], seed: int = 1, *, stop: asyncio.Event,
                        rate_hz: float = 1.0, truth: Path | None = None, write_path: WritePath = "fast",
                        tick_s: float = TICK_S, on_ready: Callable[[ServeStats], None] | None = None) -> ServeStats:
    """Serve ``source_ids`` of ``plant`` until ``stop``: their OPC UA servers, the model of
    their lines, and every gauge written at ``rate_hz`` in slices of about ``tick_s``."""
    if rate_hz <= 0:
        raise ValueError("the rate must be positive")
    cpu0, wall0 = time.process_time(), time.monotonic()
    plcs = {sid: OpcUaPlc(plant, sid, write_path=write_path, seed=seed) for sid in source_ids}
    async with contextlib.AsyncExitStack() as stack:
        for p in plcs.values():
            stack.push_async_callback(p.stop)
        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for sid, p in plcs.items():
                tg.create_task(p.init(), name=f"opcua-init-{sid}")
        stats = ServeStats(sources=list(plcs), ports=[p.port for p in plcs.values()],
                           machines=sum(len(plant.machines_of_source(s)) for s in plcs),
                           variables=sum(p.variables for p in plcs.values()),
                           gauges=sum(p.gauges for p in plcs.values()), build_s=round(time.perf_counter() - t0, 3))
        mine = {m.id: plcs[m.source] for _, m in plant.machines() if m.source in plcs}
        ledger = stack.enter_context(LedgerWriter(truth, flush_each=True)) if truth is not None else None
        start_ms = wall_ms()
        model = PlantModel(model_plant(plant, list(plcs)), seed, start_ms)
        for ev in model.initial_events():
            if ev.machine in mine:
                if ledger is not None:
                    ledger.write(ev)
                await mine[ev.machine].apply(ev)
        for p in plcs.values():
            await p.refresh_gauges(start_ms)
        for p in plcs.values():
            await p.start()
        # the address space is hundreds of thousands of long-lived objects: keep the cyclic
        # collector from walking them in every full collection (a pause of up to a second at
        # 20 000 variables, long enough to miss a whole period)
        gc.collect()
        gc.freeze()
        if on_ready is not None:
            on_ready(stats)

        parts = max(1, round(1 / (rate_hz * tick_s)))
        period_s = 1 / rate_hz
        slice_s = period_s / parts
        anchor = time.monotonic()
        k = 0
        warned = 0.0
        while not stop.is_set():
            k += 1
            due = anchor + k * slice_s
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    break
            lag = time.monotonic() - due
            stats.max_lag_s = max(stats.max_lag_s, lag)
            if lag > slice_s:
                stats.late_slices += 1
            if lag > period_s:
                # a whole period behind: skip the backlog rather than write in a burst
                skipped = int(lag / slice_s)
                stats.dropped_slices += skipped
                k += skipped
                if time.monotonic() - warned > 10:
                    warned = time.monotonic()
                    log.warning("scale server %s is %.1f s behind its %g Hz rate; the load is too much for one "
                                "process (use more --processes)", ",".join(plcs), lag, rate_hz)
            now = wall_ms()
            for n, ev in enumerate(model.advance(now, inclusive=True), 1):
                target = mine.get(ev.machine)
                if target is None:
                    continue
                if ledger is not None:
                    ledger.write(ev)
                await target.apply(ev)
                stats.events += 1
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            for p in plcs.values():
                stats.writes += await p.refresh_gauges(now, k % parts, parts)
            stats.slices += 1
    stats.cpu_s = round(time.process_time() - cpu0, 3)
    stats.wall_s = round(time.monotonic() - wall0, 3)
    stats.max_lag_s = round(stats.max_lag_s, 3)
    return stats


def _child_main(conn: multiprocessing.connection.Connection, plant_path: str, source_ids: list[str], seed: int,
                rate_hz: float, truth: str | None, write_path: WritePath, verbose: bool) -> None:
    """A server process: serves its sources; reports ("ready", stats), then ("stopped", stats)
    or ("error", text) on ``conn``; stops on "stop", on EOF (the parent is gone) or a signal."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s {'/'.join(source_ids)} %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)

    async def main() -> ServeStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)

        async def watch_parent() -> None:
            while not stop.is_set():
                try:
                    if conn.poll():
                        conn.recv()  # "stop" (or EOFError: the parent is gone)
                        stop.set()
                except (EOFError, OSError):
                    stop.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.2)

        plant = load_plant(plant_path)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(watch_parent(), name="watch-parent")
            serving = tg.create_task(
                serve_sources(plant, source_ids, seed, stop=stop, rate_hz=rate_hz,
                              truth=Path(truth) if truth else None, write_path=write_path,
                              on_ready=lambda s: conn.send(("ready", asdict(s)))),
                name="serve")
            serving.add_done_callback(lambda _: stop.set())
        return serving.result()

    try:
        stats = asyncio.run(main())
    except BaseException as e:  # report anything, including a Ctrl-C during start-up
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(e).__name__}: {e}"))
        sys.exit(1)
    with contextlib.suppress(OSError):
        conn.send(("stopped", asdict(stats)))


class ScaleRun:
    """Server processes for groups of sources of a plant file, started and stopped from a plain
    (non-async) caller: ``with ScaleRun(path, [["plc-01"], ["plc-02"]]) as run: run.start()``."""

    def __init__(self, plant_path: Path, groups: Sequence[Sequence[str]], *, seed: int = 1, rate_hz: float = 1.0,
                 truth: Path | None = None, write_path: WritePath = "fast", verbose: bool = False) -> None:
        self.plant_path = Path(plant_path)
        self.groups = [list(g) for g in groups]
        self.seed = seed
        self.rate_hz = rate_hz
        self.truth = truth
        self.write_path: WritePath = write_path
        self.verbose = verbose
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.ready: list[dict[str, Any]] = []
        self.stopped: list[dict[str, Any]] = []

    def truth_path(self, group: Sequence[str]) -> Path | None:
        if self.truth is None:
            return None
        return self.truth.with_name(f"{self.truth.stem}-{'-'.join(group)}{self.truth.suffix}")

    def start(self, timeout_s: float = 180.0) -> list[dict[str, Any]]:
        """Start every process and wait until all serve; returns their ready reports. Raises
        :class:`ScaleError` (after stopping the others) if one fails."""
        ctx = multiprocessing.get_context("spawn")
        for i, group in enumerate(self.groups):
            parent_end, child_end = ctx.Pipe()
            truth = self.truth_path(group)
            p = ctx.Process(target=_child_main, name=f"mieruka-opcua-{i + 1}", daemon=True,
                            args=(child_end, str(self.plant_path), group, self.seed, self.rate_hz,
                                  str(truth) if truth else None, self.write_path, self.verbose))
            p.start()
            child_end.close()
            self.procs.append(p)
            self.conns.append(parent_end)
        ready: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(ready) < len(self.conns):
            pending = [c for i, c in enumerate(self.conns) if i not in ready]
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise ScaleError(f"server processes not ready after {timeout_s:g} s")
            for waited in multiprocessing.connection.wait(pending, timeout=left):
                i = next(j for j, c in enumerate(self.conns) if c is waited)
                message: tuple[str, Any]
                try:
                    message = self.conns[i].recv()
                except (EOFError, OSError):
                    message = ("error", f"exited with code {self.procs[i].exitcode}")
                if message[0] != "ready":
                    self.stop()
                    raise ScaleError(f"server process for {', '.join(self.groups[i])} failed: {message[1]}")
                ready[i] = message[1]
        self.ready = [ready[i] for i in range(len(self.conns))]
        return self.ready

    def failure(self) -> str | None:
        """Why a process stopped serving, if one did (None: all serve)."""
        for i, (p, c) in enumerate(zip(self.procs, self.conns, strict=True)):
            try:
                if c.poll():
                    kind, payload = c.recv()
                    return f"server process for {', '.join(self.groups[i])}: {kind}: {payload}"
            except (EOFError, OSError):
                return f"server process for {', '.join(self.groups[i])} exited with code {p.exitcode}"
            if not p.is_alive():
                return f"server process for {', '.join(self.groups[i])} exited with code {p.exitcode}"
        return None

    def stop(self, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Ask every process to stop, wait for them (terminating stragglers); returns the
        stop reports of those that sent one."""
        for c in self.conns:
            with contextlib.suppress(OSError, ValueError):
                c.send("stop")
        deadline = time.monotonic() + timeout_s
        reports: list[dict[str, Any]] = []
        for c in self.conns:
            try:
                while c.poll(max(0.0, deadline - time.monotonic())):
                    kind, payload = c.recv()
                    if kind == "stopped":
                        reports.append(payload)
                        break
                    if kind == "error":
                        log.warning("server process: %s", payload)
                        break
            except (EOFError, OSError):
                pass
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                log.warning("server process %s did not stop; terminating it", p.name)
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        for c in self.conns:
            c.close()
        self.conns, self.procs = [], []
        self.stopped = reports
        return reports

    def __enter__(self) -> ScaleRun:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.procs:
            self.stop()


# ---- the command --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalePlan:
    lines: int
    machines: int
    signals: int
    processes: int
    need: int
    base_port: int

    @property
    def total_machines(self) -> int:
        return self.lines * self.machines


def plan(scale: str, signals_per_machine: int, *, processes: int | None = None, base_port: int | None = None,
         rate_hz: float = 1.0) -> ScalePlan:
    lines, machines = parse_scale(scale)
    if signals_per_machine < 1:
        raise ScaleInputError("--signals-per-machine must be at least 1")
    if rate_hz <= 0:
        raise ScaleInputError("--rate must be positive")
    total = lines * machines
    use, need = default_processes(total, gauges_per_machine(signals_per_machine), rate_hz)
    if processes is not None:
        if not 1 <= processes <= total:
            raise ScaleInputError(f"--processes {processes}: give 1 to {total} (one machine at least per process)")
        use = processes
    start = DEFAULT_BASE_PORT if base_port is None else base_port
    if not 1 <= start <= 65535:
        raise ScaleInputError(f"--base-port {start} is not a port")
    return ScalePlan(lines, machines, signals_per_machine, use, need, free_port_block(use, start))


def write_scale_plant(p: ScalePlan, path: Path) -> Plant:
    raw = scale_plant(p.lines, p.machines, p.signals, [p.base_port + i for i in range(p.processes)])
    plant = parse_plant(raw, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_plant(plant), encoding="utf-8")
    return plant


def run_scale(scale: str, signals_per_machine: int, write_plant: Path, *, processes: int | None = None,
              duration_s: float | None = None, seed: int = 1, truth: Path | None = None,
              base_port: int | None = None, rate_hz: float = 1.0, verbose: bool = False) -> int:
    """The ``mieruka simulate --scale`` command: write the plant, serve it until Ctrl-C/SIGTERM
    or ``duration_s``. Returns the exit code (0 ok, 1 a server failed)."""
    p = plan(scale, signals_per_machine, processes=processes, base_port=base_port, rate_hz=rate_hz)
    plant = write_scale_plant(p, write_plant)
    gauges = gauges_per_machine(p.signals)
    print(f"wrote {write_plant}: {p.lines} lines x {p.machines} machines x {p.signals} signals "
          f"({p.total_machines * p.signals} signals, {p.total_machines * gauges} gauges at {rate_hz:g} Hz) "
          f"on {p.processes} OPC UA server process{'es' if p.processes > 1 else ''}, 127.0.0.1 ports "
          f"{p.base_port}-{p.base_port + p.processes - 1}", flush=True)
    if p.need > p.processes:
        print(f"warning: the load needs about {p.need} processes at {PROCESS_CAPACITY_UPDATES_PER_S} gauge "
              f"updates/s each; serving with {p.processes}, so updates may fall behind", file=sys.stderr, flush=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ScaleRun(write_plant, [[sid] for sid in plant.sources], seed=seed, rate_hz=rate_hz, truth=truth,
                      verbose=verbose) as run:
            try:
                infos = run.start()
            except ScaleError as e:
                print(f"mieruka simulate: {e}", file=sys.stderr)
                return 1
            for info in infos:
                print(f"  {','.join(info['sources'])} on port {','.join(map(str, info['ports']))}: "
                      f"{info['machines']} machines, {info['variables']} variables, built in {info['build_s']:.1f} s",
                      flush=True)
            print("serving " + ("until Ctrl-C" if duration_s is None else f"for {duration_s:g} s"), flush=True)
            end = None if duration_s is None else time.monotonic() + duration_s
            failed = None
            while not stop.wait(0.25):
                if end is not None and time.monotonic() >= end:
                    break
                failed = run.failure()
                if failed:
                    break
            reports = run.stop()
            if failed:
                print(f"mieruka simulate: {failed}", file=sys.stderr)
                return 1
            writes = sum(r["writes"] for r in reports)
            dropped = sum(r["dropped_slices"] for r in reports)
            print(f"stopped: {writes} gauge writes, {sum(r['events'] for r in reports)} model events"
                  + (f", {dropped} slices dropped (too much load)" if dropped else ""), flush=True)
            return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
