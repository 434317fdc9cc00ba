"""Secured MQTT against a real Mosquitto with TLS (a test CA made here, client certificates
required) and a password file: the right login collects; anonymous, a wrong password and a broker
certificate from a CA the source does not trust are refused, each logged once with the reason and
retried with backoff, never a crash. TLS paths and the password file are relative to the plant
file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from collector.sources import SourceOffline
from collector.sources.mqtt import MqttSource
from core.model import Sample
from core.plant import CredentialError, load_plant
from tests.collector.conftest import eventually, running, take
from tests.support.services import free_port, stop, wait_port, which
from tests.support.tls import CertAuthority

USER, PASSWORD = "collector", "tls-S3cret"


@dataclass
class TlsBroker:
    port: int
    folder: Path  # the plant file's folder: ca/ (the test CA and client pair), rogue/ (another CA)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    ca = CertAuthority(tmp_path / "ca")
    server = ca.issue("server", server=True)
    ca.issue("client", server=False)
    CertAuthority(tmp_path / "rogue", "rogue CA")
    passwd = tmp_path / "passwd"
    subprocess.run([which("mosquitto_passwd", "/usr/bin/mosquitto_passwd"), "-b", "-c", str(passwd), USER,
                    PASSWORD], check=True, capture_output=True)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\ncafile {ca.pair.cert}\ncertfile {server.cert}\n"
                    f"keyfile {server.key}\nrequire_certificate true\ntls_version tlsv1.2\n"
                    f"allow_anonymous false\npassword_file {passwd}\n"
                    f"user {pwd.getpwuid(os.geteuid()).pw_name}\nlog_dest stderr\n", encoding="utf-8")
    with open(tmp_path / "mosquitto.log", "ab") as log:
        proc = subprocess.Popen([which("mosquitto", "/usr/sbin/mosquitto"), "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_port(port, proc=proc)
        yield TlsBroker(port, tmp_path)
    finally:
        stop(proc)


def plant_file(b: TlsBroker, *, username: str | None = USER, password: str = PASSWORD,
               ca: str = "ca/ca.pem") -> Path:
    (b.folder / "secrets").mkdir(exist_ok=True)
    (b.folder / "secrets" / "mqtt-password").write_text(password + "\n", encoding="utf-8")
    mqtt_spec: dict[str, Any] = {"host": "127.0.0.1", "port": b.port, "qos": 1,
                                 "tls": {"ca": ca, "cert": "ca/client.pem", "key": "ca/client.key"}}
    if username is not None:
        mqtt_spec.update(username=username, password_file="secrets/mqtt-password")
    raw = {"site": {"id": "tls-test"}, "sources": {"broker": {"mqtt": mqtt_spec}},
           "lines": [{"id": "ln", "machines": [{"id": "m1", "source": "broker", "signals": {
               "temp": {"topic": "tls-test/m1", "field": "temp"}}}]}]}
    path = b.folder / "plant.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def source(path: Path) -> MqttSource:
    plant = load_plant(path)
    broker = plant.sources["broker"].mqtt
    assert broker is not None
    # paho's backoff from 1 s: the test sees a second attempt within seconds
    return MqttSource("broker", broker, [("m1", "temp", plant.lines[0].machines[0].signals["temp"])],
                      reconnect_min_s=1, reconnect_max_s=2)


def publish(b: TlsBroker, topic: str, payload: dict[str, float]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-tls-pub")
    ctx = ssl.create_default_context(cafile=str(b.folder / "ca" / "ca.pem"))
    ctx.load_cert_chain(str(b.folder / "ca" / "client.pem"), str(b.folder / "ca" / "client.key"))
    client.tls_set_context(ctx)
    client.username_pw_set(USER, PASSWORD)
    client.connect("127.0.0.1", b.port)
    client.loop_start()
    try:
        client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_the_right_login_over_tls_collects(tls_broker: TlsBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # TLS files and the password file are found next to the plant file
    src = source(plant_file(tls_broker))
    async with running(src) as got:
        await asyncio.to_thread(publish, tls_broker, "tls-test/m1", {"temp": 21.5})
        [sample] = await take(got, 1)
    assert isinstance(sample, Sample) and sample.value == 21.5 and src.stats.connects == 1


@pytest.mark.parametrize(("case", "reason"), [
    # Mosquitto answers both with CONNACK 5 (MQTT 3.1.1 has no separate code it uses for them)
    ("anonymous", "refused the connection: Not authorized (check username and its password)"),
    ("wrong password", "refused the connection: Not authorized (check username and its password)"),
    ("untrusted broker", "the broker's TLS certificate is not trusted (self-signed certificate in certificate chain"),
])
async def test_refused_logins_are_logged_once_and_retried(case: str, reason: str, tls_broker: TlsBroker,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = {"anonymous": lambda: plant_file(tls_broker, username=None),
            "wrong password": lambda: plant_file(tls_broker, password="not-the-password"),
            "untrusted broker": lambda: plant_file(tls_broker, ca="rogue/ca.pem")}[case]()
    src = source(path)
    caplog.set_level(logging.WARNING, logger="collector.sources.mqtt")
    async with src:
        offline = await asyncio.wait_for(anext(src), timeout=10)
        assert isinstance(offline, SourceOffline), offline
        # retried with backoff, the source still open and waiting
        await eventually(lambda: src.stats.connect_failures >= 3, within_s=20, what="three failed attempts")
    assert src.stats.connects == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "collector.sources.mqtt"]
    assert len(logged) == 1 and reason in logged[0], logged
    assert PASSWORD not in logged[0] and "not-the-password" not in logged[0]


def test_a_tls_file_that_cannot_be_read_is_a_configuration_error(tls_broker: TlsBroker) -> None:
    with pytest.raises(CredentialError, match=r"cannot use tls.ca .*missing\.pem"):
        source(plant_file(tls_broker, ca="missing.pem"))


async def test_the_simulator_publishes_over_tls_with_the_plant_files_settings(
        tls_broker: TlsBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mieruka simulate` reads the same `tls` and password keys: its counts reach the collector."""
    from simulators.live import run_live

    path = plant_file(tls_broker)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["lines"][0]["machines"][0]["signals"]["good"] = {"topic": "tls-test/m1/counts", "field": "good",
                                                          "counter_bits": 32}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.chdir("/")
    plant = load_plant(path)
    broker = plant.sources["broker"].mqtt
    assert broker is not None
    src = MqttSource("broker", broker, [("m1", name, sig) for name, sig in plant.lines[0].machines[0].signals.items()])
    async with running(src) as got:
        await asyncio.wait_for(run_live(plant, 1, duration_s=0.5, truth_path=tls_broker.folder / "truth.jsonl"), 30)
        async with asyncio.timeout(10):
            while not isinstance(first := await got.get(), Sample) or first.signal != "good":
                pass
    assert first.value == 0  # the counter's start, published by the simulator over TLS with the password
