"""`mieruka collect` refuses what it cannot collect, before connecting anywhere (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from core.plant import dump_plant
from tests.e2e.plants import fast_plant


def _collect(tmp_path: Path, plant_text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(plant_text, encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "mieruka.cli", "collect", "--plant", str(plant_file),
                           "--store", f"sqlite:///{tmp_path / 'c.db'}", "--duration", "1", *extra],
                          capture_output=True, text=True, timeout=60)


def test_sparkplug_source_is_refused_with_the_way_out(tmp_path: Path) -> None:
    raw = yaml.safe_load(dump_plant(fast_plant(4840, 1883)))
    raw["sources"]["broker"]["mqtt"].update(payload="sparkplug", group_id="g", edge_node_id="n")
    r = _collect(tmp_path, yaml.safe_dump(raw, allow_unicode=True))
    assert r.returncode == 2, r.stderr
    assert "sparkplug" in r.stderr and "--lines" in r.stderr


def test_unknown_line_is_refused(tmp_path: Path) -> None:
    r = _collect(tmp_path, dump_plant(fast_plant(4840, 1883)), "--lines", "ua,nope")
    assert r.returncode == 2
    assert "unknown line(s) nope" in r.stderr
