"""deploy/k8s/: every manifest against the Kubernetes schemas (kubernetes-validate, strict: an unknown field
fails), and the plant layout they describe: one collector per partition of the plant's lines, the API as
replicas behind a Service on the shared InfluxDB, probes on /healthz, the plant from a ConfigMap and
tokens from Secrets. No cluster runs here: these checks are what is run."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from core.plant import load_plant
from core.store import open_store
from core.store.influx import InfluxStore
from mieruka.cli import build_parser
from tests.deploy.common import K8S_DIR, ROOT, k8s_documents, load_compose, project_version

KUBERNETES = "1.30"  # the oldest Kubernetes the manifests are checked against (policy/v1, restricted PSA)
DOCS = k8s_documents()
APPLIED = [(p, d) for p, d in DOCS if p.parent == K8S_DIR]  # `kubectl apply -f deploy/k8s/` (not recursive)


def objects(kind: str, docs: list[tuple[Path, dict[str, Any]]] = DOCS) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in docs if d["kind"] == kind}


def deployments(component: str) -> dict[str, dict[str, Any]]:
    return {n: d for n, d in objects("Deployment").items()
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == component}


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def args_of(dep: dict[str, Any]) -> Any:
    return build_parser().parse_args(container(dep)["args"])  # the real CLI: a misspelt flag fails here


def mounts(dep: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mount path -> (volumeMount, volume)"""
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: (m, vols[m["name"]]) for m in container(dep)["volumeMounts"]}


def plant_of_configmap() -> Any:
    cm = objects("ConfigMap")["mieruka-plant"]
    return cm["data"]["plant.yaml"]


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("k8s") / "plant.yaml"
    path.write_text(plant_of_configmap(), encoding="utf-8")
    return load_plant(path)


