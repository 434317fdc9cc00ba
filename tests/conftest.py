from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import Mosquitto, mosquitto

ROOT = Path(__file__).resolve().parent.parent
DEMO_PLANT = ROOT / "deploy" / "plants" / "demo.yaml"


@pytest.fixture(scope="session")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free loopback port for the whole session."""
    with mosquitto(tmp_path_factory.mktemp("mosquitto")) as m:
        yield m
