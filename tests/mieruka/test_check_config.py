"""`mieruka check-config`: ok for a valid file; exit 2 and one line per problem naming file, path and fix."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import DEMO_PLANT

Mutation = Callable[[dict[str, Any]], None]


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mieruka.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)


def write_mutated(tmp_path: Path, mutate: Mutation) -> Path:
    data = yaml.safe_load(DEMO_PLANT.read_text(encoding="utf-8"))
    data = copy.deepcopy(data)
    mutate(data)
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_demo_plant_is_ok() -> None:
    r = run_check(DEMO_PLANT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def _set(path: list[Any], value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        node: Any = d
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return mutate


CASES: list[tuple[str, Mutation, str, str]] = [
    ("unknown source", _set(["lines", 0, "machines", 1, "source"], "plc-9"),
     "lines[0].machines[1].source", "unknown source 'plc-9'"),
    ("duplicate machine id", _set(["lines", 1, "machines", 0, "id"], "cnc-1"),
     "lines[1].machines[0].id", "duplicate machine id 'cnc-1'"),
    ("bad time zone", _set(["site", "timezone"], "Asia/Tokio"),
     "site.timezone", "did you mean 'Asia/Tokyo'"),
    ("overlapping shifts", _set(["calendar", "shifts", 1, "start"], "16:00"),
     "calendar.shifts[1]", "overlaps shift 'day'"),
    ("non-numeric counter width", _set(["lines", 0, "machines", 0, "signals", "good", "counter_bits"], "sixteen"),
     "lines[0].machines[0].signals.good.counter_bits", "use 8, 16, 32 or 64"),
    ("misspelt key", _set(["lines", 0, "machines", 0, "signals", "good", "countr_bits"], 16),
     "lines[0].machines[0].signals.good.countr_bits", "did you mean 'counter_bits'"),
    ("state without map", _set(["lines", 1, "machines", 2, "signals", "state", "map"], None),
     "lines[1].machines[2].signals.state.map", "needs 'map'"),
    ("break outside shift", _set(["calendar", "shifts", 0, "breaks", 0], ["18:00", "18:10"]),
     "calendar.shifts[0].breaks[0]", "not inside the shift"),
    ("bad wall-clock time", _set(["calendar", "shifts", 0, "end"], "25:00"),
     "calendar.shifts[0].end", "HH:MM"),
    ("unknown state", _set(["lines", 0, "machines", 0, "signals", "state", "map"], {1: "runing"}),
     "lines[0].machines[0].signals.state.map[1]", "running"),
]


@pytest.mark.parametrize(("name", "mutate", "path", "message"), CASES, ids=[c[0] for c in CASES])
def test_mistake_is_reported(tmp_path: Path, name: str, mutate: Mutation, path: str, message: str) -> None:
    file = write_mutated(tmp_path, mutate)
    r = run_check(file)
    assert r.returncode == 2, (name, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    hit = [ln for ln in lines if ln.startswith(f"{file}: {path}:")]
    assert hit, f"no line for {path} in:\n{r.stderr}"
    assert message in hit[0], hit[0]
    assert "Traceback" not in r.stderr


def test_several_mistakes_one_line_each(tmp_path: Path) -> None:
    def both(d: dict[str, Any]) -> None:
        d["lines"][0]["machines"][1]["source"] = "nowhere"
        d["lines"][1]["machines"][0]["id"] = "cnc-1"
    r = run_check(write_mutated(tmp_path, both))
    assert r.returncode == 2
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 2, r.stderr


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = DEMO_PLANT.read_text(encoding="utf-8").splitlines()
    text[4] = "calendar: [unclosed"
    path = tmp_path / "broken.yaml"
    path.write_text("\n".join(text), encoding="utf-8")
    r = run_check(path)
    assert r.returncode == 2
    assert str(path) in r.stderr and "line " in r.stderr and "YAML syntax error" in r.stderr


def test_missing_file(tmp_path: Path) -> None:
    r = run_check(tmp_path / "nope.yaml")
    assert r.returncode == 2
    assert "nope.yaml" in r.stderr and "cannot read" in r.stderr