@pytest.mark.parametrize("path,doc", DOCS, ids=[f"{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in DOCS])
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises naming the field
    assert doc["metadata"]["namespace" if doc["kind"] != "Namespace" else "name"] == "mieruka", path


def test_the_validation_is_strict_and_offline() -> None:
    api = copy.deepcopy(objects("Deployment")["api"])
    api["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, KUBERNETES, strict=True)
    api = copy.deepcopy(objects("Deployment")["api"])
    api["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, KUBERNETES, strict=True)


def test_one_collector_per_partition_covers_every_line_once(plant: Any) -> None:
    collectors = deployments("collector")
    assert len(collectors) >= 2, "a plant layout has several partitions"
    seen: dict[str, str] = {}
    client_ids = set()
    for name, dep in collectors.items():
        args = args_of(dep)
        assert args.command == "collect" and args.lines, f"{name}: a collector of a partition names its --lines"
        for line in args.lines.split(","):
            assert line not in seen, f"line {line} is collected by {seen[line]} and {name}"
            seen[line] = name
        client_ids.add(args.client_id)
        # one replica at a time on its own spool: Recreate, never two pods on one claim
        assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate", name
        spool_mount = next((m, v) for path, (m, v) in mounts(dep).items()
                           if Path(args.spool_dir).is_relative_to(path) and "persistentVolumeClaim" in v)
        claim = spool_mount[1]["persistentVolumeClaim"]["claimName"]
        assert claim in objects("PersistentVolumeClaim"), f"{name}: no PersistentVolumeClaim {claim}"
        claims_used = [d for d in collectors.values() if any(
            v.get("persistentVolumeClaim", {}).get("claimName") == claim for _, v in mounts(d).values())]
        assert len(claims_used) == 1, f"{claim} is shared by several collectors"
        probe = container(dep)["livenessProbe"]["httpGet"]
        ports = {p["name"]: p["containerPort"] for p in container(dep)["ports"]}
        assert ports[probe["port"]] == args.metrics_port and args.metrics_host == "0.0.0.0"
    assert set(seen) == {ln.id for ln in plant.lines}, "the partitions must cover every line of the plant"
    assert len(client_ids) == len(collectors) and None not in client_ids, "each collector its own MQTT client id"


def test_the_api_runs_replicas_behind_a_service_on_the_shared_store() -> None:
    api = objects("Deployment")["api"]
    assert api["spec"]["replicas"] >= 2
    args = args_of(api)
    assert args.command == "api" and args.host == "0.0.0.0" and args.store is None
    c = container(api)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz" and ports[c[probe]["httpGet"]["port"]] == args.port
    service = objects("Service")["api"]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
    # the store URL comes from a Secret and names InfluxDB: several replicas cannot share a SQLite file
    env = {e["name"]: e for e in c["env"]}
    ref = env["MIERUKA_STORE"]["valueFrom"]["secretKeyRef"]
    example = objects("Secret")[ref["name"]]["stringData"][ref["key"]]
    assert isinstance(open_store(example), InfluxStore)
    assert not any("sqlite" in str(a) for a in c["args"])
    pdb = objects("PodDisruptionBudget")["api"]
    assert 1 <= pdb["spec"]["minAvailable"] < api["spec"]["replicas"]


def test_tokens_and_passwords_come_from_secrets_and_the_plant_from_the_configmap() -> None:
    secrets = objects("Secret")
    for name, dep in objects("Deployment").items():
        args, m = args_of(dep), mounts(dep)
        files = {"--plant": getattr(args, "plant", None), "--tokens": getattr(args, "tokens", None),
                 "--token-file": getattr(args, "token_file", None),
                 "--operator-token-file": getattr(args, "operator_token_file", None)}
        env = {e["name"]: e.get("value") for e in container(dep).get("env", [])}
        if "MIERUKA_INFLUX_PASSWORD_FILE" in env:
            files["MIERUKA_INFLUX_PASSWORD_FILE"] = env["MIERUKA_INFLUX_PASSWORD_FILE"]
        for what, path in files.items():
            if path is None:
                continue
            hit = next(((mnt, vol) for mp, (mnt, vol) in m.items() if path == mp or Path(path).is_relative_to(mp)),
                       None)
            assert hit is not None, f"{name}: {what} {path} is not mounted"
            mnt, vol = hit
            if what == "--plant":
                assert vol["configMap"]["name"] == "mieruka-plant" and mnt["subPath"] == "plant.yaml"
            else:
                secret = vol["secret"]["secretName"]
                assert secret in secrets, f"{name}: {what} from an unknown Secret {secret}"
                key = Path(path).name if "subPath" not in mnt else mnt["subPath"]
                assert key in secrets[secret]["stringData"], f"{name}: Secret {secret} has no key {key}"
        for v in dep["spec"]["template"]["spec"]["volumes"]:
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets
            if "configMap" in v:
                assert v["configMap"]["name"] in objects("ConfigMap")
        # a password is a file from a Secret, never an environment value
        assert all("PASSWORD" not in e["name"] or e["name"].endswith("_FILE") for e in container(dep).get("env", []))
    # the tokens the API accepts are the Secret's file, mounted as a folder so that updates reach the pod
    api_tokens = mounts(objects("Deployment")["api"])["/etc/mieruka/api"][0]
    assert "subPath" not in api_tokens
    # the example Secrets are not applied with the rest
    assert not objects("Secret", APPLIED)


def test_the_plant_file_secrets_are_mounted_where_the_plant_says(plant: Any) -> None:
    for name, dep in deployments("collector").items():
        lines = set(args_of(dep).lines.split(","))
        m = mounts(dep)
        for source_id in {mach.source for ln, mach in plant.machines() if ln.id in lines}:
            mqtt = plant.sources[source_id].mqtt
            if mqtt is None:
                continue
            for path in filter(None, (mqtt.password_file, mqtt.tls.ca if mqtt.tls else None)):
                folder = Path(path).parent
                assert str(folder) in m and "secret" in m[str(folder)][1], f"{name}: {path} is not mounted"
                key = Path(path).name
                assert key in objects("Secret")[m[str(folder)][1]["secret"]["secretName"]]["stringData"]


def test_the_dashboard_reads_the_api_service_and_answers_probes() -> None:
    dash = objects("Deployment")["dashboard"]
    args = args_of(dash)
    assert args.command == "dashboard" and args.host == "0.0.0.0"
    api_port = objects("Service")["api"]["spec"]["ports"][0]["port"]
    assert args.api in (f"http://api:{api_port}", f"http://api.mieruka.svc:{api_port}")
    c = container(dash)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz" and ports[c[probe]["httpGet"]["port"]] == args.port
    svc = objects("Service")["dashboard"]
    assert svc["spec"]["selector"].items() <= dash["spec"]["template"]["metadata"]["labels"].items()


def test_pods_run_the_project_image_unprivileged() -> None:
    compose_image = load_compose({})["services"]["api"]["image"]
    for name, dep in objects("Deployment").items():
        spec = dep["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        c = container(dep)
        assert c["image"] == f"mieruka:{project_version()}" == compose_image, name
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert "limits" in c["resources"] and "requests" in c["resources"], name


def test_the_configmap_plant_is_the_demo_plant_with_plant_network_addresses(plant: Any) -> None:
    demo = load_plant(ROOT / "deploy" / "plants" / "demo.yaml")
    assert plant.model_dump(exclude={"sources"}) == demo.model_dump(exclude={"sources"})
    assert set(plant.sources) == set(demo.sources)
