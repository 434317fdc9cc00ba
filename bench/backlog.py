"""What the MQTT benchmarks share (bench/ingest.py, bench/spool_overhead.py): paho clients, the
persistent session a backlog waits in, and publishing that backlog.

Imported by the scripts of this folder as a sibling module (``python bench/<script>.py`` puts
this folder first on ``sys.path``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.services import Mosquitto

# paho numbers messages 1..65535: a publisher keeps far fewer than that unacknowledged, or ids repeat
# (and the broker never acknowledges the ones that were overwritten)
MAX_UNACKED = 20_000


def client(client_id: str, clean: bool = False, **kw: Any) -> mqtt.Client:
    """A paho 2.x client speaking MQTT 3.1.1; persistent session unless ``clean``."""
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                       protocol=mqtt.MQTTv311, **kw)


def register_session(broker: Mosquitto, client_id: str, topic_filter: str = "bench/#") -> None:
    """Create the persistent session ``client_id`` subscribed (QoS 1) to ``topic_filter``, so the
    broker queues what is published there until that client connects again."""
    done = threading.Event()
    c = client(client_id)
    c.on_subscribe = lambda *a: done.set()
    c.on_connect = lambda cl, *a: cl.subscribe(topic_filter, qos=1)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        if not done.wait(10):
            raise RuntimeError("no SUBACK from the broker")
    finally:
        c.disconnect()
        c.loop_stop()


def publish_backlog(broker: Mosquitto, messages: Iterable[tuple[str, str]], n: int, deadline_s: float) -> None:
    """Publish the ``n`` ``(topic, payload)`` pairs of ``messages`` at QoS 1 and return once the
    broker acknowledged every one (``RuntimeError`` after ``deadline_s``)."""
    acked = 0
    lock = threading.Lock()
    done = threading.Event()

    def on_publish(*a: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == n:
                done.set()

    c = client("bench-publisher", clean=True)
    c.max_inflight_messages_set(1000)
    c.on_publish = on_publish
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        end = time.monotonic() + deadline_s
        for i, (topic, payload) in enumerate(messages):
            while i - acked >= MAX_UNACKED and time.monotonic() < end:
                time.sleep(0.001)
            c.publish(topic, payload, qos=1)
        if not done.wait(max(end - time.monotonic(), 1.0)):
            raise RuntimeError(f"only {acked} of {n} messages acknowledged by the broker")
    finally:
        c.disconnect()
        c.loop_stop()
