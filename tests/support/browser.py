"""Headless Debian Chromium through Debian's chromedriver (never a downloaded browser)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.support.services import which


@contextlib.contextmanager
def chromium(width: int = 1920, height: int = 1080) -> Iterator[webdriver.Chrome]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = which("chromium", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--lang=ja"):
        opts.add_argument(arg)
    # an explicit driver path keeps selenium-manager from fetching anything
    service = Service(executable_path=which("chromedriver", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        yield driver
    finally:
        driver.quit()
