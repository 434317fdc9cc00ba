"""`mieruka demo`: a simulated plant and the whole stack in one process, no other setup.

Embedded MQTT broker (amqtt, bound to 127.0.0.1) · live PLC simulators (OPC UA + MQTT) ·
collector into SQLite · API (uvicorn; anonymous reads, and one operator token in the data dir for
the dashboard's operator page) · dashboard (Dash, in a thread). At start the shift so
far is backfilled by the fast-forward simulator through the import path, so the wall board is
full at once; then everything goes on live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from api.routes.stream import ClosesStreams
from core.calendar import ShiftWindow, current_shift
from core.plant import Plant, Shift, dump_plant, load_plant

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_PLANT = Path(__file__).resolve().parent.parent / "deploy" / "plants" / "demo.yaml"


@dataclass
class DemoOptions:
    plant: Path | None = None
    data_dir: Path = Path("mieruka-data")
    api_port: int = 8000
    dashboard_port: int = 8050
    duration_s: float | None = None
    seed: int = 1


class DemoError(Exception):
    """A demo that cannot start (busy port, missing plant file)."""


# ---- plant adjustments -----------------------------------------------------------------------


def _shift_hhmm(hhmm: str, delta_min: int) -> str:
    h, m = (int(x) for x in hhmm.split(":"))
    t = (h * 60 + m + delta_min) % 1440
    return f"{t // 60:02d}:{t % 60:02d}"


def needs_calendar_move(plant: Plant, now: datetime) -> str | None:
    """Why the demo calendar must move to the present, or None when a shift is producing now."""
    w = current_shift(plant, now)
    if w is None:
        return "no shift is running now"
    if any(a - timedelta(minutes=10) <= now < b for a, b in w.breaks):
        return "a break is on now or within 10 minutes"
    if w.end - now < timedelta(minutes=30):
        return "the current shift ends within 30 minutes"
    return None


def move_calendar_to_now(plant: Plant, now: datetime) -> Plant:
    """Shift every shift's times by one offset so the first shift started ~90 minutes ago, on every
    day of the week, holidays dropped. One offset for all shifts keeps them apart."""
    if not plant.calendar.shifts:
        return plant
    first = plant.calendar.shifts[0]
    local = now.astimezone(plant.site.tz)
    target = (local.hour * 60 + local.minute - 90) // 5 * 5
    s0 = first.start_time.hour * 60 + first.start_time.minute
    delta = (target - s0) % 1440
    shifts: list[Shift] = []
    for sh in plant.calendar.shifts:
        shifts.append(sh.model_copy(update={
            "start": _shift_hhmm(sh.start, delta),
            "end": _shift_hhmm(sh.end, delta),
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "breaks": [(_shift_hhmm(a, delta), _shift_hhmm(b, delta)) for a, b in sh.breaks],
        }))
    calendar = plant.calendar.model_copy(update={"shifts": shifts, "holidays": []})
    return plant.model_copy(update={"calendar": calendar})


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def localize_sources(plant: Plant) -> tuple[Plant, list[str]]:
    """Point every source at 127.0.0.1 (the demo serves them itself) on a free port."""
    notes: list[str] = []
    sources = {}
    for sid, src in plant.sources.items():
        if src.opcua is not None:
            port = urlsplit(src.opcua.endpoint).port or 4840
            if not port_free(port):
                new = free_port()
                notes.append(f"port {port} is busy: OPC UA source '{sid}' serves on {new} instead")
                port = new
            ep = src.opcua.model_copy(update={"endpoint": f"opc.tcp://{LOOPBACK}:{port}"})
            sources[sid] = src.model_copy(update={"opcua": ep})
        elif src.mqtt is not None:
            port = src.mqtt.port
            if not port_free(port):
                new = free_port()
                notes.append(f"port {port} is busy: the demo MQTT broker for '{sid}' listens on {new} instead")
                port = new
            sources[sid] = src.model_copy(update={"mqtt": src.mqtt.model_copy(update={"host": LOOPBACK,
                                                                                       "port": port})})
    return plant.model_copy(update={"sources": sources}), notes


# ---- servers ---------------------------------------------------------------------------------


class _Uvicorn(ClosesStreams, uvicorn.Server):
    """uvicorn without its own signal handling: the demo's one stop event owns Ctrl-C; it ends the
    API's live streams when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.contextmanager
