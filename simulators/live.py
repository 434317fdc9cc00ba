"""Live mode: the plant model against the wall clock, served over OPC UA and MQTT.

Start-up order matters for collectors that connect early: the OPC UA address spaces are built
and the MQTT connections made first; then the model starts at "now", its snapshot is written to
every variable and published (retained) before a server listens; only then do the OPC UA
servers listen and ``ready`` is set. A collector therefore never sees a placeholder value as
its baseline.

Every tick (50 ms) the model is advanced to the wall clock and the events whose time has come
are applied: ledger line (flushed), OPC UA writes, MQTT publishes. The event time, not the
moment of writing, is the source timestamp everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from core.plant import Plant
from simulators.faults import Fault, check_sources, with_rollover
from simulators.ledger import LedgerWriter
from simulators.model import Event, PlantModel, iso_ms
from simulators.mqtt_plc import MqttPlc
from simulators.opcua_plc import OpcUaPlc

log = logging.getLogger(__name__)

TICK_S = 0.05
_YIELD_EVERY = 100  # events between yields to the loop, so client sockets are served


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class _Plcs:
    def __init__(self, plant: Plant, seed: int = 0, sparkplug_aliases: bool = False) -> None:
        used = {m.source for _, m in plant.machines()}
        self.opcua = {sid: OpcUaPlc(plant, sid) for sid, s in plant.sources.items()
                      if sid in used and s.kind == "opcua"}
        self.mqtt = {sid: MqttPlc(plant, sid, seed=seed, aliases=sparkplug_aliases) for sid, s in plant.sources.items()
                     if sid in used and s.kind == "mqtt"}
        self.source_of = {m.id: m.source for _, m in plant.machines()}

    async def inject(self, fault: Fault) -> None:
        """Start ``fault`` on every PLC it applies to (all of its kind, or its one source)."""
        opcua = [o for sid, o in self.opcua.items() if fault.source in (None, sid)]
        mqtt = [q for sid, q in self.mqtt.items() if fault.source in (None, sid)]
        dur = fault.duration_s
        if fault.kind == "restart":
            await asyncio.gather(*(o.restart(dur or 5.0) for o in opcua),
                                 *(q.restart(dur or 5.0) for q in mqtt if q.sparkplug))
        elif fault.kind == "seq_gap":
            for q in mqtt:
                if q.sparkplug:
                    q.seq_gap(int(fault.value or 1))
        elif fault.kind == "disconnect":
            await asyncio.gather(*(q.disconnect(dur or 5.0) for q in mqtt))
        elif fault.kind == "silence":
            for o in opcua:
                o.silence(dur or 10.0)
            for q in mqtt:
                q.silence(dur or 10.0)
        elif fault.kind == "bad_quality":
            for o in opcua:
                o.bad_quality(dur or 5.0)
        elif fault.kind == "skew":
            for o in opcua:
                o.skew(fault.value or 0.0, dur)
            for q in mqtt:
                q.skew(fault.value or 0.0, dur)
        elif fault.kind == "malformed":
            for q in mqtt:
                q.malformed(fault.value or 0.0, dur)

    async def apply(self, event: Event) -> None:
        sid = self.source_of[event.machine]
        o = self.opcua.get(sid)
        if o is not None:
            await o.apply(event)
            return
        q = self.mqtt.get(sid)
        if q is not None:
            q.apply(event)


async def _all(coros: dict[str, Coroutine[Any, Any, None]]) -> None:
    """Run start-up steps concurrently (asyncua's init takes ~2 s per server); a failure is
    raised as itself (a port in use, a broker that is down), not wrapped in a group."""
    try:
        async with asyncio.TaskGroup() as tg:
            for name, coro in coros.items():
                tg.create_task(coro, name=name)
    except ExceptionGroup as eg:
        first = eg.exceptions[0]
        while isinstance(first, ExceptionGroup):
            first = first.exceptions[0]
        raise first from eg


async def _run_faults(plcs: _Plcs, faults: Sequence[Fault], ledger: LedgerWriter, start_ms: int,
                      stop: asyncio.Event) -> None:
    """Begin each fault at its time after start: a ledger record, then the PLCs act. Faults that
    take time (a restart, a disconnect) run beside the next ones."""
    async with asyncio.TaskGroup() as tg:
        for i, f in enumerate(sorted(faults, key=lambda f: f.at_s)):
            delay = (start_ms + f.at_s * 1000 - wall_ms()) / 1000
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set():
                return
            ledger.write_fault(wall_ms(), f.record())
            log.info("fault: %s%s", f.kind, f" on {f.source}" if f.source else "")
            tg.create_task(plcs.inject(f), name=f"fault-{i}-{f.kind}")


async def run_live(plant: Plant, seed: int, *, duration_s: float | None, truth_path: Path,
                   stop: asyncio.Event | None = None, ready: asyncio.Event | None = None,
                   tick_s: float = TICK_S, faults: Sequence[Fault] = (), sparkplug_aliases: bool = False) -> None:
    """Run the simulated plant live until ``stop`` is set or ``duration_s`` has passed (None:
    until ``stop``). Serves one OPC UA server per OPC UA source at its endpoint and publishes to
    each MQTT source's broker; writes the ledger to ``truth_path`` as it goes. ``ready`` is set
    once the servers listen and the initial values are published. ``sparkplug_aliases``: Sparkplug
    B births give metrics aliases and data messages carry only those."""
    stop = stop if stop is not None else asyncio.Event()
    check_sources(list(faults), plant)
    rollover = [f for f in faults if f.kind == "rollover"]
    timed = [f for f in faults if f.kind != "rollover"]
    if rollover:
        only = {f.source for f in rollover if f.source is not None}
        plant = with_rollover(plant, None if any(f.source is None for f in rollover) else only)
    plcs = _Plcs(plant, seed, sparkplug_aliases)
    async with contextlib.AsyncExitStack() as stack:
        for o in plcs.opcua.values():
            stack.push_async_callback(o.stop)
        for q in plcs.mqtt.values():
            stack.push_async_callback(q.stop)
        await _all({f"opcua-init-{sid}": o.init() for sid, o in plcs.opcua.items()}
                   | {f"mqtt-connect-{sid}": q.connect() for sid, q in plcs.mqtt.items()})

        ledger = stack.enter_context(LedgerWriter(truth_path, flush_each=True))
        for sid, o in plcs.opcua.items():
            # a client calling ResetCounters is a fault like any other: the ledger records it
            o.on_reset = lambda machine, t_ms, sid=sid: ledger.write_fault(
                t_ms, {"fault": "reset_counters", "source": sid, "machine": machine})
        start_ms = wall_ms()
        for f in rollover:
            ledger.write_fault(start_ms, f.record())
        model = PlantModel(plant, seed, start_ms)
        for ev in model.initial_events():
            ledger.write(ev)
            await plcs.apply(ev)
        await _all({f"opcua-start-{sid}": o.start() for sid, o in plcs.opcua.items()}
                   | {f"mqtt-initial-{sid}": q.flush() for sid, q in plcs.mqtt.items()})
        end_ms = None if duration_s is None else start_ms + round(duration_s * 1000)
        log.info("simulated plant live from %s (seed %d, %s)", iso_ms(start_ms), seed,
                 "until stopped" if end_ms is None else f"for {duration_s:g} s")
        if ready is not None:
            ready.set()

        n = 0

        async def tick() -> None:
            nonlocal n
            while True:
                now = wall_ms()
                done = stop.is_set() or (end_ms is not None and now >= end_ms)
                # a run with a duration covers exactly [start, start + duration)
                events = model.advance(end_ms, inclusive=False) if done and end_ms is not None and now >= end_ms \
                    else model.advance(now, inclusive=True)
                for ev in events:
                    ledger.write(ev)
                    await plcs.apply(ev)
                    n += 1
                    if n % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                if done:
                    break
                delay = tick_s - (time.time() % tick_s)
                if end_ms is not None:
                    delay = min(delay, max(0.0, (end_ms - wall_ms()) / 1000))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.001))
            finished.set()

        # the faults end with the clock (a stop or the duration), so they wait on `finished`
        finished = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(tick(), name="simulator-clock")
            if timed:
                tg.create_task(_run_faults(plcs, timed, ledger, start_ms, finished), name="faults")
        log.info("simulated plant stopped at %s: %d events, %d ledger records", iso_ms(model.now_ms), n,
                 ledger.records)
