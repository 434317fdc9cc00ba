"""`mieruka collect` refuses what it cannot collect, before connecting anywhere (exit 2); its
metrics and `mieruka status` tell a person what it is doing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from core.plant import dump_plant
from tests.e2e.plants import fast_plant
from tests.support.procs import interrupt, mieruka, wait_http
from tests.support.services import free_port


def _collect(tmp_path: Path, plant_text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(plant_text, encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "mieruka.cli", "collect", "--plant", str(plant_file),
                           "--store", f"sqlite:///{tmp_path / 'c.db'}", "--duration", "1",
                           "--spool-dir", str(tmp_path / "spool"), *extra],
                          capture_output=True, text=True, timeout=60)


def test_two_signals_on_one_sparkplug_metric_are_refused(tmp_path: Path) -> None:
    """A Sparkplug B source is collected now; one that cannot be read unambiguously is refused."""
    raw = yaml.safe_load(dump_plant(fast_plant(4840, 1883)))
    raw["sources"]["broker"]["mqtt"].update(payload="sparkplug", group_id="g", edge_node_id="n")
    for line in raw["lines"]:
        for m in line["machines"]:
            if m["source"] == "broker":
                for name, sig in m["signals"].items():
                    sig.pop("topic", None), sig.pop("field", None), sig.pop("time_field", None)
                    sig["metric"] = "Counts/Good" if name in ("good", "scrap") else name
    r = _collect(tmp_path, yaml.safe_dump(raw, allow_unicode=True))
    assert r.returncode == 2, r.stderr
    assert "both Sparkplug metric 'Counts/Good'" in r.stderr


def test_unknown_line_is_refused(tmp_path: Path) -> None:
    r = _collect(tmp_path, dump_plant(fast_plant(4840, 1883)), "--lines", "ua,nope")
    assert r.returncode == 2
    assert "unknown line(s) nope" in r.stderr


def test_a_spool_held_by_another_collector_is_refused(tmp_path: Path) -> None:
    from collector.spool import Spool

    with Spool(tmp_path / "spool"):
        r = _collect(tmp_path, dump_plant(fast_plant(free_port(), free_port())))
    assert r.returncode == 2, r.stderr
    assert "--spool-dir" in r.stderr and str(tmp_path / "spool") in r.stderr


def test_a_spool_bound_must_be_positive(tmp_path: Path) -> None:
    r = _collect(tmp_path, dump_plant(fast_plant(free_port(), free_port())), "--spool-max-mb", "0")
    assert r.returncode == 2 and "--spool-max-mb" in r.stderr


def test_status_reads_a_running_collectors_metrics(tmp_path: Path) -> None:
    """Sources that cannot be reached: the collector runs on, its machines go offline, and
    `mieruka status` says so from the metrics endpoint."""
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(dump_plant(fast_plant(free_port(), free_port())), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = mieruka("collect", "--plant", str(plant_file), "--store", f"sqlite:///{tmp_path / 'c.db'}",
                   "--spool-dir", str(tmp_path / "spool"), "--metrics-port", str(port), "--duration", "60",
                   log=tmp_path / "collect.log")
    try:
        wait_http(url, 30, proc)
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run([sys.executable, "-m", "mieruka.cli", "status", "--metrics", url],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            # the OPC UA line's machines are offline (the MQTT source has a persistent session: no gap)
            if "offline" in r.stdout and "NO" in r.stdout:
                break
            assert time.monotonic() < deadline, r.stdout
            time.sleep(0.2)
        assert "plc" in r.stdout and "broker" in r.stdout and "offline facts" in r.stdout
    finally:
        assert interrupt(proc) == 0, (tmp_path / "collect.log").read_text()
    gone = subprocess.run([sys.executable, "-m", "mieruka.cli", "status", "--metrics", url],
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and url in gone.stderr


def test_a_tls_file_that_cannot_be_read_is_refused_at_start(tmp_path: Path) -> None:
    raw = yaml.safe_load(dump_plant(fast_plant(free_port(), free_port())))
    raw["sources"]["broker"]["mqtt"]["tls"] = {"ca": "no-such-ca.pem"}
    r = _collect(tmp_path, yaml.safe_dump(raw, allow_unicode=True))
    assert r.returncode == 2, r.stderr
    assert "cannot use tls.ca" in r.stderr and "no-such-ca.pem" in r.stderr
