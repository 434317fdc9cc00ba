"""A real ``influxd`` (Debian's InfluxDB 1.6.7) for tests: loopback ports, temp dirs, stopped after.

The stock config binds all interfaces and phones home; this one binds 127.0.0.1 only, turns
reporting, IFQL and every other listener off, and keeps its data under a temp dir.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.services import free_port, stop, wait_port, which

ADMIN_USER = "admin"
ADMIN_PASSWORD = "s3cret-pw"


@dataclass
class Influxd:
    """One ``influxd run`` process; ``url()`` builds a store URL for a fresh database."""

    data_dir: Path
    auth: bool = False
    port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    username: str | None = None
    password: str | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @staticmethod
    def fresh_database() -> str:
        return f"t{uuid.uuid4().hex[:16]}"

    def url(self, database: str | None = None, *, credentials: bool = True) -> str:
        """``influxdb://[user:password@]host:port/<database>``; a fresh database name by default."""
        db = database or self.fresh_database()
        cred = ""
        if credentials and self.username is not None:
            cred = f"{urllib.parse.quote(self.username, safe='')}:{urllib.parse.quote(self.password or '', safe='')}@"
        return f"influxdb://{cred}{self.host}:{self.port}/{db}"

    # ---- process ------------------------------------------------------------------------
    def write_config(self) -> Path:
        d = self.data_dir
        for sub in ("meta", "data", "wal"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        conf = d / "influxdb.conf"
        conf.write_text(
            "reporting-enabled = false\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            "[meta]\n"
            f'  dir = "{d / "meta"}"\n'
            "  logging-enabled = false\n"
            "[data]\n"
            f'  dir = "{d / "data"}"\n'
            f'  wal-dir = "{d / "wal"}"\n'
            "  query-log-enabled = false\n"
            "[monitor]\n"
            "  store-enabled = false\n"
            "[http]\n"
            "  enabled = true\n"
            f'  bind-address = "127.0.0.1:{self.port}"\n'
            f"  auth-enabled = {'true' if self.auth else 'false'}\n"
            "  log-enabled = false\n"
            "  pprof-enabled = false\n"
            "[ifql]\n"
            "  enabled = false\n"
            "[continuous_queries]\n"
            "  enabled = false\n"
            "[[graphite]]\n  enabled = false\n"
            "[[collectd]]\n  enabled = false\n"
            "[[opentsdb]]\n  enabled = false\n"
            "[[udp]]\n  enabled = false\n"
            "[logging]\n"
            '  level = "warn"\n'
            "  suppress-logo = true\n"
        )
        return conf

    def start(self, deadline_s: float = 30.0) -> None:
        conf = self.write_config()
        with open(self.data_dir / "influxd.log", "ab") as log:
            self.proc = subprocess.Popen([which("influxd", "/usr/bin/influxd"), "run", "-config", str(conf)],
                                         stdout=log, stderr=log)
        try:
            wait_port(self.port, deadline_s=deadline_s, proc=self.proc)
            self._wait_ping(deadline_s)
            if self.auth and self.username is None:
                # with auth on, influxd accepts exactly one unauthenticated statement: the first admin user
                self.query(f"CREATE USER {ADMIN_USER} WITH PASSWORD '{ADMIN_PASSWORD}' WITH ALL PRIVILEGES",
                           credentials=False)
                self.username, self.password = ADMIN_USER, ADMIN_PASSWORD
        except BaseException:
            self.stop()
            raise

    def _wait_ping(self, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        last: object = None
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited with code {self.proc.returncode}; see {self.data_dir}/influxd.log")
            try:
                with urllib.request.urlopen(f"{self.base_url}/ping", timeout=2) as r:
                    if r.status == 204:
                        return
                    last = r.status
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"influxd /ping did not answer 204 within {deadline_s}s (last: {last!r})")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- admin helper (synchronous, for fixtures and assertions) -------------------------
    def query(self, q: str, database: str | None = None, *, credentials: bool = True) -> dict[str, Any]:
        params = {"q": q, "epoch": "ns"}
        if database:
            params["db"] = database
        req = urllib.request.Request(f"{self.base_url}/query", data=urllib.parse.urlencode(params).encode(),
                                     method="POST")
        if credentials and self.username is not None:
            tok = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {tok}")
        with urllib.request.urlopen(req, timeout=10) as r:
            body: dict[str, Any] = json.loads(r.read())
        for res in body.get("results", []):
            if "error" in res:
                raise RuntimeError(f"influxd: {res['error']} (query: {q})")
        return body


@contextlib.contextmanager
def influxd(data_dir: Path, *, auth: bool = False) -> Iterator[Influxd]:
    """Start a real influxd on free loopback ports with its data in ``data_dir``; stop it after."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = Influxd(data_dir, auth=auth)
    server.start()
    try:
        yield server
    finally:
        server.stop()