def _dashboard_thread(api_url: str, port: int, operator_token_file: Path | None = None) -> Iterator[None]:
    from werkzeug.serving import make_server

    from dashboard.app import create_dashboard
    from dashboard.client import TokenSource

    operator = TokenSource(operator_token_file) if operator_token_file is not None else None
    app = create_dashboard(api_url, operator_token=operator)
    server = make_server(LOOPBACK, port, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(timeout=10)


async def _amqtt_brokers(plant: Plant) -> list[Any]:
    from amqtt.broker import Broker

    brokers = []
    for src in plant.sources.values():
        if src.mqtt is None:
            continue
        cfg = {
            "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{src.mqtt.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(cfg)
        await broker.start()
        brokers.append(broker)
    return brokers


async def _wait_stop(stop: asyncio.Event, seconds: float | None) -> None:
    if seconds is None:
        await stop.wait()
    else:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
    stop.set()


# ---- the demo --------------------------------------------------------------------------------


async def backfill(plant: Plant, store: Any, shift: ShiftWindow, now: datetime, data_dir: Path, seed: int) -> str:
    """Fast-forward the shift so far and import it through the same path as a PLC log."""
    from collector.importer import import_samples
    from simulators.fastforward import run_fast_forward

    samples = data_dir / "backfill-samples.csv"
    truth = data_dir / "backfill-truth.jsonl"
    start = shift.start
    await asyncio.to_thread(run_fast_forward, plant, seed, start, now, samples, truth)
    report = await import_samples(plant, store, samples)
    return (f"backfilled the shift so far ({start.astimezone(plant.site.tz):%H:%M}–"
            f"{now.astimezone(plant.site.tz):%H:%M}): {report.facts_written} facts from {report.rows} samples")


def operator_token(data_dir: Path) -> tuple[Path, Path]:
    """A fresh token file with one ``operator`` token for the demo's dashboard, so its operator page
    (``/operator/<line>``) works out of the box; reads stay anonymous. Returns (token file, file
    holding the operator token, mode 0600)."""
    from api.tokens import create_token

    tokens, token_file = data_dir / "tokens.json", data_dir / "operator.token"
    tokens.unlink(missing_ok=True)
    token = create_token(tokens, "demo-operator", "operator")
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.chmod(token_file, 0o600)
    return tokens, token_file


def prepare(opts: DemoOptions, now: datetime) -> tuple[Plant, Path, Path]:
    """Check ports, move the calendar if needed, localize sources, write the effective plant file
    and start from an empty store. Returns (plant, data dir, SQLite file)."""
    plant = load_plant(opts.plant or DEFAULT_PLANT)
    for name, port in (("--api-port", opts.api_port), ("--dashboard-port", opts.dashboard_port)):
        if not port_free(port):
            raise DemoError(f"port {port} on {LOOPBACK} is in use; pass another {name}")
    why = needs_calendar_move(plant, now)
    if why is not None:
        plant = move_calendar_to_now(plant, now)
        w = current_shift(plant, now)
        assert w is not None
        print(f"demo: {why}; the demo calendar is moved so that shift '{w.shift_id}' runs now "
              f"({w.start.astimezone(plant.site.tz):%H:%M}–{w.end.astimezone(plant.site.tz):%H:%M} "
              f"{plant.site.timezone}, every day, no holidays)", flush=True)
    plant, notes = localize_sources(plant)
    for n in notes:
        print(f"demo: {n}", flush=True)
    data_dir = opts.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "plant.yaml").write_text(dump_plant(plant), encoding="utf-8")
    db = data_dir / "mieruka.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    # the spool of an earlier demo belongs to that demo's (deleted) store and calendar
    shutil.rmtree(data_dir / "spool", ignore_errors=True)
    return plant, data_dir, db


async def run_demo(opts: DemoOptions) -> int:
    from collector.pipeline import Collector
    from collector.spool import Spool
    from core.store import open_store
    from simulators.live import run_live

    now = datetime.now(UTC).replace(microsecond=0)
    plant, data_dir, db = prepare(opts, now)
    store = open_store(f"sqlite:///{db}")
    await store.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    brokers: list[Any] = []
    stack = contextlib.ExitStack()
    try:
        shift = current_shift(plant, now)
        if shift is not None and shift.start < now:
            print(f"demo: {await backfill(plant, store, shift, now, data_dir, opts.seed)}", flush=True)
        brokers = await _amqtt_brokers(plant)
        api_url = f"http://{LOOPBACK}:{opts.api_port}"
        from api.app import create_app
        from api.auth import Auth
        from api.tokens import TokenFile

        # the API reads through its own connection, as it would in its own process; the demo serves
        # loopback only, so anyone on this machine may read without a token; writes (the operator
        # page) need the demo dashboard's operator token
        tokens, op_token_file = operator_token(data_dir)
        api = create_app(plant, open_store(f"sqlite:///{db}"), auth=Auth(TokenFile(tokens), anonymous_read=True))
        server = _Uvicorn(uvicorn.Config(api, host=LOOPBACK,
                                         port=opts.api_port, log_level="warning", lifespan="on"))
        ready = asyncio.Event()
        spool = stack.enter_context(Spool(data_dir / "spool"))
        collector = Collector(plant, store, spool=spool)
        with _dashboard_thread(api_url, opts.dashboard_port, op_token_file):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(run_live(plant, opts.seed + 1, duration_s=None, truth_path=data_dir / "truth.jsonl",
                                        stop=stop, ready=ready), name="simulators")
                tg.create_task(collector.run(stop), name="collector")
                api_task = tg.create_task(server.serve(), name="api")
                await ready.wait()
                print(f"demo: plant file  {data_dir / 'plant.yaml'}", flush=True)
                print(f"demo: store       sqlite:///{db}", flush=True)
                print(f"demo: API         {api_url}/api/v1/lines  (OpenAPI: {api_url}/docs)", flush=True)
                print(f"demo: dashboard   http://{LOOPBACK}:{opts.dashboard_port}/", flush=True)
                if plant.lines:
                    print(f"demo: operator    http://{LOOPBACK}:{opts.dashboard_port}/operator/{plant.lines[0].id}"
                          "  (a tablet at the line: name stops, book scrap, shift notes)", flush=True)
                print("demo: running; Ctrl-C stops it", flush=True)
                await _wait_stop(stop, opts.duration_s)
                server.should_exit = True
                await api_task
    finally:
        for b in brokers:
            with contextlib.suppress(Exception):
                await b.shutdown()
        await store.close()
        stack.close()
    print("demo: stopped", flush=True)
    return 0
