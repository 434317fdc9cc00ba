"""The OPC UA PLC simulator against a plain asyncua Client: address space, writes, faults,
security, and scale mode.

One server is shared by the module (asyncua's init takes ~2 s); each test works on its own
registers or ends its faults. Events are made by hand, so every value and time is known.
Waits are on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError

from core.plant import Plant, load_plant, parse_plant
from simulators import certs
from simulators.model import Event, to_ms
from simulators.opcua_plc import FOLDER_CHILDREN, OpcUaPlc, wall_ms
from simulators.scale import (
    default_processes,
    free_port_block,
    gauges_per_machine,
    model_plant,
    parse_scale,
    plan,
    port_free,
    scale_plant,
    signal_specs,
)
from tests.support.services import free_port

# the tests on the shared server run in the module's event loop, where the server lives
shared_loop = pytest.mark.asyncio(loop_scope="module")

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
STATE_MAP = {1: "running", 2: "idle", 3: "down", 4: "changeover", 5: "planned"}
DEADLINE_S = 10.0


def plant_raw(port: int, **opcua: Any) -> dict[str, Any]:
    ln = "ln"
    return {
        "site": {"id": "opcua-test", "timezone": "Asia/Tokyo"},
        "calendar": {"shifts": [{"id": "all", "start": "00:00", "end": "00:00", "days": ALL_DAYS}]},
        "reasons": {20: {"name": "Spindle fault", "category": "breakdown"}},
        "products": {"A-1": {"ideal_cycle_s": 1}, "B-2": {"ideal_cycle_s": 2}},
        "sources": {"plc": {"opcua": {"endpoint": f"opc.tcp://127.0.0.1:{port}", "security": "none", **opcua}}},
        "lines": [{"id": ln, "machines": [
            {"id": "m16", "ideal_cycle_s": 1, "source": "plc", "signals": {
                "good": {"node": f"ns=2;s={ln}.m16.GoodCount", "counter_bits": 16},
                "scrap": {"node": f"ns=2;s={ln}.m16.ScrapCount", "counter_bits": 16, "retentive": True},
                "state": {"node": f"ns=2;s={ln}.m16.State", "map": STATE_MAP},
                "reason": {"node": f"ns=2;s={ln}.m16.StopReason"},
                "spindle_temp": {"node": f"ns=2;s={ln}.m16.SpindleTemp", "unit": "°C"},
            }},
            {"id": "m32", "ideal_cycle_s": 1, "source": "plc", "signals": {
                "good": {"node": f"ns=2;s={ln}.m32.GoodCount", "counter_bits": 32},
                "scrap": {"node": f"ns=2;s={ln}.m32.ScrapCount", "counter_bits": 32},
                "state": {"node": f"ns=2;s={ln}.m32.State", "map": STATE_MAP},
                "product": {"node": f"ns=2;s={ln}.m32.ProductCode"},
            }},
            # more nodes than one folder takes: the rest spill into subfolders
            {"id": "big", "ideal_cycle_s": 1, "source": "plc", "signals": {
                "good": {"node": f"ns=2;s={ln}.big.GoodCount", "counter_bits": 64},
                **{f"g{i:03d}": {"node": f"ns=2;s={ln}.big.G{i:03d}"} for i in range(1, 150)},
            }},
        ]}],
    }


def ev(machine: str, kind: str, t_ms: int, *raw: tuple[str, Any], **kw: Any) -> Event:
    return Event(t_ms, "ln", machine, kind, tuple(raw), **kw)  # type: ignore[arg-type]


async def eventually(cond: Callable[[], Awaitable[bool]], what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not await cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port (a bind test would trip on TIME_WAIT)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def ms(dv: ua.DataValue) -> int:
    ts = dv.SourceTimestamp
    assert ts is not None
    return to_ms(ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC))


class Plc:
    """The module's server, its plant, and what its reset hook saw."""

    def __init__(self, plc: OpcUaPlc, plant: Plant, t0: int) -> None:
        self.plc = plc
        self.plant = plant
        self.t0 = t0
        self.resets: list[tuple[str, int]] = []
        self.url = plc.endpoint

    def node(self, client: Client, machine: str, name: str) -> Any:
        return client.get_node(self.plc.node_id(machine, name))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv() -> AsyncIterator[Plc]:
    plant = parse_plant(plant_raw(free_port()), "<opcua test plant>")
    plc = OpcUaPlc(plant, "plc")
    await plc.init()
    t0 = wall_ms()
    env = Plc(plc, plant, t0)
    plc.on_reset = lambda machine, t: env.resets.append((machine, t))
    for e in (ev("m16", "state", t0, ("good", 100), ("scrap", 7), ("reason", 0), ("state", 1), state="running",
                 initial=True),
              ev("m16", "gauge", t0, ("spindle_temp", 24.5)),
              ev("m32", "state", t0, ("good", 5), ("scrap", 0), ("product", "A-1"), ("state", 1), state="running",
                 initial=True)):
        await plc.apply(e)
    await plc.start()
    try:
        yield env
    finally:
        await plc.stop()


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[Client]:
    async with Client(url, timeout=5) as client:
        yield client


