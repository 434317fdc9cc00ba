from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.influxd import Influxd, influxd
from tests.support.services import Mosquitto, mosquitto

ROOT = Path(__file__).resolve().parent.parent
DEMO_PLANT = ROOT / "deploy" / "plants" / "demo.yaml"


@pytest.fixture(scope="session")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free loopback port for the whole session."""
    with mosquitto(tmp_path_factory.mktemp("mosquitto")) as m:
        yield m


@pytest.fixture(scope="session")
def influxd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    """A real influxd (no auth) on free loopback ports for the whole session; ``.url()`` names a fresh database."""
    with influxd(tmp_path_factory.mktemp("influxd")) as server:
        yield server


@pytest.fixture(scope="session")
def influxd_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    """A real influxd with auth enabled and an admin user (``.username``/``.password``) for the session."""
    with influxd(tmp_path_factory.mktemp("influxd-auth"), auth=True) as server:
        yield server
