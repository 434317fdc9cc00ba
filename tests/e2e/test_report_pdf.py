"""The shift report end to end: a demo-plant store filled by the fast-forward simulator, `mieruka api`
with a token file on loopback, `mieruka report` as a process printing the PDF with headless Chromium,
and pdftotext (poppler-utils) reading each line's good count and OEE back as the API gives them, a
Japanese line name included; plus the exit codes of a refused request and of an unreachable API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from core.plant import load_plant
from dashboard.report import count, pct
from tests.conftest import DEMO_PLANT
from tests.support.fastforward import fast_forward_db
from tests.support.procs import api_process
from tests.support.services import free_port, which

DAY = "2026-11-27"  # a Friday
AS_OF = "2026-11-27T17:10:00+09:00"  # the day shift (08:00–17:00) has ended
REPORT_TIMEOUT_S = 120


@dataclass
class Api:
    base: str
    token_file: Path


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    d = tmp_path_factory.mktemp("report-pdf")
    plant = load_plant(DEMO_PLANT)
    db, _, _ = fast_forward_db(plant, 9, datetime.fromisoformat("2026-11-27T07:30:00+09:00"),
                               datetime.fromisoformat(AS_OF), d, "report.db")
    tokens, token_file = d / "tokens.yaml", d / "report.token"
    made = subprocess.run([sys.executable, "-m", "mieruka.cli", "token", "create", "--role", "read", "--name",
                           "report-printer", "--tokens", str(tokens)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    token_file.write_text(made.stdout.strip() + "\n", encoding="utf-8")
    with api_process(DEMO_PLANT, f"sqlite:///{db}", d / "api.log", "--tokens", str(tokens)) as base:
        yield Api(base, token_file)


def report(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mieruka.cli", "report", *args], capture_output=True, text=True,
                          timeout=REPORT_TIMEOUT_S, env=env)


def pdftotext(pdf: Path) -> str:
    out = subprocess.run([which("pdftotext", "/usr/bin/pdftotext"), "-enc", "UTF-8", str(pdf), "-"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return re.sub(r"[ \t]+", " ", out)


def test_pdf_shows_each_lines_good_and_oee_as_the_api_gives_them(api: Api, tmp_path: Path) -> None:
    token = api.token_file.read_text(encoding="utf-8").strip()
    rep = httpx.get(f"{api.base}/api/v1/reports/shift", params={"date": DAY, "shift": "day", "as_of": AS_OF},
                    headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert rep.status_code == 200, rep.text
    body = rep.json()
    assert body["complete"] is True and body["site"]["locale"] == "ja"
    out = tmp_path / "nippo.pdf"
    r = report("--api", api.base, "--token-file", str(api.token_file), "--date", DAY, "--shift", "day",
               "--as-of", AS_OF, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:5] == b"%PDF-"
    info = subprocess.run([which("pdfinfo", "/usr/bin/pdfinfo"), str(out)], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert re.search(r"^Pages:\s+2$", info, re.M), info  # a page per line
    size = re.search(r"^Page size:\s+([\d.]+) x ([\d.]+) pts", info, re.M)
    assert size is not None, info
    assert (float(size[1]), float(size[2])) == pytest.approx((842, 595), abs=1.5)  # A4 landscape, in points
    text = pdftotext(out)
    lines = [ln.strip() for ln in text.splitlines()]
    assert "タービンブレード1号ライン" in text and "プレス2号ライン" in text  # Japanese survives the PDF
    assert "日勤" in text and "日報" in text
    for page, ln in zip(text.split("\f"), body["lines"], strict=False):
        assert ln["name"] in page
        assert ln["counts"]["good"] > 100
        assert f"良品 {count(ln['counts']['good'])}" in lines, ln["id"]
        assert f"OEE {pct(ln['figures']['oee'])}" in lines, ln["id"]


def test_refusals_and_an_unreachable_api_have_their_exit_codes(api: Api, tmp_path: Path) -> None:
    out = tmp_path / "x.pdf"
    r = report("--api", api.base, "--token-file", str(api.token_file), "--date", DAY, "--shift", "late",
               "--out", str(out))
    assert r.returncode == 2 and "unknown shift 'late'" in r.stderr and "HTTP 404" in r.stderr, r.stderr
    r = report("--api", api.base, "--token-file", str(api.token_file), "--date", "2026-11-28", "--shift", "day",
               "--out", str(out))
    assert r.returncode == 2 and "does not run on 2026-11-28" in r.stderr, r.stderr
    r = report("--api", api.base, "--date", "27/11/2026", "--shift", "day", "--out", str(out))
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr, r.stderr
    r = report("--api", api.base, "--date", DAY, "--shift", "day", "--out", str(out))  # no token
    assert r.returncode == 2 and "HTTP 401" in r.stderr and "bearer token" in r.stderr, r.stderr
    r = report("--api", f"http://127.0.0.1:{free_port()}", "--date", DAY, "--shift", "day", "--out", str(out))
    assert r.returncode == 1 and "cannot be reached" in r.stderr, r.stderr
    bare = tmp_path / "bare"  # a PATH without Chromium
    bare.mkdir()
    r = report("--api", api.base, "--token-file", str(api.token_file), "--date", DAY, "--shift", "day",
               "--as-of", AS_OF, "--out", str(out), env={**os.environ, "PATH": str(bare)})
    assert r.returncode == 1 and "no Chromium on PATH" in r.stderr and "apt-get install chromium" in r.stderr, r.stderr
    assert not out.exists()