# ---- address space and writes ---------------------------------------------------------------------


@shared_loop
async def test_variables_types_and_folders(srv: Plc) -> None:
    async with connect(srv.url) as c:
        types = {(m, n): await srv.node(c, m, n).read_data_type_as_variant_type()
                 for m, n in [("m16", "good"), ("m16", "scrap"), ("m32", "good"), ("m16", "state"),
                              ("m16", "reason"), ("m16", "spindle_temp"), ("m16", "Product"), ("m32", "product"),
                              ("m16", "CycleTime"), ("m32", "CycleTime")]}
        assert types == {("m16", "good"): ua.VariantType.UInt16, ("m16", "scrap"): ua.VariantType.UInt16,
                         ("m32", "good"): ua.VariantType.UInt32, ("m16", "state"): ua.VariantType.Int32,
                         ("m16", "reason"): ua.VariantType.Int32, ("m16", "spindle_temp"): ua.VariantType.Double,
                         ("m16", "Product"): ua.VariantType.String, ("m32", "product"): ua.VariantType.String,
                         ("m16", "CycleTime"): ua.VariantType.Double, ("m32", "CycleTime"): ua.VariantType.Double}
        # the plant's node ids where it names one; extras beside them as ns=2;s=<line>.<machine>.<Name>
        assert srv.plc.node_id("m16", "good") == "ns=2;s=ln.m16.GoodCount"
        assert srv.plc.node_id("m32", "product") == "ns=2;s=ln.m32.ProductCode"
        assert srv.plc.node_id("m16", "Product") == "ns=2;s=ln.m16.Product"
        assert srv.plc.node_id("m16", "CycleTime") == "ns=2;s=ln.m16.CycleTime"
        with pytest.raises(KeyError):
            srv.plc.node_id("m32", "Product")  # the plant has a product signal for m32
        folder = c.get_node(srv.plc.folder_id("m16"))
        names = {(await ch.read_browse_name()).Name for ch in await folder.get_children()}
        assert names == {"good", "scrap", "state", "reason", "spindle_temp", "Product", "CycleTime", "ResetCounters"}
        assert await srv.node(c, "m16", "spindle_temp").read_value() == 24.5


@shared_loop
async def test_a_big_machine_spills_into_subfolders_and_keeps_its_method(srv: Plc) -> None:
    p = srv.plc
    async with connect(srv.url) as c:
        folder = c.get_node(p.folder_id("big"))
        children = await folder.get_children()
        names: list[str] = [str((await ch.read_browse_name()).Name) for ch in children]
        assert len(children) == FOLDER_CHILDREN + 1 and "ResetCounters" in names and "2" in names
        sub = children[names.index("2")]
        # the method, good, 149 gauges, Product and CycleTime: 153 nodes, 100 in the folder itself
        assert len(await sub.get_children()) == 1 + 1 + 149 + 2 - FOLDER_CHILDREN
        assert await srv.node(c, "big", "g149").read_data_type_as_variant_type() == ua.VariantType.Double
        assert await srv.node(c, "big", "good").read_data_type_as_variant_type() == ua.VariantType.UInt64
        await folder.call_method(ua.NodeId.from_string(p.node_id("big", "ResetCounters")))
        assert srv.resets[-1][0] == "big"
        srv.resets.clear()


