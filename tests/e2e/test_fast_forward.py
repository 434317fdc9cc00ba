"""Fast-forward end to end: one simulated day of the demo plant (both shifts) → `mieruka import` →
API hourly throughput equals the ledger per bucket, in both stores."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from core.plant import load_plant
from tests.conftest import DEMO_PLANT
from tests.support.ledger import line_totals, read_ledger
from tests.support.procs import api_process

START = datetime.fromisoformat("2026-11-26T08:00:00+09:00")  # a Thursday: day shift, then night shift
END = START + timedelta(days=1)


@pytest.fixture(scope="module")
def simulated_day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ff")
    samples, truth = d / "samples.csv", d / "truth.jsonl"
    r = subprocess.run([sys.executable, "-m", "mieruka.cli", "simulate", "--plant", str(DEMO_PLANT), "--seed", "11",
                        "--from", START.isoformat(), "--to", END.isoformat(), "--samples", str(samples),
                        "--truth", str(truth)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return samples, truth


@pytest.fixture(params=["influxdb", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ff.db'}"
    server = request.getfixturevalue("influxd_server")
    return str(server.url(f"ff_{uuid.uuid4().hex[:8]}"))


def test_imported_day_matches_ledger_per_hour(simulated_day: tuple[Path, Path], store_url: str,
                                              tmp_path: Path) -> None:
    samples, truth = simulated_day
    r = subprocess.run([sys.executable, "-m", "mieruka.cli", "import", "--plant", str(DEMO_PLANT),
                        "--store", store_url, str(samples)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    plant = load_plant(DEMO_PLANT)
    records = read_ledger(truth)
    with api_process(DEMO_PLANT, store_url, tmp_path / "api.log") as base:
        for line in plant.lines:
            resp = httpx.get(f"{base}/api/v1/lines/{line.id}/throughput",
                             params={"start": START.isoformat(), "end": END.isoformat(), "bucket": "1h"}, timeout=30)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["bucket_s"] == 3600
            assert len(body["points"]) == 24
            out = line.output_machines[0].id
            machines = [m.id for m in line.machines]
            for p in body["points"]:
                b0 = datetime.fromisoformat(p["start"].replace("Z", "+00:00"))
                good, scrap = line_totals(records, b0, b0 + timedelta(hours=1), out, machines)
                assert (p["good"], p["scrap"]) == (good, scrap), (line.id, p["start"])
            day_good, day_scrap = line_totals(records, START, END, out, machines)
            assert (body["total_good"], body["total_scrap"]) == (day_good, day_scrap)
            assert day_good > 100  # both shifts produced


def test_import_rejects_bad_rows_and_stores_nothing(simulated_day: tuple[Path, Path], tmp_path: Path) -> None:
    samples, _ = simulated_day
    rows = samples.read_text(encoding="utf-8").splitlines()
    rows.insert(5, "2026-11-26T09:00:00,cnc-1,good,3")  # no offset
    rows.insert(9, "2026-11-26T09:00:00+09:00,cnc-9,good,3")  # unknown machine
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(rows) + "\n", encoding="utf-8")
    db = tmp_path / "bad.db"
    r = subprocess.run([sys.executable, "-m", "mieruka.cli", "import", "--plant", str(DEMO_PLANT),
                        "--store", f"sqlite:///{db}", str(bad)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert f"{bad}:6:" in r.stderr and f"{bad}:10:" in r.stderr, r.stderr
    assert "cnc-9" in r.stderr
    import sqlite3

    if db.exists():
        con = sqlite3.connect(db)
        # schema_history records the store's schema version (core.store.schema), not imported data
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if t != "schema_history"]
        assert all(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] == 0 for t in tables)
        con.close()
