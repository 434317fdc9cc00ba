from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium import webdriver

from tests.support.browser import chromium


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    """Debian's headless Chromium through Debian's chromedriver (never Selenium Manager, never a download)."""
    with chromium() as driver:
        yield driver
