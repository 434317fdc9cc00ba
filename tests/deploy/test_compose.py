"""deploy/compose/: the Compose file against the Compose specification's JSON schema, and what a schema
cannot see (references, health checks, published addresses, secrets, the mieruka commands themselves).
Docker does not run on the machines that build this project: these checks are what is run here."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from core.plant import load_plant
from core.store import open_store
from core.store.influx import InfluxStore
from mieruka.cli import build_parser
from tests.deploy.common import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    MIERUKA_SERVICES,
    ROOT,
    SCHEMAS,
    env_file,
    load_compose,
    project_version,
    variables,
)

ENV = env_file(COMPOSE_DIR / ".env.example")
# published on every interface on purpose: plant devices reach the broker, wall screens the dashboard
PUBLIC = {("mosquitto", 8883), ("dashboard", 8050)}
SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET|KEY", re.I)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(ENV)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What make-secrets.sh makes, run here with the local tools (openssl, mosquitto_passwd, mieruka)."""
    out = tmp_path_factory.mktemp("compose") / "secrets"
    mieruka = Path(sys.executable).with_name("mieruka")
    env = {**os.environ, "SECRETS_DIR": str(out), "MIERUKA": str(mieruka), "PATH": f"/usr/sbin:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(COMPOSE_DIR / "make-secrets.sh")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def validator() -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_the_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    v = validator()
    for doc in (load_compose(), compose):  # as written, and with .env.example's values in
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]
        assert not errors, errors
    # the schema is strict enough to refuse a misspelt key: a check that checks something
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["healthchek"] = broken["services"]["api"].pop("healthcheck")
    assert list(v.iter_errors(broken))


def test_every_variable_has_a_value_in_env_example() -> None:
    used = variables(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert used, "compose.yaml uses no variables: the test reads the wrong file"
    assert used <= set(ENV), f"not in .env.example: {sorted(used - set(ENV))}"
    # and .env.example holds settings, not secrets (those are files in secrets/)
    assert not [k for k, v in ENV.items() if SECRET_WORDS.search(k) and v], ENV


def test_services_have_health_checks_pinned_images_and_no_privileges(compose: dict[str, Any]) -> None:
    assert {"influxdb", "mosquitto", "collector", "api", "dashboard"} <= set(compose["services"])
    for name, svc in compose["services"].items():
        test = svc.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] == "CMD" and len(test) > 1, f"{name}: no health check"
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and re.fullmatch(r"\d+\.\d+(\.\d+)?", tag), f"{name}: image {image} is not pinned to a version"
        assert not svc.get("privileged"), name
        assert svc.get("network_mode") != "host" and svc.get("pid") != "host", name
        assert "cap_add" not in svc, name
    for name in MIERUKA_SERVICES:
        svc = compose["services"][name]
        assert svc["image"] == f"mieruka:{project_version()}", "the image's tag is the project's version"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        build = svc["build"]
        assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile", name
        assert "no-new-privileges:true" in svc["security_opt"], name


def test_published_ports_are_on_loopback_unless_meant_for_the_plant(compose: dict[str, Any]) -> None:
    published = set()
    for name, svc in compose["services"].items():
        for p in svc.get("ports", []):
            host_ip, host_port, container_port = str(p).split(":")
            assert host_ip, f"{name}: {p} names no host address (it would be every interface)"
            published.add((name, int(container_port)))
            if (name, int(container_port)) not in PUBLIC:
                assert host_ip == "127.0.0.1", f"{name}: {p} is reachable from other machines"
            assert host_port == container_port, p
    assert PUBLIC <= published


def test_references_resolve_and_bind_mounts_exist(compose: dict[str, Any], secrets_dir: Path) -> None:
    volumes, secrets = set(compose["volumes"]), compose["secrets"]
    for name, svc in compose["services"].items():
        for s in svc.get("secrets", []):
            assert (s if isinstance(s, str) else s["source"]) in secrets, f"{name}: secret {s} undeclared"
        for d in svc.get("depends_on", {}):
            assert d in compose["services"], f"{name}: depends on unknown {d}"
            assert svc["depends_on"][d]["condition"] == "service_healthy", name
        for v in svc.get("volumes", []):
            source, target = v.split(":")[:2]
            assert target.startswith("/"), v
            if source.startswith("./secrets/"):  # made by make-secrets.sh
                assert (secrets_dir / source.removeprefix("./secrets/")).exists(), f"{name}: {source} not made"
            elif source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} is not in the repository"
            else:
                assert source in volumes, f"{name}: volume {source} undeclared"
    for name, s in secrets.items():
        assert s["file"].startswith("./secrets/"), name
        made = secrets_dir / s["file"].removeprefix("./secrets/")
        assert made.is_file() and made.stat().st_size > 0, f"make-secrets.sh does not make {s['file']}"


