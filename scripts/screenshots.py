"""Regenerate the README's dashboard screenshots from the demo.

    .venv/bin/python scripts/screenshots.py [--out docs]

Starts ``mieruka demo`` (loopback only, free ports, a temporary data dir) as a subprocess, waits
for the API's ``/healthz`` and for non-zero throughput on every line, takes 1920x1080 screenshots
with headless Debian Chromium through Debian's chromedriver (never a downloaded browser), then
stops the demo with Ctrl-C and waits for it to exit. Writes:

- ``wallboard-ja.png``: the wall board in Japanese;
- ``wallboard-en.png``: the wall board in English;
- ``wallboard-kiosk-line.png``: a wall screen's single-line view (``?kiosk=1&rotate=30&lines=..``);
- ``line-ja.png``, ``line-en.png``: the line view (``/line/<id>``) in each language;
- ``machine-ja.png``, ``machine-en.png``: the machine view (``/machine/<id>``) in each language;
- ``operator-ja.png``, ``operator-en.png``: the operator page (``/operator/<line>``) on a 1280x800
  tablet, in each language (the demo gives its dashboard an operator token).
- ``report-ja.png``: the printable shift report (``/report/<date>/<shift>``) of the running shift, so far.

``--only report`` (or ``board``, ``views``, ``operator``) takes only those.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.browser import start_chromium  # noqa: E402
from tests.support.services import free_port  # noqa: E402

WIDTH, HEIGHT = 1920, 1080
TABLET_WIDTH, TABLET_HEIGHT = 1280, 800
START_DEADLINE_S = 180.0
PAGE_DEADLINE_S = 60.0

# the board is ready when every tile has a non-zero count and a drawn chart, and no banner shows
BOARD_READY = """
const tiles = Array.from(document.querySelectorAll('.tile'));
const banner = document.getElementById('banner');
const good = t => Number((t.querySelector('.value.good') || {}).textContent?.replace(/,/g, '') || 0);
return tiles.length > 0 && banner !== null && banner.offsetParent === null
  && tiles.every(t => good(t) > 0 && t.querySelector('.chart .main-svg .bars') !== null);
"""
# a line or machine view is ready when its head shows and every chart is drawn, and no banner shows
VIEW_READY = """
const banner = document.getElementById('banner');
const head = document.querySelector('.linehead, .machinehead');
const charts = Array.from(document.querySelectorAll('.charts .chart'));
return head !== null && charts.length > 0 && banner !== null && banner.offsetParent === null
  && charts.every(c => c.querySelector('.main-svg') !== null);
"""

# the operator page is ready when its reason buttons and its stop list show, and no banner shows
OPERATOR_READY = """
const banner = document.getElementById('banner');
return document.querySelectorAll('#op-reasons .op-reason').length > 0
  && document.querySelectorAll('#op-stops > *').length > 0 && banner !== null && banner.offsetParent === null;
