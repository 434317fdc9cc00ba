"""A real HAProxy (Debian's package) running the shipped ``deploy/haproxy/mieruka.cfg``, its addresses
swapped for the test's loopback ports; in the foreground (``-db``), stopped after.

Only the ``bind`` and ``server`` addresses change, so the balancing, health checks and timeouts under
test are the shipped ones; a config whose shape no longer fits fails here, loudly."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.services import free_port, stop, wait_port, which

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "mieruka.cfg"
_BIND = re.compile(r"^(\s*bind\s+)\S+(.*)$", re.M)
_SERVER = re.compile(r"^(\s*server\s+api-(\d+)\s+)\S+(.*)$", re.M)


def render(text: str, bind_port: int, replica_ports: list[int]) -> str:
    """The config with its one ``bind`` on 127.0.0.1:``bind_port`` and server ``api-N`` on
    127.0.0.1:``replica_ports[N-1]`` in every backend."""
    out, binds = _BIND.subn(lambda m: f"{m.group(1)}127.0.0.1:{bind_port}{m.group(2)}", text)
    assert binds == 1, f"{SHIPPED.name}: expected one bind line, found {binds}"
    seen: set[int] = set()

    def server(m: re.Match[str]) -> str:
        n = int(m.group(2))
        assert 1 <= n <= len(replica_ports), f"{SHIPPED.name}: server api-{n} but {len(replica_ports)} replicas"
        seen.add(n)
        return f"{m.group(1)}127.0.0.1:{replica_ports[n - 1]}{m.group(3)}"

    out = _SERVER.sub(server, out)
    assert seen == set(range(1, len(replica_ports) + 1)), f"{SHIPPED.name}: servers {sorted(seen)}"
    return out


@dataclass(frozen=True)
class Balancer:
    url: str  # the frontend's base URL
    stats_url: str  # a stats page the test adds (not in the shipped config)

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """HAProxy's statistics by (proxy, server or FRONTEND/BACKEND): ``status``, ``stot`` (sessions
        in all), ``wredis`` (requests sent to another server after a failed connection), ..."""
        text = httpx.get(f"{self.stats_url};csv", timeout=5.0).text
        head, *rows = [r for r in text.splitlines() if r]
        names = head.lstrip("# ").split(",")
        out = {}
        for r in rows:
            d = dict(zip(names, r.split(","), strict=False))
            out[(d["pxname"], d["svname"])] = d
        return out


def wait_all_up(lb: Balancer, backends: int, servers: int, deadline_s: float = 20.0) -> None:
    """Until the stats show every server of every backend UP (its health checks passed)."""
    end = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            last = stats = lb.stats()
            if sum(1 for (_, sv), d in stats.items() if sv not in ("FRONTEND", "BACKEND") and d["status"] == "UP") \
                    == backends * servers:
                return
        time.sleep(0.1)
    raise TimeoutError(f"HAProxy's servers not all UP within {deadline_s}s: {last}")


@contextlib.contextmanager
def haproxy(work_dir: Path, replica_ports: list[int], *, backends: int = 2) -> Iterator[Balancer]:
    """HAProxy on a free loopback port in front of the replicas, once every server passed its
    health checks. A stats listener (test only) shows the servers' states and counts."""
    work_dir.mkdir(parents=True, exist_ok=True)
    port, stats = free_port(), free_port()
    cfg = work_dir / "haproxy.cfg"
    cfg.write_text(render(SHIPPED.read_text(encoding="utf-8"), port, replica_ports)
                   + f"\nlisten test_stats\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /stats\n",
                   encoding="utf-8")
    exe = which("haproxy", "/usr/sbin/haproxy")
    check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "WARNING" not in check.stdout + check.stderr, check.stdout + check.stderr
    with open(work_dir / "haproxy.log", "ab") as log:
        proc = subprocess.Popen([exe, "-f", str(cfg), "-db"], stdout=log, stderr=log)
    lb = Balancer(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats}/stats")
    try:
        wait_port(port, proc=proc)
        wait_all_up(lb, backends, len(replica_ports))
        yield lb
    finally:
        stop(proc)