def test_no_secret_is_written_in_the_environment(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        mounted = {f"/run/secrets/{s}" for s in svc.get("secrets", [])}
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_WORDS.search(key):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret in clear; use {key}_FILE"
                assert value in mounted, f"{name}: {key}={value} is not one of its secrets"
            assert not re.search(r"://[^/@]*:[^/@]*@", str(value)), f"{name}: {key} has a password in a URL"


def test_mieruka_commands_parse_and_health_checks_probe_their_servers(compose: dict[str, Any]) -> None:
    parser = build_parser()
    ports = {"api": 8000, "dashboard": 8050}
    for name in MIERUKA_SERVICES:
        svc = compose["services"][name]
        args = parser.parse_args(svc["command"])  # the real CLI: a misspelt flag fails here
        test = svc["healthcheck"]["test"]
        if name in ports:
            assert args.port == ports[name] and args.host == "0.0.0.0"
            assert test[1:] == ["python", "-m", "mieruka.probe", f"http://127.0.0.1:{args.port}/healthz"]
        elif name == "collector":
            assert test[1:] == ["python", "-m", "mieruka.probe", f"http://127.0.0.1:{args.metrics_port}/metrics"]
            # the spool lies on the service's volume, so it outlives the container
            mounts = {v.split(":")[1] for v in svc["volumes"]}
            assert any(Path(args.spool_dir).is_relative_to(m) for m in mounts if m.startswith("/var/lib"))
        if hasattr(args, "plant") and args.plant:
            assert f"./plant.yaml:{args.plant}:ro" in svc["volumes"], name
    dash = parser.parse_args(compose["services"]["dashboard"]["command"])
    assert dash.api == "http://api:8000"
    api = parser.parse_args(compose["services"]["api"]["command"])
    assert api.tokens.startswith("/etc/mieruka/api/") and "./secrets/api:/etc/mieruka/api:ro" in \
        compose["services"]["api"]["volumes"]


def test_the_store_url_names_influxdb_and_the_mapped_database(compose: dict[str, Any]) -> None:
    init_env = compose["services"]["influxdb"]["environment"]
    for name in ("collector", "api"):
        env = compose["services"][name]["environment"]
        store = open_store(env["MIERUKA_STORE"])
        assert isinstance(store, InfluxStore), name
        assert (store.host, store.port) == ("influxdb", 8086)
        # the database and user the init script maps and creates are the ones the URL names
        assert store.database == init_env["MIERUKA_INFLUX_DB"] and store.username == init_env["MIERUKA_INFLUX_V1_USER"]
        assert env["MIERUKA_INFLUX_PASSWORD_FILE"] == init_env["MIERUKA_INFLUX_V1_PASSWORD_FILE"]


def test_the_influxdb_init_script_is_mounted_runnable_and_given_what_it_needs(compose: dict[str, Any]) -> None:
    svc = compose["services"]["influxdb"]
    mount = next(v for v in svc["volumes"] if "/docker-entrypoint-initdb.d/" in v)
    source, target = mount.split(":")[:2]
    script = COMPOSE_DIR / source
    # the image runs it with run-parts: executable, named *.sh
    assert target.endswith(".sh") and script.stat().st_mode & stat.S_IXUSR
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text(encoding="utf-8")
    assert "influx v1 dbrp create" in text and "influx v1 auth create" in text
    required = set(re.findall(r"\$\{([A-Z_0-9]+):\?", text))
    exported_by_image = {"DOCKER_INFLUXDB_INIT_BUCKET_ID"}
    assert required - exported_by_image <= set(svc["environment"]), required
    assert svc["environment"]["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    for key in ("DOCKER_INFLUXDB_INIT_PASSWORD_FILE", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE"):
        assert svc["environment"][key].removeprefix("/run/secrets/") in svc["secrets"]


def test_the_plant_is_the_demo_plant_with_container_addresses_and_secrets(compose: dict[str, Any]) -> None:
    plant, demo = load_plant(COMPOSE_DIR / "plant.yaml"), load_plant(ROOT / "deploy" / "plants" / "demo.yaml")
    assert plant.model_dump(exclude={"sources"}) == demo.model_dump(exclude={"sources"})
    collector = compose["services"]["collector"]
    mounted = {f"/run/secrets/{s}" for s in collector["secrets"]}
    broker = plant.sources["broker"].mqtt
    assert broker is not None and broker.host == "mosquitto" and broker.tls is not None
    assert {broker.password_file, broker.tls.ca} <= mounted
    assert broker.port == 8883  # the broker's TLS listener (mosquitto.conf)
    assert re.search(rf"^listener {broker.port}$", (COMPOSE_DIR / "mosquitto" / "mosquitto.conf").read_text(), re.M)
    plc = plant.sources["plc-1"].opcua
    assert plc is not None and plc.endpoint == "opc.tcp://plc-1:4840"
    assert "plc-1" in compose["services"]["simulator"]["networks"]["default"]["aliases"]


def test_make_secrets_keeps_what_exists_and_guards_the_folder(secrets_dir: Path) -> None:
    before = {p: p.read_bytes() for p in secrets_dir.rglob("*") if p.is_file()}
    env = {**os.environ, "SECRETS_DIR": str(secrets_dir), "MIERUKA": "/nonexistent/mieruka"}  # must not be needed
    r = subprocess.run(["bash", str(COMPOSE_DIR / "make-secrets.sh")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "made" not in r.stdout
    assert {p: p.read_bytes() for p in secrets_dir.rglob("*") if p.is_file()} == before
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    tokens = json.loads((secrets_dir / "api" / "tokens.json").read_text())
    assert sorted(t["role"] for t in tokens["tokens"]) == ["operator", "read"]
    assert (secrets_dir / "mosquitto_passwd").read_text().startswith("mieruka:$7$")  # hashed, not clear
    assert (COMPOSE_DIR / ".gitignore").read_text().splitlines()[1:] == ["/secrets/", "/.env"]


def test_token_sh_keeps_the_token_file_readable_for_the_api(secrets_dir: Path, tmp_path: Path) -> None:
    from api.tokens import TokenFile

    env = {**os.environ, "SECRETS_DIR": str(secrets_dir), "MIERUKA": str(Path(sys.executable).with_name("mieruka"))}

    def token_sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(COMPOSE_DIR / "token.sh"), *args], env=env, capture_output=True,
                              text=True, timeout=60)

    made = token_sh("create", "--role", "read", "--name", "hall-2")
    assert made.returncode == 0, made.stderr
    tokens = secrets_dir / "api" / "tokens.json"
    # `mieruka token` writes 0600; the API runs as another user, so token.sh hands it back 0644
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o644
    record = TokenFile(tokens).lookup(made.stdout.strip())
    assert record is not None and (record.name, record.role) == ("hall-2", "read")
    assert token_sh("revoke", "--name", "hall-2").returncode == 0
    assert TokenFile(tokens).lookup(made.stdout.strip()) is None
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o644
    bad = token_sh("revoke", "--name", "nobody")
    assert bad.returncode == 2 and "nobody" in bad.stderr  # mieruka's exit code and sentence come through
    assert token_sh().returncode == 2


def test_the_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(COMPOSE_DIR.rglob("*.sh"))
    assert {p.name for p in scripts} >= {"make-secrets.sh", "token.sh", "init-mieruka.sh"}
    shellcheck = Path(sys.executable).with_name("shellcheck")
    r = subprocess.run([str(shellcheck), "--severity=style", *map(str, scripts)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for p in scripts:
        assert p.stat().st_mode & stat.S_IXUSR, f"{p.name} is not executable"


def test_the_api_settings_in_the_environment_are_ones_the_api_takes(compose: dict[str, Any]) -> None:
    from api.settings import Settings

    env = {k: str(v) for k, v in compose["services"]["api"]["environment"].items()}
    settings = Settings.from_env({**env, "MIERUKA_PLANT": "/etc/mieruka/plant.yaml"})
    assert settings.refresh_period_s == float(ENV["MIERUKA_REFRESH_PERIOD_S"])
    assert settings.cors_origins == ()