"""


def wait_for(what: str, deadline_s: float, proc: subprocess.Popen[bytes], cond: object) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo exited with {proc.returncode} before {what}")
        try:
            if callable(cond) and cond():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"not within {deadline_s:.0f} s: {what}")


def all_lines_counting(api: str) -> bool:
    lines = httpx.get(f"{api}/api/v1/lines", timeout=5).json()
    for line in lines:
        r = httpx.get(f"{api}/api/v1/lines/{line['id']}/throughput", params={"shift": "current", "bucket": "1h"},
                      timeout=5)
        if r.status_code != 200 or int(r.json()["total_good"]) <= 0:
            return False
    return bool(lines)


def shoot(driver: webdriver.Chrome, url: str, out: Path, ready: str = BOARD_READY) -> None:
    driver.get(url)
    WebDriverWait(driver, PAGE_DEADLINE_S, poll_frequency=0.5).until(lambda d: d.execute_script(ready))
    # let the next refresh land too, so the picture is a settled page, not the first paint
    tick = driver.execute_script("return document.getElementById('header-clock').textContent")
    WebDriverWait(driver, PAGE_DEADLINE_S, poll_frequency=0.5).until(
        lambda d: d.execute_script("return document.getElementById('header-clock').textContent") != tick
        and d.execute_script(ready))
    out.write_bytes(driver.get_screenshot_as_png())
    print(f"screenshots: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} "
          f"({out.stat().st_size // 1024} KB)", flush=True)


REPORT_READY = "return document.querySelectorAll('.sheet').length > 0 && document.fonts.status === 'loaded';"
# the printed page is A4 landscape (297 mm ≈ 1123 px at 96 dpi); the screen shows it as a sheet on grey
REPORT_WIDTH, REPORT_HEIGHT = 1180, 860


def shoot_report(driver: webdriver.Chrome, api: str, board: str, out: Path) -> None:
    """The running shift's report page: a plain HTML page, ready once its sheets and fonts are."""
    shift = httpx.get(f"{api}/api/v1/shifts/current", timeout=5).json()["shift"]
    if shift is None:
        raise RuntimeError("no shift runs in the demo; the report screenshot needs one")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": REPORT_WIDTH, "height": REPORT_HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    try:
        driver.get(f"{board}/report/{shift['day']}/{shift['id']}?lang=ja")
        WebDriverWait(driver, PAGE_DEADLINE_S, poll_frequency=0.5).until(lambda d: d.execute_script(REPORT_READY))
        out.write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    print(f"screenshots: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} "
          f"({out.stat().st_size // 1024} KB)", flush=True)


def stop_demo(proc: subprocess.Popen[bytes]) -> int:
    """Ctrl-C the demo and wait for it to exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go (default: docs/)")
    ap.add_argument("--kiosk-line", default="blade-1", help="the line of the kiosk single-line view")
    ap.add_argument("--line", default="blade-1", help="the line of the line view")
    ap.add_argument("--machine", default="cnc-1", help="the machine of the machine view")
    ap.add_argument("--only", action="append", choices=["board", "views", "report", "operator"], default=None,
                    help="take only these screenshots (repeatable; default: all)")
    args = ap.parse_args(argv)
    only = set(args.only or ["board", "views", "report", "operator"])
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    api_port, dash_port = free_port(), free_port()
    api, board = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{dash_port}"
    with tempfile.TemporaryDirectory(prefix="mieruka-screenshots-") as tmp:
        log_path = Path(tmp) / "demo.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mieruka.cli", "demo", "--data-dir", str(Path(tmp) / "data"),
                 "--api-port", str(api_port), "--dashboard-port", str(dash_port), "--duration", "300"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_for("the API answered /healthz", START_DEADLINE_S, proc,
                     lambda: httpx.get(f"{api}/healthz", timeout=2).status_code == 200)
            wait_for("every line counted good parts", START_DEADLINE_S, proc, lambda: all_lines_counting(api))
            driver = start_chromium(WIDTH, HEIGHT, exact_viewport=True, hide_scrollbars=True)
            try:
                if "board" in only:
                    shoot(driver, f"{board}/?lang=ja", out / "wallboard-ja.png")
                    shoot(driver, f"{board}/?lang=en", out / "wallboard-en.png")
                    shoot(driver, f"{board}/?kiosk=1&rotate=30&lang=ja&lines={args.kiosk_line}",
                          out / "wallboard-kiosk-line.png")
                if "views" in only:
                    for lang in ("ja", "en"):
                        shoot(driver, f"{board}/line/{args.line}?lang={lang}", out / f"line-{lang}.png", VIEW_READY)
                        shoot(driver, f"{board}/machine/{args.machine}?lang={lang}", out / f"machine-{lang}.png",
                              VIEW_READY)
                if "report" in only:
                    shoot_report(driver, api, board, out / "report-ja.png")
            finally:
                driver.quit()
            if "operator" in only:
                tablet = start_chromium(TABLET_WIDTH, TABLET_HEIGHT, exact_viewport=True, hide_scrollbars=True)
                try:
                    for lang in ("ja", "en"):
                        shoot(tablet, f"{board}/operator/{args.line}?lang={lang}", out / f"operator-{lang}.png",
                              OPERATOR_READY)
                finally:
                    tablet.quit()
        except BaseException:
            sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
            raise
        finally:
            code = stop_demo(proc)
        if code != 0:
            sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
            print(f"screenshots: the demo exited with {code}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