@shared_loop
async def test_writes_carry_the_event_time_as_source_timestamp(srv: Plc) -> None:
    t = wall_ms()
    await srv.plc.apply(ev("m16", "part", t, ("good", 101), good=True, product="A-1"))
    await srv.plc.apply(ev("m32", "product", t + 1, ("product", "B-2"), product="B-2"))
    await srv.plc.apply(ev("m16", "state", t + 2, ("reason", 20), ("state", 3), state="down", reason=20))
    async with connect(srv.url) as c:
        good = await srv.node(c, "m16", "good").read_data_value()
        assert good.Value is not None and good.Value.Value == 101 and ms(good) == t
        product = await srv.node(c, "m16", "Product").read_data_value()  # from the part's product
        assert product.Value is not None and product.Value.Value == "A-1" and ms(product) == t
        product = await srv.node(c, "m32", "product").read_data_value()
        assert product.Value is not None and product.Value.Value == "B-2" and ms(product) == t + 1
        for name, value in (("reason", 20), ("state", 3)):
            dv = await srv.node(c, "m16", name).read_data_value()
            assert dv.Value is not None and dv.Value.Value == value and ms(dv) == t + 2
        assert dv.ServerTimestamp is not None


@shared_loop
async def test_cycle_time_counts_running_time_between_parts(srv: Plc) -> None:
    t = wall_ms()
    p = srv.plc
    await p.apply(ev("m32", "state", t, ("state", 1), state="running"))
    await p.apply(ev("m32", "part", t + 100, ("good", 6), good=True))
    await p.apply(ev("m32", "part", t + 1600, ("good", 7), good=True))
    async with connect(srv.url) as c:
        node = srv.node(c, "m32", "CycleTime")
        dv = await node.read_data_value()
        assert dv.Value is not None and dv.Value.Value == 1.5 and ms(dv) == t + 1600
        # a stop inside a cycle does not count
        await p.apply(ev("m32", "state", t + 2000, ("state", 3), state="down"))
        await p.apply(ev("m32", "state", t + 9000, ("state", 1), state="running"))
        await p.apply(ev("m32", "part", t + 9250, ("scrap", 1), good=False))
        assert await node.read_value() == 0.65


@shared_loop
async def test_counters_wrap_at_their_width(srv: Plc) -> None:
    t = wall_ms()
    async with connect(srv.url) as c:
        for raw, shown in ((4_294_967_295, 4_294_967_295), (2, 2)):
            await srv.plc.apply(ev("m32", "part", t, ("scrap", raw), good=False))
            assert await srv.node(c, "m32", "scrap").read_value() == shown
        # a 16-bit register holds 0..65535 whatever the model counts
        await srv.plc.apply(ev("m16", "part", t, ("good", 65_535), good=True))
        assert await srv.node(c, "m16", "good").read_value() == 65_535
        await srv.plc.apply(ev("m16", "part", t + 1, ("good", 0), good=True))
        assert await srv.node(c, "m16", "good").read_value() == 0


@shared_loop
async def test_reset_counters_method_zeroes_the_counters(srv: Plc) -> None:
    t = wall_ms()
    p = srv.plc
    await p.apply(ev("m16", "part", t, ("good", 500), good=True))
    await p.apply(ev("m16", "part", t, ("scrap", 20), good=False))
    async with connect(srv.url) as c:
        before = wall_ms()
        await c.get_node(p.folder_id("m16")).call_method(ua.NodeId.from_string(p.node_id("m16", "ResetCounters")))
        assert [m for m, _ in srv.resets] == ["m16"] and before <= srv.resets[0][1] <= wall_ms()
        good = await srv.node(c, "m16", "good").read_data_value()
        assert good.Value is not None and good.Value.Value == 0 and ms(good) == srv.resets[0][1]
        assert await srv.node(c, "m16", "scrap").read_value() == 0
        assert await srv.node(c, "m32", "good").read_value() != 0  # only that machine
        # from then on the counters count parts since the reset, modulo their width
        await p.apply(ev("m16", "part", t + 10, ("good", 503), good=True))
        assert await srv.node(c, "m16", "good").read_value() == 3
        await p.apply(ev("m16", "part", t + 20, ("good", 2), good=True))  # the model's register wrapped
        assert await srv.node(c, "m16", "good").read_value() == (2 - 500) % 65_536


# ---- faults -----------------------------------------------------------------------------------------


