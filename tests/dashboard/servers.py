"""A real uvicorn API and a real Dash server in threads, on free loopback ports, stopped after."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from werkzeug.serving import make_server

from api.app import create_app
from api.auth import Auth
from core.plant import Plant
from core.store.sqlite import SqliteStore
from dashboard.app import create_dashboard
from dashboard.client import TokenSource
from tests.support.services import free_port, wait_port

OPEN = Auth.open_reads()  # the board reads without a token unless a test passes ``auth``


class ApiServer:
    def __init__(self, plant: Plant, db: Path, auth: Auth = OPEN) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(plant, SqliteStore(db), auth=auth), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"api-{self.port}", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start on {self.url}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the API thread did not stop"


@contextmanager
def api_server(plant: Plant, db: Path, auth: Auth = OPEN) -> Iterator[ApiServer]:
    s = ApiServer(plant, db, auth)
    s.start()
    try:
        yield s
    finally:
        if s.thread.is_alive():
            s.stop()


@contextmanager
def dashboard_server(api_url: str, refresh_ms: int = 1000, reload_after_s: float | None = None, *,
                     token: str | None = None, operator_token: TokenSource | str | None = None) -> Iterator[str]:
    port = free_port()
    app = create_dashboard(api_url, refresh_ms=refresh_ms, reload_after_s=reload_after_s, token=token,
                           operator_token=operator_token)
    server = make_server("127.0.0.1", port, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name=f"dash-{port}", daemon=True)
    thread.start()
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
