"""What the deployment tests share: the repository's deploy files, loaded as compose and Kubernetes read them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
K8S_DIR = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
MIERUKA_SERVICES = ("collector", "api", "dashboard", "simulator")  # services running the mieruka image

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$\$")


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (comments and blank lines skipped)."""
    env: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path}:{n}: not KEY=VALUE: {line!r}"
        env[key] = value
    return env


def variables(text: str) -> set[str]:
    return {m["name"] for m in _VAR.finditer(text) if m["name"]}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation (``${V}``, ``${V:-default}``, ``${V-default}``, ``${V:?error}``, ``$$``) of
    every string in a loaded compose file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m["name"], m["op"], m["arg"] or ""
        got = env.get(name)
        if op in (":-", "-"):
            return got if got or (op == "-" and got is not None) else arg
        if op in (":?", "?") and not got:
            raise AssertionError(f"compose would stop: {name} is required ({arg})")
        return got or ""

    return _VAR.sub(one, value)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as ``docker compose config`` sees it: YAML merge keys applied and, with ``env``,
    variables interpolated."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return interpolate(raw, env) if env is not None else raw


def k8s_documents(folder: Path = K8S_DIR) -> list[tuple[Path, dict[str, Any]]]:
    """Every object of the manifests in ``folder`` and its subfolders, with its file."""
    docs: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(folder.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((path, doc))
    return docs