@shared_loop
async def test_silence_freezes_values_while_the_server_answers(srv: Plc) -> None:
    p = srv.plc
    async with connect(srv.url) as c:
        node = srv.node(c, "m32", "good")
        old = await node.read_data_value()
        assert old.Value is not None
        p.silence(0.5)
        t = wall_ms()
        await p.apply(ev("m32", "part", t, ("good", 1000), good=True))
        still = await node.read_data_value()  # the server answers, with the old value and time
        assert still.Value == old.Value and ms(still) == ms(old)
        assert isinstance(await c.get_node(ua.NodeId(ua.Int32(2258))).read_value(), datetime)  # CurrentTime

        async def updated() -> bool:
            dv = await node.read_data_value()
            return dv.Value is not None and dv.Value.Value == 1000

        await eventually(updated, "the end of the silence")
        assert ms(await node.read_data_value()) == t  # written when it ended, with the time it changed


@shared_loop
async def test_bad_quality_writes_bad_status_codes_then_good_again(srv: Plc) -> None:
    p = srv.plc
    async with connect(srv.url) as c:
        node = srv.node(c, "m16", "state")
        p.bad_quality(0.6)

        async def status_is(bad: bool) -> bool:
            dv = await node.read_data_value(raise_on_bad_status=False)
            return dv.StatusCode is not None and dv.StatusCode.is_bad() == bad

        await eventually(lambda: status_is(True), "Bad status")
        dv = await node.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode is not None and dv.StatusCode.value == StatusCodes.BadDeviceFailure
        t = wall_ms()
        await p.apply(ev("m16", "state", t, ("state", 1), state="running"))  # written Bad too
        dv = await node.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode is not None and dv.StatusCode.is_bad() and ms(dv) == t
        await eventually(lambda: status_is(False), "Good status after the window")
        dv = await node.read_data_value()
        assert dv.Value is not None and dv.Value.Value == 1 and ms(dv) >= t


@shared_loop
async def test_skew_shifts_source_timestamps(srv: Plc) -> None:
    p = srv.plc
    async with connect(srv.url) as c:
        node = srv.node(c, "m16", "reason")
        p.skew(-5.0, 30, machines=["m16"])
        t = wall_ms()
        await p.apply(ev("m16", "state", t, ("reason", 20), ("state", 3), state="down", reason=20))
        assert ms(await node.read_data_value()) == t - 5000
        p.end_faults()
        await p.apply(ev("m16", "state", t + 1, ("reason", 0), ("state", 1), state="running"))
        assert ms(await node.read_data_value()) == t + 1
    with pytest.raises(ValueError):
        p.skew(1.0, machines=["nope"])


@shared_loop
async def test_restart_gives_a_new_start_time_and_restarts_non_retentive_counters(srv: Plc) -> None:
    p = srv.plc
    t = wall_ms()
    await p.apply(ev("m16", "part", t, ("good", 1234), good=True))
    await p.apply(ev("m16", "part", t, ("scrap", 40), good=False))
    before = Client(srv.url, timeout=5)
    await before.connect()
    try:
        start0 = await before.get_node(ua.NodeId(ua.Int32(2257))).read_value()
        scrap0 = await srv.node(before, "m16", "scrap").read_value()
        assert await srv.node(before, "m16", "good").read_value() != 0
        sub = await before.create_subscription(100, None)
        await sub.subscribe_data_change(srv.node(before, "m16", "good"))
        assert p.server.iserver.subscription_service.subscriptions
        restart = asyncio.create_task(p.restart(0.5), name="restart")
    finally:
        with contextlib.suppress(Exception):
            before.disconnect_socket()
    try:
        await eventually(lambda: asyncio.sleep(0, not p.listening), "going away")
        assert not listening(p.port)
        with pytest.raises((OSError, TimeoutError, UaError)):
            async with Client(srv.url, timeout=1) as c:
                await c.get_namespace_array()
        # parts made while the PLC is away
        await p.apply(ev("m16", "part", t + 10, ("good", 1235), good=True))
        await p.apply(ev("m16", "part", t + 20, ("good", 1236), good=True))
        await p.apply(ev("m16", "part", t + 30, ("scrap", 41), good=False))
    finally:
        await asyncio.wait_for(restart, DEADLINE_S)
    async with connect(srv.url) as c:
        start1 = await c.get_node(ua.NodeId(ua.Int32(2257))).read_value()
        assert start1 > start0 and start1 == p.start_time
        assert await srv.node(c, "m16", "good").read_value() == 2  # parts since the restart
        assert await srv.node(c, "m16", "scrap").read_value() == scrap0 + 1  # retentive: went on
        assert await srv.node(c, "m32", "good").read_value() == 0  # non-retentive, no parts since
    assert p.restarts == 1 and p.listening
    assert not p.server.iserver.subscription_service.subscriptions  # a restarted PLC keeps no sessions


