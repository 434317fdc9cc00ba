"""A source's `password_file` (relative to the plant file) reaches a real Mosquitto that requires
a login: the right password subscribes and receives, a wrong one is refused."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from collector.sources import SourceOffline
from collector.sources.mqtt import MqttSource
from core.model import Sample
from core.plant import load_plant
from tests.collector.conftest import running, take
from tests.support.services import free_port, stop, wait_port, which

USER, PASSWORD = "collector", "mqtt-S3cret"


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[int]:
    """Mosquitto on a free loopback port that accepts only USER with PASSWORD."""
    passwd = tmp_path / "passwd"
    subprocess.run([which("mosquitto_passwd", "/usr/bin/mosquitto_passwd"), "-b", "-c", str(passwd), USER,
                    PASSWORD], check=True, capture_output=True)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
                    f"user {pwd.getpwuid(os.geteuid()).pw_name}\nlog_dest stderr\n", encoding="utf-8")
    with open(tmp_path / "mosquitto.log", "ab") as log:
        proc = subprocess.Popen([which("mosquitto", "/usr/sbin/mosquitto"), "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_port(port, proc=proc)
        yield port
    finally:
        stop(proc)


def plant_file(folder: Path, port: int, password: str) -> Path:
    (folder / "secrets").mkdir(exist_ok=True)
    (folder / "secrets" / "mqtt-password").write_text(password + "\n", encoding="utf-8")
    raw = {
        "site": {"id": "pw-test"},
        "sources": {"broker": {"mqtt": {"port": port, "qos": 1, "username": USER,
                                        "password_file": "secrets/mqtt-password"}}},
        "lines": [{"id": "ln", "machines": [{"id": "m1", "source": "broker", "signals": {
            "temp": {"topic": "pw-test/m1", "field": "temp"}}}]}],
    }
    path = folder / "plant.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def publish(port: int, topic: str, payload: dict[str, float]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-pw-pub")
    client.username_pw_set(USER, PASSWORD)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_password_file_logs_in_and_a_wrong_one_is_refused(auth_broker: int, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # the password file is found next to the plant file, not in the working folder
    plant = load_plant(plant_file(tmp_path, auth_broker, PASSWORD))
    broker = plant.sources["broker"].mqtt
    assert broker is not None
    signals = [("m1", "temp", plant.lines[0].machines[0].signals["temp"])]
    src = MqttSource("broker", broker, signals)
    async with running(src) as got:  # running() waits until subscribed
        await asyncio.to_thread(publish, auth_broker, "pw-test/m1", {"temp": 21.5})
        [sample] = await take(got, 1)
    assert isinstance(sample, Sample) and sample.value == 21.5 and src.stats.connects == 1

    plant = load_plant(plant_file(tmp_path, auth_broker, "wrong-password"))
    broker = plant.sources["broker"].mqtt
    assert broker is not None
    src = MqttSource("broker", broker, signals)
    async with src:  # not running(): it waits for a subscription that must not come
        offline = await asyncio.wait_for(anext(src), timeout=10)
    assert isinstance(offline, SourceOffline) and "refused" in offline.reason, offline
    assert src.stats.connects == 0
