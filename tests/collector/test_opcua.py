"""OpcUaSource against a real asyncua server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from collector.deadletter import DeadLetters
from collector.sources import SampleBatch, SourceItem, SourceOffline, SourceOnline, SourceRestarted
from collector.sources.opcua import OpcUaSource
from core.model import Sample, to_ns
from core.plant import OpcUaEndpoint, Signal
from tests.collector.conftest import OpcServer, eventually, running, take


async def test_source_timestamps_and_every_change_in_order(opc_server: OpcServer, prefix: str) -> None:
    good = await opc_server.add(f"{prefix}.Good", ua.VariantType.UInt16, 7)
    temp = await opc_server.add(f"{prefix}.Temp", ua.VariantType.Double, 20.5)
    src = OpcUaSource("plc", OpcUaEndpoint(endpoint=opc_server.url),
                      [("m1", "good", good), ("m1", "spindle_temp", temp)])
    async with running(src) as got:
        initial = await take(got, 2)
        assert {(s.signal, s.value) for s in initial if isinstance(s, Sample)} == {("good", 7),
                                                                                 ("spindle_temp", 20.5)}
        # 30 changes well inside one publishing interval: none may be coalesced away
        base = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
        for i in range(1, 31):
            await opc_server.write(f"{prefix}.Good", 7 + i, source_time=base + timedelta(milliseconds=i))
        changes = await take(got, 30)
    assert all(isinstance(s, Sample) for s in changes)
    samples = [s for s in changes if isinstance(s, Sample)]
    assert [s.value for s in samples] == list(range(8, 38))
    assert [s.time for s in samples] == [base + timedelta(milliseconds=i) for i in range(1, 31)]
    assert all(s.time.tzinfo is not None and s.machine == "m1" and s.signal == "good" and s.source == "plc"
               and s.quality == "good" for s in samples)
    assert src.stats.samples == 32 and src.stats.connects == 1 and src.stats.losses == 0


async def test_quality_from_status_code_and_server_time_fallback(opc_server: OpcServer, prefix: str) -> None:
    node = await opc_server.add(f"{prefix}.Temp", ua.VariantType.Double, 1.0)
    src = OpcUaSource("plc", OpcUaEndpoint(endpoint=opc_server.url), [("m1", "spindle_temp", node)])
    async with running(src) as got:
        await take(got, 1)
        t = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
        await opc_server.write(f"{prefix}.Temp", 2.0, source_time=t, status=StatusCodes.UncertainLastUsableValue)
        await opc_server.write(f"{prefix}.Temp", 3.0, source_time=t + timedelta(seconds=1),
                               status=StatusCodes.BadSensorFailure)
        before = datetime.now(UTC) - timedelta(seconds=1)
        await opc_server.write(f"{prefix}.Temp", 4.0)  # no source timestamp: the server's is used
        a, c = await take(got, 2)
    assert isinstance(a, Sample) and (a.value, a.quality, a.time) == (2.0, "uncertain", t)
    # a Bad status arrives without a value (the server drops it): counted, not yielded
    assert src.stats.errors == {"no_value": 1}
    assert isinstance(c, Sample) and c.value == 4.0 and c.quality == "good" and c.time >= before


async def test_reconnects_and_marks_a_server_restart_before_new_values(opc_server: OpcServer, prefix: str) -> None:
    node = await opc_server.add(f"{prefix}.Good", ua.VariantType.UInt16, 5)
    src = OpcUaSource("plc", OpcUaEndpoint(endpoint=opc_server.url), [("m1", "good", node)],
                      backoff_initial_s=0.1, backoff_max_s=0.5, watchdog_interval_s=0.5)
    async with running(src) as got:
        [first] = await take(got, 1)
        assert isinstance(first, Sample) and first.value == 5
        await opc_server.stop()
        # the PLC restarts and counts on while we cannot see it
        await opc_server.write(f"{prefix}.Good", 9)
        await eventually(lambda: src.stats.losses == 1, what="the loss to be noticed")
        assert not src.stats.connected
        await opc_server.start()
        offline, marker, after = await take(got, 3, within_s=20)
    # the outage is announced once, after what the lost connection delivered, before anything new
    assert isinstance(offline, SourceOffline) and offline.source == "plc"
    assert isinstance(marker, SourceRestarted)
    assert marker.source == "plc" and marker.start_time > marker.previous_start_time
    assert offline.since <= marker.start_time + timedelta(seconds=30)
    assert isinstance(after, Sample) and after.value == 9
    assert src.stats.connects == 2 and src.stats.restarts == 1


async def test_each_connection_is_announced_with_the_start_time_and_a_saved_one_detects_a_restart(
        opc_server: OpcServer, prefix: str) -> None:
    node = await opc_server.add(f"{prefix}.Good", ua.VariantType.UInt16, 5)
    src = OpcUaSource("plc", OpcUaEndpoint(endpoint=opc_server.url), [("m1", "good", node)])
    before = datetime.now(UTC)
    async with running(src, skip=()) as got:
        online, first = await take(got, 2)
    assert isinstance(online, SourceOnline) and online.at >= before and online.start_time is not None
    assert isinstance(first, Sample)
    # a collector restarted with the start time it saved, but the PLC restarted meanwhile
    older = online.start_time - timedelta(hours=1)
    again = OpcUaSource("plc", OpcUaEndpoint(endpoint=opc_server.url), [("m1", "good", node)], start_time=older)
    async with running(again) as got2:
        [restart] = await take(got2, 1)
    assert isinstance(restart, SourceRestarted) and restart.previous_start_time == older


async def test_unreachable_server_is_retried_without_ending_the_iteration(prefix: str) -> None:
    from tests.support.services import free_port

    src = OpcUaSource("plc", OpcUaEndpoint(endpoint=f"opc.tcp://127.0.0.1:{free_port()}"),
                      [("m1", "good", "ns=2;s=x")], backoff_initial_s=0.05, backoff_max_s=0.1)
    got: list[SourceItem] = []

    async def pump() -> None:
        async with src:
            async for item in src:
                got.append(item)

    task = asyncio.create_task(pump())
    try:
        await eventually(lambda: src.stats.connect_failures >= 3, what="three failed attempts")
        assert not task.done() and not src.stats.connected
        # one SourceOffline for the whole outage, however many attempts fail
        assert len(got) == 1 and isinstance(got[0], SourceOffline) and got[0].source == "plc"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_year_9999_source_time_and_a_failing_notification_leave_the_subscription_running(
        opc_server: OpcServer, prefix: str, tmp_path: Path) -> None:
    node = await opc_server.add(f"{prefix}.Good", ua.VariantType.UInt32, 1)
    with DeadLetters(tmp_path / "dead.jsonl", logging.getLogger("test")) as dead:
        src = OpcUaSource("plc", OpcUaEndpoint(endpoint=opc_server.url), [("m1", "good", node)], dead_letters=dead)
        take_item = src._take_item

        def brittle(item: Any, rows: Any) -> None:
            if item.Value.Value.Value == 3:
                raise RecursionError("maximum recursion depth exceeded")
            take_item(item, rows)

        src._take_item = brittle  # type: ignore[method-assign]  # our own seam
        async with running(src) as got:
            await take(got, 1)
            t = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
            await opc_server.write(f"{prefix}.Good", 2, source_time=datetime(9999, 12, 31, tzinfo=UTC))
            await opc_server.write(f"{prefix}.Good", 3, source_time=t)
            await opc_server.write(f"{prefix}.Good", 4, source_time=t + timedelta(seconds=1))
            far, after = await take(got, 2)
    # the source hands the bad clock on as it is (the normalizer refuses it: bad_time)
    assert isinstance(far, Sample) and far.value == 2 and far.time.year == 9999
    assert isinstance(after, Sample) and after.value == 4 and after.time == t + timedelta(seconds=1)
    assert src.stats.errors == {"bad_notification": 1}
    [letter] = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert letter["kind"] == "bad_notification" and "RecursionError" in letter["reason"] and "3" in letter["payload"]


async def test_a_publish_reaches_the_pipeline_as_one_batch_in_order_with_no_task_per_value(
        opc_server: OpcServer, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # asyncua explodes a notification into two objects per value and runs a handler's every
    # notification in a task of its own; the source takes each notification whole, in order
    import asyncua.common.subscription as subscription

    dispatched: list[str] = []
    original = subscription.Subscription._dispatch_to_handler

    async def spy(self: Any, event: Any) -> None:
        dispatched.append(type(event).__name__)
        await original(self, event)

    monkeypatch.setattr(subscription.Subscription, "_dispatch_to_handler", spy)
    good = await opc_server.add(f"{prefix}.Good", ua.VariantType.UInt16, 1)
    temp = await opc_server.add(f"{prefix}.Temp", ua.VariantType.Double, 0.5)
    # a long publishing interval: the writes below land in few publishes
    src = OpcUaSource("plc", OpcUaEndpoint(endpoint=opc_server.url),
                      [("m1", "good", good, Signal.model_validate({"node": good})),
                       ("m1", "spindle_temp", temp, Signal.model_validate({"node": temp}))],
                      publishing_interval_ms=1000)
    batches: list[SampleBatch] = []

    async def pump() -> None:
        async with src:
            async for item in src:
                assert isinstance(item, SampleBatch | SourceOnline), item
                if isinstance(item, SampleBatch):
                    batches.append(item)

    task = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(10):
            await src.wait_ready()
        assert src.whole_notifications
        base = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
        for i in range(2, 32):
            name, value = (f"{prefix}.Good", i) if i % 2 else (f"{prefix}.Temp", i + 0.25)
            await opc_server.write(name, value, source_time=base + timedelta(milliseconds=i))
        await eventually(lambda: sum(len(b.rows) for b in batches) == 32, what="the initial values and 30 changes")
        # a gauge that is not a finite number is refused, as coerce_value refuses it
        await opc_server.write(f"{prefix}.Temp", float("nan"), source_time=base + timedelta(milliseconds=40))
        await opc_server.write(f"{prefix}.Good", 99, source_time=base + timedelta(milliseconds=41))
        await eventually(lambda: sum(len(b.rows) for b in batches) == 33, what="the change after the NaN")
        assert src.stats.errors == {"wrong_type": 1}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    rows = [r for b in batches for r in b.rows]
    # each signal's changes in order (a publish groups them by monitored item, not by time)
    for signal, initial, changes in (("good", 1, [(i, i) for i in range(3, 32, 2)] + [(99, 41)]),
                                     ("spindle_temp", 0.5, [(i + 0.25, i) for i in range(2, 32, 2)])):
        mine = [r for r in rows if r[1] == signal]
        assert mine[0][2] == initial
        assert [(v, t, m, q) for m, _, v, t, q in mine[1:]] == [
            (v, to_ns(base) + i * 1_000_000, "m1", "good") for v, i in changes]
    assert all(b.source == "plc" for b in batches) and src.stats.samples == 33
    assert len(batches) < len(rows)  # a publish of many values is one item, not one each
    assert "DataChangeEvent" not in dispatched, dispatched
