"""API settings, built at the process edge (the command line or the environment), never at import."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from api.auth import Auth
from api.cache import DEFAULT_REFRESH_PERIOD_S, MAX_REFRESH_PERIOD_S
from api.tokens import TOKENS_ENV, TokenFile
from api.work import DEFAULT_REQUEST_TIMEOUT_S

DEFAULT_STORE_URL = "sqlite:///mieruka.db"
CORS_ENV = "MIERUKA_CORS_ORIGINS"
TIMEOUT_ENV = "MIERUKA_REQUEST_TIMEOUT_S"
REFRESH_ENV = "MIERUKA_REFRESH_PERIOD_S"


class SettingsError(ValueError):
    """Settings the API cannot start with; ``str()`` says what to fix."""


def cors_from_env(env: Mapping[str, str]) -> tuple[str, ...]:
    """``MIERUKA_CORS_ORIGINS``: origins separated by commas or spaces."""
    return tuple(o for o in env.get(CORS_ENV, "").replace(",", " ").split() if o)


@dataclass(frozen=True, slots=True)
class Settings:
    plant_file: Path
    store_url: str = DEFAULT_STORE_URL
    retry_after_s: int = 5  # what a 503 tells clients to wait before asking again
    tokens_file: Path | None = None
    anonymous_read: bool = False
    cors_origins: tuple[str, ...] = ()
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    refresh_period_s: float = DEFAULT_REFRESH_PERIOD_S  # api.cache: 0 switches the cache and the alignment off

    def auth(self) -> Auth:
        """The token file read now (``SettingsError`` if it is missing or malformed)."""
        tokens = None
        if self.tokens_file is not None:
            if not self.tokens_file.is_file():
                raise SettingsError(f"token file {self.tokens_file} does not exist; create a token with "
                                    f"'mieruka token create --role read --name NAME --tokens {self.tokens_file}'")
            try:
                tokens = TokenFile(self.tokens_file)
            except ValueError as e:
                raise SettingsError(str(e)) from None
        return Auth(tokens, anonymous_read=self.anonymous_read)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """``MIERUKA_PLANT`` (required), ``MIERUKA_STORE`` (default ``sqlite:///mieruka.db``),
        ``MIERUKA_TOKENS``, ``MIERUKA_CORS_ORIGINS``, ``MIERUKA_REQUEST_TIMEOUT_S``,
        ``MIERUKA_REFRESH_PERIOD_S``."""
        env = os.environ if env is None else env
        plant = env.get("MIERUKA_PLANT")
        if not plant:
            raise ValueError("MIERUKA_PLANT is not set; point it at a plant file, e.g. deploy/plants/demo.yaml")
        tokens = env.get(TOKENS_ENV)
        timeout = env.get(TIMEOUT_ENV)
        try:
            timeout_s = float(timeout) if timeout else DEFAULT_REQUEST_TIMEOUT_S
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {timeout!r}") from None
        refresh = env.get(REFRESH_ENV)
        try:
            refresh_s = float(refresh) if refresh else DEFAULT_REFRESH_PERIOD_S
        except ValueError:
            raise ValueError(f"{REFRESH_ENV} must be a number of seconds, got {refresh!r}") from None
        if not 0 <= refresh_s <= MAX_REFRESH_PERIOD_S:
            raise ValueError(f"{REFRESH_ENV} must be 0 (off) to {MAX_REFRESH_PERIOD_S:g} seconds, got {refresh!r}")
        return cls(Path(plant), env.get("MIERUKA_STORE", DEFAULT_STORE_URL),
                   tokens_file=Path(tokens) if tokens else None, cors_origins=cors_from_env(env),
                   request_timeout_s=timeout_s, refresh_period_s=refresh_s)
