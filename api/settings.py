"""API settings, built at the process edge (the command line or the environment), never at import."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STORE_URL = "sqlite:///mieruka.db"


@dataclass(frozen=True, slots=True)
class Settings:
    plant_file: Path
    store_url: str = DEFAULT_STORE_URL
    retry_after_s: int = 5  # what a 503 tells clients to wait before asking again

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """``MIERUKA_PLANT`` (required), ``MIERUKA_STORE`` (default ``sqlite:///mieruka.db``)."""
        env = os.environ if env is None else env
        plant = env.get("MIERUKA_PLANT")
        if not plant:
            raise ValueError("MIERUKA_PLANT is not set; point it at a plant file, e.g. deploy/plants/demo.yaml")
        return cls(Path(plant), env.get("MIERUKA_STORE", DEFAULT_STORE_URL))