# ---- security ---------------------------------------------------------------------------------------


async def test_secured_simulator_rejects_anonymous_and_accepts_the_generated_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certdir = tmp_path / "certs"
    plant = parse_plant(plant_raw(free_port(), security="sign_and_encrypt", certificate_dir=str(certdir),
                                  users={"operator": "s3cret"}), "<secured plant>")
    plc = OpcUaPlc(plant, "plc")
    await plc.init()
    await plc.apply(ev("m16", "state", wall_ms(), ("good", 42), ("state", 1), state="running", initial=True))
    await plc.start()
    server_cert = certdir / "server-plc.der"
    client_cert, client_key = certdir / "client.der", certdir / "client.pem"
    other = certs.ensure_client_certificate(tmp_path / "other.der", tmp_path / "other.pem")

    async def login(user: str | None, password: str | None, cert: Path | None, key: Path | None) -> Any:
        client = Client(plc.endpoint, timeout=5)
        if user is not None:
            client.set_user(user)
            client.set_password(password or "")
        if cert is not None and key is not None:
            await client.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key),
                                      server_certificate=str(server_cert),
                                      mode=ua.MessageSecurityMode.SignAndEncrypt)
        async with client:
            return await client.get_node(plc.node_id("m16", "good")).read_value()

    try:
        assert server_cert.exists() and client_cert.exists() and client_key.exists()
        assert await login("operator", "s3cret", client_cert, client_key) == 42
        rejected = (UaError, OSError, TimeoutError)
        with pytest.raises(rejected):
            await login(None, None, None, None)  # anonymous, no security
        with pytest.raises(rejected):
            await login(None, None, client_cert, client_key)  # anonymous over a secure channel
        with pytest.raises(rejected):
            await login("operator", "wrong", client_cert, client_key)
        with pytest.raises(rejected):
            await login("operator", "s3cret", other.cert, other.key)  # a certificate it does not trust

        # asyncua's server would let a client that ignores the endpoint list open a session over
        # an unsecured channel; the simulator refuses it, with or without the right password
        def any_endpoint(endpoints: Any, mode: ua.MessageSecurityMode, uri: str) -> ua.EndpointDescription:
            token = ua.UserTokenPolicy(PolicyId="username", TokenType=ua.UserTokenType.UserName)
            return ua.EndpointDescription(EndpointUrl=plc.endpoint, SecurityMode=mode, SecurityPolicyUri=uri,
                                          UserIdentityTokens=[token])

        monkeypatch.setattr(Client, "find_endpoint", staticmethod(any_endpoint))
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await login("operator", "s3cret", None, None)
    finally:
        await plc.stop()
    # the pair is reused by the next start while it is valid
    before = client_cert.read_bytes()
    assert certs.ensure_client_certificate(client_cert, client_key).cert == client_cert
    assert client_cert.read_bytes() == before


# ---- scale mode -------------------------------------------------------------------------------------


def test_scale_plant_is_a_valid_plant() -> None:
    assert parse_scale("3x4") == (3, 4) and parse_scale(" 10 X 50 ") == (10, 50)
    for bad in ("3", "0x4", "3x", "axb"):
        with pytest.raises(ValueError):
            parse_scale(bad)
    raw = scale_plant(3, 4, 12, [5000, 5001])
    plant = parse_plant(raw, "<scale>")
    machines = [m for _, m in plant.machines()]
    assert len(plant.lines) == 3 and len(machines) == 12
    assert all(len(m.signals) == 12 for m in machines)
    assert [len(plant.machines_of_source(s)) for s in plant.sources] == [6, 6]
    assert [s.opcua.endpoint for s in plant.sources.values() if s.opcua] == [
        "opc.tcp://127.0.0.1:5000", "opc.tcp://127.0.0.1:5001"]
    m = machines[0]
    assert m.signals["good"].node == "ns=2;s=line-01.l01-m001.GoodCount" and m.signals["good"].counter_bits == 16
    assert m.signals["spindle_temp"].unit == "°C" and "g012" in m.signals
    assert len({s.node for mm in machines for s in mm.signals.values()}) == 12 * 12
    assert gauges_per_machine(12) == 7 and gauges_per_machine(3) == 0
    assert [n for n, _, _ in signal_specs(2)] == ["good", "state"]
    # the model of one process: its lines, no gauges
    mp = model_plant(plant, ["plc-02"])
    assert [ln.id for ln in mp.lines] == ["line-02", "line-03"]  # plc-02 has the second half of line 2
    assert all(set(mm.signals) <= {"good", "scrap", "state", "reason", "product"} for _, mm in mp.machines())


