"""Headless Debian Chromium through Debian's chromedriver (never a downloaded browser); used by
the tests, scripts/screenshots.py and bench/dashboard_soak.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.support.services import which


def start_chromium(width: int = 1920, height: int = 1080, *, lang: str = "ja", exact_viewport: bool = False,
                   hide_scrollbars: bool = False) -> webdriver.Chrome:
    """A headless Chromium; ``exact_viewport`` pins the page's viewport to ``width`` x ``height``
    (``--window-size`` counts the browser's own frame), as screenshots and the soak want."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = which("chromium", "/usr/bin/chromium")
    args = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            f"--window-size={width},{height}", f"--lang={lang}"]
    if hide_scrollbars:
        args.append("--hide-scrollbars")
    for arg in args:
        opts.add_argument(arg)
    # an explicit driver path keeps selenium-manager from fetching anything
    service = Service(executable_path=which("chromedriver", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    if exact_viewport:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


@contextlib.contextmanager
def chromium(width: int = 1920, height: int = 1080) -> Iterator[webdriver.Chrome]:
    driver = start_chromium(width, height)
    try:
        yield driver
    finally:
        driver.quit()
