"""How large a plant one OPC UA simulator process serves at 1 Hz, and why.

Run from the repository root (loopback only; stops by itself in about 3-5 minutes):

    python bench/opcua_scale.py [--window 10] [--ks 50,100,150,200,250,300,350] [--write-readme]

Three parts, each against a baseline measured in the same run:

1. Write path: microseconds per value write into a server with one subscriber on every
   variable, for asyncua's ``Node.write_value``, asyncua's ``Server.write_attribute_value``
   (the baseline) and the simulator's own path (``OpcUaPlc`` with ``write_path="fast"``: the
   value attribute set directly, a DataValue that is its own deep copy). Median of repeats.
2. Build time: the simulator's address space (variables spread over folders of at most 100)
   against the same number of variables under one parent.
3. Capacity: scale plants of 10 x 10 machines with growing signals per machine K, each served
   by one server process (``simulators.scale.ScaleRun``, as ``mieruka simulate --scale``) with
   every gauge written at 1 Hz; a plain asyncua Client in this process subscribes to every
   variable and counts the gauge notifications over a window, by their source timestamps. A
   size passes when the client receives >= 95 % of the expected updates and 99 % of them
   arrive within one period (1 s) of their write. The growth stops at the first size that fails;
   the largest passing size is then served once more with asyncua's stock write path, as the
   baseline.

``--write-readme`` puts the figures into bench/README.md (its "OPC UA simulator at scale"
section), with the command that made them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncua  # noqa: E402
from asyncua import ua  # noqa: E402
from asyncua.client.client import Client  # noqa: E402
from asyncua.server.server import Server  # noqa: E402

from core.model import MEANINGFUL_SIGNALS  # noqa: E402
from core.plant import Plant, dump_plant, parse_plant  # noqa: E402
from simulators.opcua_plc import OpcUaPlc  # noqa: E402
from simulators.scale import (  # noqa: E402
    PROCESS_CAPACITY_UPDATES_PER_S,
    ScaleRun,
    free_port_block,
    gauges_per_machine,
    scale_plant,
)

README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- opcua-scale:begin -->", "<!-- opcua-scale:end -->"
PASS_RATIO = 0.95
GRACE_S = 1.5  # an update counts if it arrives within one period and one publishing interval
MAX_DELAY_S = 1.0  # and 99 % of them within one period of their write
POINT_TIMEOUT_S = 120.0  # a size that takes longer fails
LINES, MACHINES = 10, 10


# ---- helpers ----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    t0 = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - t0
    end.append(time.perf_counter())


def plant_of(lines: int, machines: int, k: int, ports: list[int]) -> Plant:
    return parse_plant(scale_plant(lines, machines, k, ports), "<bench plant>")


# ---- 1. write path ----------------------------------------------------------------------------------


class _Sink:
    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        pass


async def write_paths(repeats: int = 5) -> dict[str, float]:
    """Median microseconds per write of 2 000 gauges, each with one subscriber."""
    plant = plant_of(1, 20, 108, [free_port_block(1, 23000)])  # 20 x 100 gauges
    out: dict[str, list[float]] = {"Node.write_value": [], "Server.write_attribute_value (baseline)": [],
                                   "OpcUaPlc fast path": []}
    plc = OpcUaPlc(plant, next(iter(plant.sources)), write_path="stock")
    await plc.init()
    await plc.start()
    try:
        nodes = [plc.server.get_node(s.node or "") for _, m in plant.machines() for n, s in m.signals.items()
                 if n not in MEANINGFUL_SIGNALS]
        sub = await plc.server.create_subscription(1000, _Sink())
        await sub.subscribe_data_change(nodes, queuesize=1)
        t_ms = int(time.time() * 1000)
        for r in range(repeats):
            now = cast(ua.DateTime, datetime.now(UTC))
            with timed() as el:
                for i, node in enumerate(nodes):
                    await node.write_value(ua.DataValue(ua.Variant(float(r * 7 + i % 5), ua.VariantType.Double),
                                                        SourceTimestamp=now, ServerTimestamp=now))
            out["Node.write_value"].append(el() / len(nodes) * 1e6)
            plc.write_path = "stock"
            with timed() as el:
                await plc.refresh_gauges(t_ms + r)
            out["Server.write_attribute_value (baseline)"].append(el() / len(nodes) * 1e6)
            plc.write_path = "fast"
            with timed() as el:
                await plc.refresh_gauges(t_ms + r)
            out["OpcUaPlc fast path"].append(el() / len(nodes) * 1e6)
            await asyncio.sleep(1.1)  # let the subscription publish, so queues stay short
        await sub.delete()
    finally:
        await plc.stop()
    return {k: statistics.median(v) for k, v in out.items()}


# ---- 2. build time ----------------------------------------------------------------------------------


async def build_times(n: int = 3000) -> dict[str, float]:
    """Seconds to add ``n`` Double variables: spread as the simulator does, and under one parent."""
    out: dict[str, float] = {}
    k = n // 20 + 5  # 20 machines x (n/20 gauges + 5 meaningful)
    plant = plant_of(1, 20, k, [free_port_block(1, 23100)])
    plc = OpcUaPlc(plant, next(iter(plant.sources)))
    with timed() as el:
        await plc.server.init()
    out["asyncua Server.init()"] = el()
    # OpcUaPlc.init() runs Server.init() itself; time the whole and subtract
    plc = OpcUaPlc(plant, next(iter(plant.sources)))
    with timed() as el:
        await plc.init()
    out[f"simulator address space, {plc.variables} variables (folders of <= 100)"] = el() - out[
        "asyncua Server.init()"]
    server = Server()
    await server.init()
    idx = await server.register_namespace("urn:bench")
    folder = await server.nodes.objects.add_folder(ua.NodeId(ua.String("one"), ua.Int16(idx)), "one")
    with timed() as el:
        for i in range(plc.variables):
            await folder.add_variable(ua.NodeId(ua.String(f"v{i}"), ua.Int16(idx)), f"v{i}", 0.0)
    out[f"{plc.variables} variables under one parent (baseline)"] = el()
    return out


# ---- 3. capacity ------------------------------------------------------------------------------------


@dataclass
class Point:
    k: int
    path: str
    variables: int = 0
    gauges: int = 0
    build_s: float = 0.0
    subscribe_s: float = 0.0
    expected: int = 0
    received: int = 0
    per_second: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    dropped_slices: int = 0
    delay_p50: float = 0.0  # seconds from a write to its notification's arrival
    delay_p99: float = 0.0
    error: str = ""

    @property
    def ratio(self) -> float:
        return self.received / self.expected if self.expected else 0.0

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.per_second) if self.per_second else 0.0

    @property
    def passed(self) -> bool:
        return not self.error and self.ratio >= PASS_RATIO and self.delay_p99 <= MAX_DELAY_S


class _Counter:
    """Counts notifications by their SourceTimestamp (the server's write time), so the count
    over a window does not depend on when publish responses happen to arrive."""

    def __init__(self) -> None:
        self.seconds: dict[int, int] = {}
        self.delays: list[float] = []  # arrival - source time, seconds (every 16th, inside the window)
        self.window = (0, 0)
        self.n = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        ts = data.monitored_item.Value.SourceTimestamp
        if ts is not None:
            t = ts.replace(tzinfo=UTC).timestamp() if ts.tzinfo is None else ts.timestamp()
            s = int(t)
            self.seconds[s] = self.seconds.get(s, 0) + 1
            if self.window[0] <= s < self.window[1]:
                self.n += 1
                if self.n % 16 == 0:
                    self.delays.append(time.time() - t)


async def _subscribe(client: Client, node_ids: list[str], handler: Any) -> Any:
    sub = await client.create_subscription(500, handler)
    for i in range(0, len(node_ids), 1000):
        await sub.subscribe_data_change([client.get_node(n) for n in node_ids[i:i + 1000]], queuesize=1)
    return sub


async def measure(k: int, path: str, window_s: float, workdir: Path) -> Point:
    """One size, bounded in time: a point that does not finish in POINT_TIMEOUT_S fails."""
    point = Point(k, path)
    try:
        await asyncio.wait_for(_measure(point, window_s, workdir), POINT_TIMEOUT_S)
    except TimeoutError:
        point.error = f"not done within {POINT_TIMEOUT_S:g} s"
    return point


async def _measure(point: Point, window_s: float, workdir: Path) -> None:
    k, path = point.k, point.path
    base = free_port_block(1, 24000)
    plant = plant_of(LINES, MACHINES, k, [base])
    plant_file = workdir / f"plant-{k}-{path}.yaml"
    plant_file.write_text(dump_plant(plant), encoding="utf-8")
    gauge_ids = [s.node or "" for _, m in plant.machines() for n, s in m.signals.items()
                 if n not in MEANINGFUL_SIGNALS]
    other_ids = [s.node or "" for _, m in plant.machines() for n, s in m.signals.items() if n in MEANINGFUL_SIGNALS]
    run = ScaleRun(plant_file, [list(plant.sources)], write_path="fast" if path == "fast" else "stock")
    try:
        ready = (await asyncio.to_thread(run.start, 180.0))[0]
        point.variables, point.gauges, point.build_s = ready["variables"], ready["gauges"], ready["build_s"]
        pid = run.procs[0].pid or 0
        gauges, others = _Counter(), _Counter()
        async with Client(f"opc.tcp://127.0.0.1:{base}", timeout=60) as client:
            with timed() as el:
                await _subscribe(client, gauge_ids, gauges)
                await _subscribe(client, other_ids, others)
            point.subscribe_s = el()
            await asyncio.sleep(3.0)  # initial values and the first refreshes arrive
            first = int(time.time()) + 1  # whole seconds of source time: [first, first + window)
            gauges.window = (first, first + int(window_s))
            await asyncio.sleep(first - time.time())
            s0, c0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
            await asyncio.sleep(window_s)
            dt = time.monotonic() - t0
            point.server_cpu = (cpu_seconds(pid) - s0) / dt
            point.client_cpu = (time.process_time() - c0) / dt
            await asyncio.sleep(GRACE_S)  # what arrives later than this counts as lost
            seconds = range(first, first + int(window_s))
            if gauges.delays:
                q = statistics.quantiles(gauges.delays, n=100)
                point.delay_p50, point.delay_p99 = q[49], q[98]
            point.per_second = [gauges.seconds.get(s, 0) / point.gauges for s in seconds]
            point.received = sum(gauges.seconds.get(s, 0) for s in seconds)
            point.expected = point.gauges * len(seconds)
    except Exception as e:
        point.error = f"{type(e).__name__}: {e}"
    finally:
        reports = await asyncio.to_thread(run.stop)
        point.dropped_slices = sum(r.get("dropped_slices", 0) for r in reports)


# ---- report -----------------------------------------------------------------------------------------


def render(command: str, paths: dict[str, float], builds: dict[str, float], points: list[Point],
           baseline: Point | None, elapsed_s: float) -> str:
    lines = [BEGIN, "## OPC UA simulator at scale", "",
             f"Command: `{command}` (bench/opcua_scale.py), {datetime.now(UTC):%Y-%m-%d}, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}, asyncua {asyncua.__version__}; "
             f"the run took {elapsed_s:.0f} s.", ""]
    base = paths["Server.write_attribute_value (baseline)"]
    lines += ["**Write path** (2 000 gauges, one subscriber on each; median of 5 passes):", "",
              "| write path | µs per write | vs baseline |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {us:.1f} | {us / base:.2f}x |" for name, us in paths.items()]
    lines += ["", "asyncua deep-copies every value it notifies a subscriber of; the simulator writes DataValues "
              "that are their own copy (it never mutates one after writing it) and sets the value attribute "
              "directly, skipping the per-write lookups and type check.", ""]
    one = next(v for k, v in builds.items() if k.endswith("(baseline)"))
    lines += ["**Build time:**", "", "| what | seconds | vs baseline |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {s:.2f} | {s / one:.2f}x |" for name, s in builds.items()]
    lines += ["", f"**Capacity** ({LINES} x {MACHINES} machines, K signals each, every gauge written at 1 Hz by one "
              "server process; a plain asyncua client in another process subscribed to every variable, "
              "publishing interval 500 ms; updates counted by their source time over whole seconds of the window, "
              f"arriving within {GRACE_S:g} s of the window's end; pass: >= {PASS_RATIO:.0%} of the expected gauge "
              f"updates received and 99 % of them within {MAX_DELAY_S:g} s of their write, i.e. within one period):",
              "",
              "| K | variables | gauges/s expected | build s | subscribe s | received | median per second | "
              "delay p50 / p99 s | server CPU | client CPU | result |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for p in points + ([baseline] if baseline else []):
        label = f"{p.k}" + (" (stock asyncua write path: baseline)" if p.path != "fast" else "")
        result = p.error or ("pass" if p.passed else "FAIL")
        lines.append(f"| {label} | {p.variables} | {p.gauges} | {p.build_s:.1f} | {p.subscribe_s:.1f} | "
                     f"{p.ratio:.1%} | {p.median_ratio:.1%} | {p.delay_p50:.2f} / {p.delay_p99:.2f} | "
                     f"{p.server_cpu:.0%} | {p.client_cpu:.0%} | {result} |")
    best = max((p for p in points if p.passed), key=lambda p: p.gauges, default=None)
    lines += ["", "Received above 100 %: a slice written late lands in the next second of source time. The client "
              "is plain Python asyncua as well and shares the CPUs with the server; at the largest sizes it is about "
              "as busy.", ""]
    if best is not None:
        lines.append(f"Largest size served at 1 Hz by one process here: **{best.variables} variables, "
                     f"{best.gauges} gauge updates/s** (K = {best.k}), at {best.server_cpu:.0%} of a CPU.")
        if baseline is not None:
            lines.append(f"At that size asyncua's stock write path (the baseline) delivered {baseline.ratio:.1%} of "
                         f"the updates at {baseline.server_cpu:.0%} server CPU, against {best.ratio:.1%} at "
                         f"{best.server_cpu:.0%} with the simulator's path.")
    lines += ["", f"`simulators/scale.py` sizes `mieruka simulate --scale` from `PROCESS_CAPACITY_UPDATES_PER_S` = "
              f"{PROCESS_CAPACITY_UPDATES_PER_S} gauge updates/s per process (below the largest passing size, for a "
              "margin: a collector often shares the machine) and uses at most one process per CPU.", END]
    return "\n".join(lines) + "\n"


def write_readme(section: str) -> None:
    text = README.read_text(encoding="utf-8") if README.exists() else "# mieruka benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    README.write_text(text, encoding="utf-8")


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--window", type=float, default=10.0, help="seconds of counting per size (default 10)")
    ap.add_argument("--ks", default="50,100,150,200,250,300,350", help="signals per machine to try, growing")
    ap.add_argument("--write-readme", action="store_true", help="put the figures into bench/README.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    command = "python bench/opcua_scale.py " + " ".join(argv) if argv else "python bench/opcua_scale.py"
    t_start = time.monotonic()

    print("1. write path (µs per write, 2 000 gauges with a subscriber each)", flush=True)
    paths = await write_paths()
    base = paths["Server.write_attribute_value (baseline)"]
    for name, us in paths.items():
        print(f"   {name:45s} {us:7.1f} µs  {us / base:5.2f}x", flush=True)

    print("2. build time", flush=True)
    builds = await build_times()
    one = next(v for k, v in builds.items() if k.endswith("(baseline)"))
    for name, s in builds.items():
        print(f"   {name:70s} {s:6.2f} s  {s / one:5.2f}x", flush=True)

    print(f"3. capacity: {LINES}x{MACHINES} machines, gauges at 1 Hz, {args.window:g} s windows", flush=True)
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="mieruka-bench-") as tmp:
        for k in (int(x) for x in args.ks.split(",")):
            p = await measure(k, "fast", args.window, Path(tmp))
            points.append(p)
            print(f"   K={k:4d}: {p.variables:6d} variables, {LINES * MACHINES * gauges_per_machine(k):6d} gauges/s: "
                  f"build {p.build_s:5.1f} s, subscribe {p.subscribe_s:5.1f} s, received {p.ratio:6.1%} "
                  f"(median/s {p.median_ratio:6.1%}), delay p50/p99 {p.delay_p50:.2f}/{p.delay_p99:.2f} s, "
                  f"server CPU {p.server_cpu:4.0%}, client CPU {p.client_cpu:4.0%}"
                  f" {p.error or ('pass' if p.passed else 'FAIL')}", flush=True)
            if not p.passed:
                break
        best = max((p for p in points if p.passed), key=lambda p: p.gauges, default=None)
        baseline = None
        if best is not None:
            baseline = await measure(best.k, "stock", args.window, Path(tmp))
            print(f"   baseline, stock write path at K={best.k}: received {baseline.ratio:6.1%} "
                  f"(median/s {baseline.median_ratio:6.1%}), server CPU {baseline.server_cpu:4.0%} "
                  f"{baseline.error}", flush=True)
    elapsed = time.monotonic() - t_start
    section = render(command, paths, builds, points, baseline, elapsed)
    if best is not None:
        print(f"largest passing: K={best.k}, {best.variables} variables, {best.gauges} gauge updates/s "
              f"({elapsed:.0f} s in all)")
    if args.write_readme:
        write_readme(section)
        print(f"wrote {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