def test_scale_plan_picks_processes_and_free_ports() -> None:
    assert default_processes(10, 100, 1.0, cpus=64)[0] == 1
    use, need = default_processes(1000, 100, 1.0, cpus=2)
    assert need > 2 and use == 2
    assert default_processes(3, 100_000, 1.0, cpus=64)[0] == 3  # at most one process per machine
    base = free_port_block(3, 20000)
    assert all(port_free(base + i) for i in range(3))
    p = plan("2x5", 8, processes=2, base_port=base)
    assert (p.processes, p.total_machines, p.base_port) == (2, 10, base)
    with pytest.raises(ValueError):
        plan("2x5", 8, processes=11)


def _mieruka(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "mieruka.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=Path(__file__).resolve().parents[2])


async def _read_until(proc: subprocess.Popen[str], marker: str, deadline_s: float = 60.0) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line:
            raise AssertionError(f"exited ({proc.poll()}) before '{marker}':\n{''.join(lines)}")
        lines.append(line)
        if line.startswith(marker):
            return lines
    raise TimeoutError(f"no '{marker}' within {deadline_s}s:\n{''.join(lines)}")


async def test_scale_mode_serves_every_port_and_stops_with_ctrl_c(tmp_path: Path) -> None:
    plant_file = tmp_path / "scale.yaml"
    base = free_port_block(2, 21000)
    proc = _mieruka("simulate", "--scale", "2x3", "--signals-per-machine", "8", "--write-plant", str(plant_file),
                    "--processes", "2", "--base-port", str(base), "--truth", str(tmp_path / "truth.jsonl"))
    try:
        out = await _read_until(proc, "serving")
        plant = load_plant(plant_file)
        ports = sorted(int((s.opcua.endpoint if s.opcua else "").rsplit(":", 1)[1]) for s in plant.sources.values())
        assert ports == [base, base + 1], out
        for (_, m) in (next(iter(plant.machines_of_source(sid))) for sid in plant.sources):
            port = int((plant.sources[m.source].opcua or pytest.fail()).endpoint.rsplit(":", 1)[1])
            async with connect(f"opc.tcp://127.0.0.1:{port}") as c:
                gauge = c.get_node(m.signals["pressure"].node or "")
                first = await gauge.read_data_value()

                async def refreshed(node: Any = gauge, before: ua.DataValue = first) -> bool:
                    dv = await node.read_data_value()
                    return ms(dv) > ms(before)

                await eventually(refreshed, f"a 1 Hz gauge refresh on port {port}", 5.0)
                assert isinstance(await c.get_node(m.signals["good"].node or "").read_value(), int)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, rest
    assert "stopped:" in rest
    assert not listening(base) and not listening(base + 1)
    names = await asyncio.to_thread(lambda: {p.name for p in tmp_path.iterdir()})
    assert names >= {"truth-plc-01.jsonl", "truth-plc-02.jsonl"}


async def test_scale_servers_stop_when_the_parent_dies(tmp_path: Path) -> None:
    base = free_port_block(1, 22000)
    proc = _mieruka("simulate", "--scale", "1x2", "--signals-per-machine", "6", "--write-plant",
                    str(tmp_path / "s.yaml"), "--processes", "1", "--base-port", str(base))
    try:
        await _read_until(proc, "serving")
        assert listening(base)
        proc.kill()  # no chance to stop its children
        proc.wait(10)
        await eventually(lambda: asyncio.to_thread(lambda: not listening(base)), "the orphaned server to stop", 20.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
