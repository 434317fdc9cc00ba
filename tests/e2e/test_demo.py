"""The README's first command: `mieruka demo` brings up a simulated plant end to end.

Within 3 minutes the API shows non-zero throughput for every line over the last 2 minutes of
live data (after the backfill); the wall board in headless Chromium shows every line's name;
Ctrl-C stops it with exit code 0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from selenium.webdriver.support.ui import WebDriverWait

from core.plant import label
from tests.conftest import DEMO_PLANT
from tests.support.browser import chromium
from tests.support.procs import interrupt, mieruka, wait_http, wait_until
from tests.support.services import free_port


async def test_demo_end_to_end(tmp_path: Path) -> None:
    from core.plant import load_plant

    plant = load_plant(DEMO_PLANT)
    api_port, dash_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    proc = mieruka("demo", "--data-dir", str(tmp_path / "data"), "--api-port", str(api_port),
                   "--dashboard-port", str(dash_port), "--duration", "600", log=log)
    api = f"http://127.0.0.1:{api_port}"
    try:
        wait_http(f"{api}/healthz", deadline_s=120, proc=proc)
        live_from = datetime.now(UTC)
        totals: dict[str, int] = {}

        async def every_line_produced_live() -> bool:
            assert proc.poll() is None, log.read_text()
            now = datetime.now(UTC)
            start = max(now - timedelta(minutes=2), live_from)
            async with httpx.AsyncClient(base_url=api, timeout=10) as c:
                for line in plant.lines:
                    r = await c.get(f"/api/v1/lines/{line.id}/throughput",
                                    params={"start": start.isoformat(), "end": now.isoformat(), "bucket": "1m"})
                    assert r.status_code == 200, r.text
                    totals[line.id] = r.json()["total_good"]
            return all(v > 0 for v in totals.values())

        await wait_until(every_line_produced_live, 180, "non-zero live throughput on every line", poll_s=2)

        names = [label(line.name, plant.site.locale, line.id) for line in plant.lines]
        with chromium() as driver:
            driver.get(f"http://127.0.0.1:{dash_port}/")
            WebDriverWait(driver, 60).until(lambda d: all(n in d.find_element("tag name", "body").text for n in names))
            # the demo gives its dashboard an operator token: the operator page offers the reason buttons
            driver.get(f"http://127.0.0.1:{dash_port}/operator/{plant.lines[0].id}")
            WebDriverWait(driver, 60).until(lambda d: d.find_elements("css selector", "#op-reasons .op-reason"))
            assert not driver.find_elements("id", "op-no-token")
        assert interrupt(proc) == 0, log.read_text()
        assert "demo: stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
