"""Source passwords in the plant file: `password`, `password_env` or `password_file` (at most one),
resolved when the collector connects; OPC UA `security: none` with a password only when allowed."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.plant import CredentialError, PlantFileError, load_plant, parse_plant
from tests.conftest import DEMO_PLANT, ROOT
from tests.support.services import free_port

SECRET = "pl4nt-S3cret"
DEMO_RAW: dict[str, Any] = yaml.safe_load(DEMO_PLANT.read_text(encoding="utf-8"))


def with_sources(opcua: dict[str, Any] | None = None, mqtt: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = copy.deepcopy(DEMO_RAW)
    if opcua is not None:
        raw["sources"]["plc-1"]["opcua"].update(opcua)
    if mqtt is not None:
        raw["sources"]["broker"]["mqtt"].update(mqtt)
    return raw


def write_plant(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_password_env_is_read_when_resolved_not_when_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_PW", raising=False)
    plant = parse_plant(with_sources(mqtt={"username": "collector", "password_env": "MQTT_PW"}))
    # the file is valid on a machine without the variable (check-config on a laptop)...
    broker = plant.sources["broker"].mqtt
    assert broker is not None
    # ...and the collector's connect names what is missing
    with pytest.raises(CredentialError, match="environment variable MQTT_PW"):
        broker.resolve_password()
    monkeypatch.setenv("MQTT_PW", SECRET)
    assert broker.resolve_password() == SECRET
    assert plant.sources["broker"].resolve_password() == SECRET


def test_password_file_is_relative_to_the_plant_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "mqtt").write_text(SECRET + "\n", encoding="utf-8")
    path = write_plant(tmp_path, with_sources(mqtt={"username": "collector", "password_file": "secrets/mqtt"}))
    monkeypatch.chdir(ROOT)  # not the plant file's folder
    plant = load_plant(path)
    assert plant.sources["broker"].resolve_password() == SECRET
    (tmp_path / "secrets" / "mqtt").unlink()
    with pytest.raises(CredentialError, match=f"password_file: cannot read {tmp_path}/secrets/mqtt"):
        plant.sources["broker"].resolve_password()


def test_plain_password_still_works() -> None:
    plant = parse_plant(with_sources(mqtt={"username": "collector", "password": SECRET}))
    assert plant.sources["broker"].resolve_password() == SECRET
    assert parse_plant(DEMO_RAW).sources["broker"].resolve_password() is None


@pytest.mark.parametrize(("mqtt", "message"), [
    ({"username": "u", "password": "x", "password_env": "X"}, "at most one of password, password_env and"),
    ({"username": "u", "password_env": "X", "password_file": "f"}, "at most one of"),
    ({"username": "u", "password_env": "not a name"}, "is not an environment variable name"),
    ({"username": "u", "password_file": ""}, "password_file must be a file path"),
    ({"password_env": "X"}, "a password needs a 'username'"),
])
def test_password_settings_that_cannot_work(mqtt: dict[str, Any], message: str) -> None:
    with pytest.raises(PlantFileError) as e:
        parse_plant(with_sources(mqtt=mqtt), "plant.yaml")
    assert "plant.yaml: sources.broker.mqtt: " in str(e.value) and message in str(e.value), str(e.value)


def test_opcua_password_without_security_is_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    for secret in ({"password": SECRET}, {"password_env": "OPC_PW"}, {"password_file": "opc-pw"}):
        with pytest.raises(PlantFileError) as e:
            parse_plant(with_sources(opcua={"username": "operator", **secret}), "plant.yaml")
        msg = str(e.value)
        assert "plant.yaml: sources.plc-1.opcua: security: none would send the password in clear" in msg, msg
        assert "allow_password_without_security: true" in msg and SECRET not in msg
    # secured: fine without the flag; a user without a password: fine too
    parse_plant(with_sources(opcua={"username": "operator", "password": SECRET, "security": "sign_and_encrypt",
                                    "certificate": "c.der", "private_key": "k.pem"}))
    parse_plant(with_sources(opcua={"username": "operator"}))

    plant = parse_plant(with_sources(opcua={"username": "operator", "password_env": "OPC_PW",
                                            "allow_password_without_security": True}))
    monkeypatch.setenv("OPC_PW", SECRET)
    with caplog.at_level(logging.WARNING):
        assert plant.sources["plc-1"].resolve_password() == SECRET
        assert plant.sources["plc-1"].resolve_password() == SECRET  # the second connect does not warn again
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "travels in clear" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "operator" in warnings[0].getMessage() and SECRET not in caplog.text


def run_collect(plant: Path, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mieruka.cli", "collect", "--plant", str(plant), "--lines", "blade-1",
         "--store", f"sqlite:///{tmp_path}/x.db", "--spool-dir", str(tmp_path / "spool"), "--duration", "0.5"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **env})


def test_collect_warns_at_the_default_log_level_and_names_a_missing_variable(tmp_path: Path) -> None:
    # an endpoint nobody listens on: the collector resolves the password, warns, retries, stops
    raw = with_sources(opcua={"endpoint": f"opc.tcp://127.0.0.1:{free_port()}", "username": "operator",
                              "password_env": "MIERUKA_TEST_OPC_PW", "allow_password_without_security": True})
    plant = write_plant(tmp_path, raw)
    r = run_collect(plant, tmp_path, {"MIERUKA_TEST_OPC_PW": SECRET})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING" in r.stderr and "travels in clear" in r.stderr, r.stderr[-3000:]
    assert SECRET not in r.stderr + r.stdout

    r = run_collect(plant, tmp_path, {})
    assert r.returncode == 2, r.stderr[-3000:]
    assert "sources.plc-1: the environment variable MIERUKA_TEST_OPC_PW (password_env) is not set" in r.stderr
    assert "Traceback" not in r.stderr


def test_mqtt_tls_keys(tmp_path: Path) -> None:
    """`tls: {ca, cert?, key?}`: cert and key go together; paths are relative to the plant file and
    read when the collector connects (a plant that names files of another machine still checks)."""
    with pytest.raises(PlantFileError, match="give 'cert' and 'key' together"):
        parse_plant(with_sources(mqtt={"tls": {"ca": "ca.pem", "cert": "client.pem"}}))
    with pytest.raises(PlantFileError, match="ca"):
        parse_plant(with_sources(mqtt={"tls": {"cert": "c.pem", "key": "k.pem"}}))
    plant = load_plant(write_plant(tmp_path, with_sources(mqtt={"tls": {"ca": "tls/ca.pem"}})))
    broker = plant.sources["broker"].mqtt
    assert broker is not None and broker.tls is not None
    with pytest.raises(CredentialError, match=r"cannot use tls.ca .*tls/ca\.pem"):
        broker.ssl_context()
    assert parse_plant(with_sources()).sources["broker"].mqtt.ssl_context() is None  # type: ignore[union-attr]


def test_opcua_server_trust_keys(tmp_path: Path) -> None:
    """`server_cert_sha256` is 64 hex digits (colons and capitals as openssl prints them are
    fine); `trust_dir` is relative to the plant file."""
    pin = "AB:" * 31 + "AB"
    plant = parse_plant(with_sources(opcua={"server_cert_sha256": pin}))
    assert plant.sources["plc-1"].opcua.server_cert_sha256 == "ab" * 32  # type: ignore[union-attr]
    with pytest.raises(PlantFileError, match="not a SHA-256 fingerprint"):
        parse_plant(with_sources(opcua={"server_cert_sha256": "abc"}))
    with pytest.raises(PlantFileError, match="trust_dir must be a folder path"):
        parse_plant(with_sources(opcua={"trust_dir": " "}))
    plant = load_plant(write_plant(tmp_path, with_sources(opcua={"trust_dir": "pki/servers"})))
    assert plant.sources["plc-1"].opcua.trust_dir_path() == tmp_path / "pki" / "servers"  # type: ignore[union-attr]
