"""MqttSource against a real Mosquitto on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.sources import AckPoint, SampleBatch, SourceFailed, SourceOffline
from collector.sources.mqtt import MqttSource, parse_time
from core.model import Sample
from core.plant import MqttBroker, Signal, mqtt_topic_filter_problem
from tests.collector.conftest import Publisher, eventually, running, take, take_samples
from tests.support.services import Mosquitto, mosquitto, subscribe_only_to


def sig(topic: str, field: str, **kw: object) -> Signal:
    return Signal.model_validate({"topic": topic, "field": field, **kw})


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).astimezone(UTC)


async def test_multi_signal_payloads_and_time_units(mosquitto_broker: Mosquitto, publisher: Publisher,
                                                    prefix: str) -> None:
    counts, state = f"{prefix}/m1/counts", f"{prefix}/m1/state"
    signals = [
        ("m1", "good", sig(counts, "good", time_field="ts", time_unit="ms", counter_bits=32)),
        ("m1", "scrap", sig(counts, "scrap", time_field="ts", time_unit="ms", counter_bits=32)),
        ("m1", "state", sig(state, "code", time_field="at", time_unit="iso", map={1: "running", 3: "down"})),
        ("m1", "reason", sig(state, "reason", time_field="at", time_unit="iso")),
        ("m2", "good", sig(f"{prefix}/m2", "g", time_field="t", time_unit="s", counter_bits=16)),
        ("m3", "temp", sig(f"{prefix}/m3", "temp", time_field="t", time_unit="us")),
        ("m4", "temp", sig(f"{prefix}/m4", "temp", time_field="t", time_unit="ns")),
        ("m5", "temp", sig(f"{prefix}/m5", "temp")),  # no time field: receive time
    ]
    src = MqttSource("broker", MqttBroker(port=mosquitto_broker.port, qos=1), signals)
    async with running(src) as got:
        await publisher.publish(counts, {"ts": 1_700_000_000_123, "good": 5, "scrap": 1})
        await publisher.publish(counts, {"ts": 1_700_000_000_456, "good": 6})  # scrap absent: fine
        await publisher.publish(state, {"at": "2026-11-27T09:00:00.250+09:00", "code": 3, "reason": 20})
        await publisher.publish(f"{prefix}/m2", {"t": 1_700_000_001.5, "g": 3})
        await publisher.publish(f"{prefix}/m3", {"t": 1_700_000_002_000_001, "temp": 21})
        await publisher.publish(f"{prefix}/m4", {"t": 1_700_000_003_123_456_789, "temp": "22.5"})
        before = datetime.now(UTC)
        await publisher.publish(f"{prefix}/m5", {"temp": 23.25})
        samples = await take_samples(got, 9)
        after = datetime.now(UTC)
    by = {(s.machine, s.signal, s.value): s for s in samples}
    assert set(by) == {("m1", "good", 5), ("m1", "scrap", 1), ("m1", "good", 6), ("m1", "state", 3),
                       ("m1", "reason", 20), ("m2", "good", 3), ("m3", "temp", 21.0), ("m4", "temp", 22.5),
                       ("m5", "temp", 23.25)}
    assert by[("m1", "good", 5)].time == by[("m1", "scrap", 1)].time == utc("2023-11-14T22:13:20.123+00:00")
    assert by[("m1", "good", 6)].time == utc("2023-11-14T22:13:20.456+00:00")
    assert by[("m1", "state", 3)].time == by[("m1", "reason", 20)].time == utc("2026-11-27T00:00:00.250+00:00")
    assert by[("m2", "good", 3)].time == utc("2023-11-14T22:13:21.500+00:00")
    assert by[("m3", "temp", 21.0)].time == utc("2023-11-14T22:13:22.000001+00:00")
    assert by[("m4", "temp", 22.5)].time == utc("2023-11-14T22:13:23.123456+00:00")  # µs, truncated
    assert before <= by[("m5", "temp", 23.25)].time <= after
    assert isinstance(by[("m1", "good", 5)].value, int) and isinstance(by[("m3", "temp", 21.0)].value, float)
    assert all(s.source == "broker" and s.time.tzinfo is not None for s in samples)
    assert src.stats.errors == {} and src.stats.messages == 7 and src.stats.samples == 9


async def test_malformed_payloads_are_counted_logged_once_and_skipped(
        mosquitto_broker: Mosquitto, publisher: Publisher, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    topic = f"{prefix}/m1/counts"
    signals = [("m1", "good", sig(topic, "good", time_field="ts", time_unit="ms", counter_bits=32)),
               ("m1", "scrap", sig(topic, "scrap", time_field="ts", time_unit="ms", counter_bits=32))]
    src = MqttSource("broker", MqttBroker(port=mosquitto_broker.port, qos=1), signals)
    bad: list[tuple[str, bytes | dict[str, object]]] = [
        ("not_json", b"{oops"),
        ("not_json", b"\xff\xfe"),
        ("not_object", b"[1, 2]"),
        ("not_object", b"42"),
        ("wrong_type", {"ts": 1, "good": "many"}),
        ("wrong_type", {"ts": 1, "good": None}),
        ("missing_field", {"ts": 1}),
        ("missing_field", {"ts": 1, "goood": 3}),
        ("missing_time", {"good": 1}),
        ("missing_time", {"scrap": 1}),
        ("bad_time", {"ts": "yesterday", "good": 1}),
        ("bad_time", {"ts": True, "good": 1}),
        ("bad_value", {"ts": 1, "good": -1}),
        ("bad_value", {"ts": 1, "good": 2**32}),
    ]
    with caplog.at_level("WARNING", logger="collector.sources.mqtt"):
        async with running(src) as got:
            for _, payload in bad:
                await publisher.publish(topic, payload)
            await publisher.publish(topic, {"ts": 1_700_000_000_000, "good": 7, "scrap": "x"})
            [ok] = await take_samples(got, 1)
            await eventually(lambda: src.stats.messages == len(bad) + 1)
    assert (ok.machine, ok.signal, ok.value) == ("m1", "good", 7)
    assert src.stats.errors == {"not_json": 2, "not_object": 2, "wrong_type": 3, "missing_field": 2,
                                "missing_time": 2, "bad_time": 2, "bad_value": 2}
    logged = [r.getMessage() for r in caplog.records if r.name == "collector.sources.mqtt"]
    for kind in src.stats.errors:
        assert sum(f"counted as '{kind}'" in m for m in logged) == 1, (kind, logged)


async def test_resubscribes_after_the_broker_restarts(tmp_path: Path, prefix: str) -> None:
    with mosquitto(tmp_path / "broker") as broker:
        topic = f"{prefix}/m1"
        src = MqttSource("broker", MqttBroker(port=broker.port, qos=1), [("m1", "temp", sig(topic, "temp"))],
                         reconnect_min_s=1, reconnect_max_s=1)
        async with running(src) as got:
            broker.stop()
            await eventually(lambda: src.stats.losses == 1, what="the loss to be noticed")
            broker.start()
            async with asyncio.timeout(15):
                await src.wait_ready()
            pub = Publisher(broker)
            try:
                await pub.publish(topic, {"temp": 1.5})
                offline, s = await take(got, 2)
            finally:
                pub.close()
        # a clean session lost what was published meanwhile: the outage is announced once
        assert isinstance(offline, SourceOffline) and offline.source == "broker"
        assert isinstance(s, Sample) and s.value == 1.5 and src.stats.connects == 2


def test_parse_time_units() -> None:
    assert parse_time(1_700_000_000, "s") == utc("2023-11-14T22:13:20+00:00")
    assert parse_time(1_700_000_000_250, "ms") == utc("2023-11-14T22:13:20.250+00:00")
    assert parse_time(1_700_000_000.25, "s") == utc("2023-11-14T22:13:20.250+00:00")
    assert parse_time("2026-11-27T08:00:00Z", "iso") == utc("2026-11-27T08:00:00+00:00")
    assert parse_time("2026-11-27T08:00:00+09:00", "iso") == utc("2026-11-26T23:00:00+00:00")
    for raw, unit in [("2026-11-27T08:00:00", "iso"), (1, "iso"), ("1", "ms"), (True, "s"), (None, "ms"),
                      (-5, "s"), (10**30, "ns")]:
        with pytest.raises(ValueError):
            parse_time(raw, unit)


# ---- hostile input and a source that cannot work ---------------------------------------------------


async def test_deeply_nested_json_is_a_dead_letter_and_the_source_goes_on(
        mosquitto_broker: Mosquitto, publisher: Publisher, prefix: str, tmp_path: Path) -> None:
    from collector.deadletter import DeadLetters

    topic = f"{prefix}/m1/counts"
    signals = [("m1", "good", sig(topic, "good", time_field="ts", time_unit="ms", counter_bits=32))]
    with DeadLetters(tmp_path / "dead.jsonl", logging.getLogger("test")) as dead:
        src = MqttSource("broker", MqttBroker(port=mosquitto_broker.port, qos=1), signals, dead_letters=dead)
        async with running(src) as got:
            await publisher.publish(topic, b"[" * 1000)
            await publisher.publish(topic, b'{"a":' * 5000)
            await publisher.publish(topic, {"ts": 1_700_000_000_000, "good": 7})
            [ok] = await take_samples(got, 1)
            await eventually(lambda: src.stats.messages == 3)
    assert ok.value == 7
    assert src.stats.errors == {"not_json": 2}
    letters = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [d["payload"] for d in letters] == ["[" * 1000, '{"a":' * 5000]
    assert all("nested too deeply" in d["reason"] for d in letters)


def test_an_invalid_topic_filter_is_refused_when_the_source_is_made() -> None:
    for bad in ("a/#/b", "a/b#", "a/+b/c", "x\x00y"):
        with pytest.raises(ValueError, match="MQTT topic"):
            MqttSource("broker", MqttBroker(port=1883), [("m1", "good", Signal.model_construct(
                topic=bad, field="good", counter_bits=16))])
    assert mqtt_topic_filter_problem("a/+/b/#") is None and mqtt_topic_filter_problem("#") is None


async def test_a_subscription_the_broker_refuses_fails_the_source_loudly(
        tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    conf = subscribe_only_to(tmp_path / "broker", "allowed/#")
    with mosquitto(tmp_path / "broker", extra_conf=conf) as broker:
        src = MqttSource("broker", MqttBroker(port=broker.port, qos=1),
                         [("m1", "good", sig("allowed/x", "good", counter_bits=16)),
                          ("m1", "scrap", sig(f"{prefix}/denied", "scrap", counter_bits=16))])
        with caplog.at_level("ERROR", logger="collector.sources.mqtt"):
            async with src:
                with pytest.raises(SourceFailed, match=f"refused the subscription to {prefix}/denied"):
                    async with asyncio.timeout(10):
                        async for _ in src:
                            pass
    assert any("refused the subscription" in r.getMessage() for r in caplog.records)


async def test_an_exception_in_a_callback_fails_the_source_instead_of_killing_pahos_thread_quietly(
        mosquitto_broker: Mosquitto, publisher: Publisher, prefix: str) -> None:
    topic = f"{prefix}/m1/counts"
    src = MqttSource("broker", MqttBroker(port=mosquitto_broker.port, qos=1),
                     [("m1", "good", sig(topic, "good", counter_bits=32))])

    def boom(*args: object) -> None:
        raise RuntimeError("callback bug")

    src._on_message = boom  # type: ignore[method-assign,assignment]  # our own callback, guarded at __aenter__
    async with src:
        async with asyncio.timeout(10):
            await src.wait_ready()
        await publisher.publish(topic, {"good": 1})
        with pytest.raises(SourceFailed, match="RuntimeError: callback bug"):
            async with asyncio.timeout(10):
                async for _ in src:
                    pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death we provoke
async def test_pahos_thread_dying_fails_the_source(mosquitto_broker: Mosquitto, publisher: Publisher,
                                                   prefix: str) -> None:
    topic = f"{prefix}/m1/counts"
    src = MqttSource("broker", MqttBroker(port=mosquitto_broker.port, qos=1),
                     [("m1", "good", sig(topic, "good", counter_bits=32))])
    async with src:
        async with asyncio.timeout(10):
            await src.wait_ready()

        def unguarded(*args: object) -> None:
            raise RuntimeError("escapes into paho")

        assert src._client is not None
        src._client.on_message = unguarded  # what an unguarded callback did: paho re-raises, its thread ends
        await publisher.publish(topic, {"good": 1})
        with pytest.raises(SourceFailed, match="network thread ended"):
            async with asyncio.timeout(10):
                async for _ in src:
                    pass


async def test_a_backlog_read_ahead_is_acknowledged_in_bulk_and_only_what_was_acknowledged_is_not_redelivered(
        mosquitto_broker: Mosquitto, publisher: Publisher, prefix: str) -> None:
    # the source reads paho's socket ahead (many packets per recv) and acknowledges an AckPoint's
    # messages as one write of PUBACKs: the broker must take exactly those as delivered
    topic, n = f"{prefix}/m1", 600
    signals = [("m1", "good", sig(topic, "v", counter_bits=32))]
    client_id = f"{prefix}-bulk"

    def source() -> MqttSource:
        return MqttSource("broker", MqttBroker(port=mosquitto_broker.port, qos=1), signals, client_id=client_id)

    first = source()
    async with first:  # the persistent session exists before the backlog is published
        async with asyncio.timeout(10):
            await first.wait_ready()
    for i in range(n):
        await publisher.publish(topic, {"v": i})

    acked: set[int] = set()
    seen: list[int] = []
    points = 0
    second = source()
    async with asyncio.timeout(20), second:
        since_ack: list[int] = []
        async for item in second:
            if isinstance(item, SampleBatch):
                seen += [int(x.value) for x in item.samples()]
                since_ack += [int(x.value) for x in item.samples()]
            elif isinstance(item, AckPoint):
                points += 1
                if points == 1:  # the first burst acknowledged, the rest left unacknowledged
                    second.ack(item.token)
                    acked.update(since_ack)
                since_ack = []
            # stop at the end of a burst past the acknowledged one: the broker sends at most its
            # in-flight window of unacknowledged messages, so waiting for all n could wait forever
            if points >= 2 and not since_ack:
                break
    assert seen == list(range(len(seen))), "in order, each once"
    assert 0 < len(acked) < len(seen) <= n and points >= 2, (len(acked), len(seen), points)
    assert second.stats.acks == len(acked)

    again: list[int] = []
    third = source()
    async with third:
        async def redelivered() -> None:
            async for item in third:
                if isinstance(item, SampleBatch):
                    again.extend(int(x.value) for x in item.samples())
                elif isinstance(item, AckPoint):
                    third.ack(item.token)
                if len(again) >= n - len(acked):
                    return
        async with asyncio.timeout(20):
            await redelivered()
        await publisher.publish(topic, {"v": n})  # a marker after the backlog: nothing else was pending
        async with asyncio.timeout(10):
            async for item in third:
                if isinstance(item, AckPoint):
                    third.ack(item.token)  # the broker's in-flight window must open for the marker
                elif isinstance(item, SampleBatch):
                    again.extend(int(x.value) for x in item.samples())
                    if again[-1] == n:
                        break
    assert sorted(again) == [*sorted(set(range(n)) - acked), n]


async def test_messages_reach_on_message_without_pahos_topic_filter_lookup_unless_filters_are_added(
        mosquitto_broker: Mosquitto, publisher: Publisher, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # paho matches every message against its tree of per-topic callbacks, which the source never
    # adds; the source's client skips that lookup, and still honours a callback added by hand
    from paho.mqtt.matcher import MQTTMatcher

    lookups: list[str] = []
    original = MQTTMatcher.iter_match

    def spy(self: MQTTMatcher, topic: str) -> object:
        lookups.append(topic)
        return original(self, topic)

    monkeypatch.setattr(MQTTMatcher, "iter_match", spy)
    topic = f"{prefix}/m1"
    src = MqttSource("broker", MqttBroker(port=mosquitto_broker.port, qos=1),
                     [("m1", "good", sig(topic, "good", counter_bits=32))])
    async with running(src) as got:
        for i in range(5):
            await publisher.publish(topic, {"good": i})
        assert [s.value for s in await take_samples(got, 5)] == [0, 1, 2, 3, 4]
        assert lookups == []
        client = src._client
        assert client is not None
        filtered: list[bytes] = []
        client.message_callback_add(topic, lambda c, u, msg: filtered.append(msg.payload))
        await publisher.publish(topic, {"good": 5})
        await eventually(lambda: len(filtered) == 1, what="the per-topic callback")
    assert lookups == [topic] and json.loads(filtered[0]) == {"good": 5}
