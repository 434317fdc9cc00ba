"""The deployment files' runnable parts, run here for real: the health checks compose runs (against a real
`mieruka dashboard` and `mieruka collect`), the dashboard's /healthz, and the compose Mosquitto config with
the secrets make-secrets.sh makes, in a real mosquitto on loopback ports (TLS, passwords, the health
listener, persistence across a restart)."""

from __future__ import annotations

import json
import os
import pwd
import queue
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from tests.deploy.common import COMPOSE_DIR, ROOT, env_file, load_compose
from tests.support.procs import mieruka, wait_http
from tests.support.services import free_port, stop, wait_port, which

COMPOSE = load_compose(env_file(COMPOSE_DIR / ".env.example"))
DEADLINE_S = 20.0


def health_check(service: str, port: int, container_port: int) -> subprocess.CompletedProcess[str]:
    """The service's compose health check, run here: its `python` is this venv's, its port ours."""
    test = COMPOSE["services"][service]["healthcheck"]["test"][1:]
    assert test[0] == "python"
    argv = [sys.executable, *(a.replace(f":{container_port}/", f":{port}/") for a in test[1:])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_dashboard_healthz_and_its_compose_health_check(tmp_path: Path) -> None:
    port, nowhere = free_port(), free_port()  # the API is down: the dashboard still serves
    proc = mieruka("dashboard", "--api", f"http://127.0.0.1:{nowhere}", "--port", str(port), log=tmp_path / "d.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        assert r.headers["cache-control"] == "no-store"
        ok = health_check("dashboard", port, 8050)
        assert ok.returncode == 0, ok.stderr
    finally:
        stop(proc)
    down = health_check("dashboard", port, 8050)
    assert down.returncode == 1 and f"127.0.0.1:{port}/healthz cannot be reached" in down.stderr


def test_probe_refuses_bad_arguments_and_reports_http_errors(tmp_path: Path) -> None:
    from mieruka.probe import main, probe

    assert main([]) == 2 and main(["ftp://x/"]) == 2 and main(["http://127.0.0.1:1/", "-3"]) == 2
    port = free_port()
    proc = mieruka("dashboard", "--api", f"http://127.0.0.1:{free_port()}", "--port", str(port),
                   log=tmp_path / "d.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        assert main([f"http://127.0.0.1:{port}/healthz", "5"]) == 0
        # a page that fails (the shift report, with the API down: 503) is a failed probe, saying so
        assert main([f"http://127.0.0.1:{port}/report/2026-12-01/day"]) == 1
        assert probe(f"http://127.0.0.1:{port}/report/2026-12-01/day") == \
            f"http://127.0.0.1:{port}/report/2026-12-01/day answered HTTP 503"
    finally:
        stop(proc)


def test_collector_compose_health_check_reads_its_metrics(tmp_path: Path) -> None:
    # the demo plant with its sources on closed loopback ports: the collector runs, reconnecting
    plant = yaml.safe_load((ROOT / "deploy" / "plants" / "demo.yaml").read_text(encoding="utf-8"))
    plant["sources"]["plc-1"]["opcua"]["endpoint"] = f"opc.tcp://127.0.0.1:{free_port()}"
    plant["sources"]["broker"]["mqtt"]["port"] = free_port()
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(yaml.safe_dump(plant, allow_unicode=True), encoding="utf-8")
    metrics = free_port()
    proc = mieruka("collect", "--plant", str(plant_file), "--store", f"sqlite:///{tmp_path / 'm.db'}",
                   "--spool-dir", str(tmp_path / "spool"), "--metrics-port", str(metrics),
                   log=tmp_path / "c.log")
    try:
        wait_http(f"http://127.0.0.1:{metrics}/metrics", proc=proc)
        ok = health_check("collector", metrics, 9464)
        assert ok.returncode == 0, ok.stderr
    finally:
        stop(proc)
    assert health_check("collector", metrics, 9464).returncode == 1


# ---- Mosquitto with the compose config and make-secrets.sh's files ------------------------------------


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mq") / "secrets"
    env = {**os.environ, "SECRETS_DIR": str(out), "MIERUKA": str(Path(sys.executable).with_name("mieruka")),
           "PATH": f"/usr/sbin:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(COMPOSE_DIR / "make-secrets.sh")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return out


class Broker:
    def __init__(self, secrets: Path, data: Path) -> None:
        self.secrets, self.data = secrets, data
        self.tls_port, self.health_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def conf(self) -> Path:
        text = (COMPOSE_DIR / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
        text, n1 = re.subn(r"^listener 8883$", f"listener {self.tls_port} 127.0.0.1", text, flags=re.M)
        text, n2 = re.subn(r"^listener 1883 127\.0\.0\.1$", f"listener {self.health_port} 127.0.0.1", text,
                           flags=re.M)
        assert n1 == n2 == 1, "the compose config's listeners changed: update this test"
        text = text.replace("/run/secrets/", f"{self.secrets}/").replace("/mosquitto/data/", f"{self.data}/")
        text = text.replace("/mosquitto/config/", f"{COMPOSE_DIR / 'mosquitto'}/").replace("log_dest stdout",
                                                                                          "log_dest stderr")
        # started as root, mosquitto would switch to the user `mosquitto`, who cannot read the temp dirs
        text += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
        path = self.data / "mosquitto.conf"
        path.write_text(text, encoding="utf-8")
        return path

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.data / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([which("mosquitto", "/usr/sbin/mosquitto"), "-c", str(self.conf())],
                                         stdout=log, stderr=log)
        wait_port(self.tls_port, proc=self.proc)
        wait_port(self.health_port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


@contextmanager
def broker(secrets: Path, data: Path) -> Iterator[Broker]:
    b = Broker(secrets, data)
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Client:
    """A paho client whose connection result and messages arrive on queues (waited on with deadlines)."""

    def __init__(self, client_id: str, port: int, *, ca: Path | None = None, login: tuple[str, str] | None = None,
                 clean: bool = True, topics: tuple[str, ...] = ()) -> None:
        self.connack: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        if ca is not None:
            ctx = ssl.create_default_context(cafile=str(ca))
            self.c.tls_set_context(ctx)
        if login is not None:
            self.c.username_pw_set(*login)
        self.c.on_connect = lambda c, u, f, rc, p: (self.connack.put(rc),
                                                    [c.subscribe(t, qos=1) for t in topics if not rc.is_failure])
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def result(self) -> Any:
        return self.connack.get(timeout=DEADLINE_S)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_compose_mosquitto_config_tls_passwords_health_listener_and_persistence(secrets: Path, tmp_path: Path) -> None:
    ca = secrets / "mqtt_ca_cert"
    login = ("mieruka", (secrets / "mqtt_password").read_text().strip())
    cert = x509.load_pem_x509_certificate((secrets / "mqtt_server_cert").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "mosquitto" in names  # the host name the compose plant file connects to

    with broker(secrets, tmp_path / "data") as b:
        # no login over TLS: refused; a wrong password: refused; the collector's login: accepted
        anon = Client("anon", b.tls_port, ca=ca)
        assert anon.result().is_failure
        anon.close()
        wrong = Client("wrong", b.tls_port, ca=ca, login=("mieruka", "not-it"))
        assert wrong.result().is_failure
        wrong.close()
        # a persistent session (as the collector's --client-id), then away while a message is published
        sub = Client("collector", b.tls_port, ca=ca, login=login, clean=False, topics=("plant/#",))
        assert not sub.result().is_failure
        pub = Client("plc", b.tls_port, ca=ca, login=login)
        assert not pub.result().is_failure
        pub.c.publish("plant/a", b"1", qos=1).wait_for_publish(DEADLINE_S)
        assert sub.messages.get(timeout=DEADLINE_S) == ("plant/a", b"1")
        # the health listener: anonymous may read $SYS (what the compose health check does) ...
        health = Client("health", b.health_port, topics=("$SYS/broker/uptime",))
        assert not health.result().is_failure
        topic, _ = health.messages.get(timeout=DEADLINE_S)
        assert topic == "$SYS/broker/uptime"
        # ... and publish nothing: its message is dropped, the next one from a login arrives alone
        health.c.publish("plant/a", b"from-health", qos=1).wait_for_publish(DEADLINE_S)
        pub.c.publish("plant/a", b"2", qos=1).wait_for_publish(DEADLINE_S)
        assert sub.messages.get(timeout=DEADLINE_S) == ("plant/a", b"2")
        health.close()
        sub.close()
        pub.c.publish("plant/a", b"while-away", qos=1).wait_for_publish(DEADLINE_S)
        pub.close()
        assert sub.messages.empty()
        b.stop()  # persistence: the session and its queued message are saved at shutdown ...
        assert (tmp_path / "data" / "mosquitto.db").exists()
        b.start()
        back = Client("collector", b.tls_port, ca=ca, login=login, clean=False)
        assert not back.result().is_failure
        assert back.messages.get(timeout=DEADLINE_S) == ("plant/a", b"while-away")  # ... and delivered after
        back.close()
    assert json.loads((secrets / "api" / "tokens.json").read_text())["tokens"]
