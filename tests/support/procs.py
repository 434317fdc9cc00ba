"""`mieruka` subcommands as real processes, on loopback, stopped after."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tests.support.services import free_port, stop

if TYPE_CHECKING:
    from collector.pipeline import Collector
    from core.store.base import Store


def mieruka(*args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "mieruka.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                            env=env)


def mieruka_ok(*args: str, timeout_s: float = 300.0) -> None:
    """Run a `mieruka` subcommand to its end; it must exit 0 (its stderr is the failure message)."""
    r = subprocess.run([sys.executable, "-m", "mieruka.cli", *args], capture_output=True, text=True, timeout=timeout_s)
    assert r.returncode == 0, r.stderr


def wait_http(url: str, deadline_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {deadline_s}s")


@contextlib.contextmanager
def api_process(plant_file: Path, store_url: str, log: Path, *extra: str) -> Iterator[str]:
    """``mieruka api`` on a free loopback port; anonymous reads unless ``extra`` has ``--tokens``."""
    port = free_port()
    auth = extra if "--tokens" in extra else ("--anonymous-read", *extra)
    proc = mieruka("api", "--plant", str(plant_file), "--store", store_url, "--port", str(port), *auth, log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", proc=proc)
        yield base
    finally:
        stop(proc)


def interrupt(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """Ctrl-C a process and return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


async def wait_until(cond: Callable[[], Awaitable[bool]], deadline_s: float, what: str, poll_s: float = 0.2) -> None:
    end = time.monotonic() + deadline_s
    while True:
        if await cond():
            return
        if time.monotonic() > end:
            raise TimeoutError(f"not within {deadline_s}s: {what}")
        await asyncio.sleep(poll_s)


@dataclass
class RunningCollector:
    collector: Collector
    task: asyncio.Task[None]
    stop: asyncio.Event


@contextlib.asynccontextmanager
async def collector_running(collector: Collector, *, stop_within_s: float = 60.0) -> AsyncIterator[RunningCollector]:
    """Run an in-process ``collector`` in a task; on the way out set its stop and wait for it
    (bounded), so a collector that fails to stop fails the test instead of hanging it."""
    stop_ = asyncio.Event()
    task = asyncio.create_task(collector.run(stop_), name="collector")
    try:
        yield RunningCollector(collector, task, stop_)
    finally:
        stop_.set()
        async with asyncio.timeout(stop_within_s):
            await task


async def counting_everywhere(store: Store, machines: list[str]) -> bool:
    """Every machine has a count in the store: its counter baseline (the collector's first reading)
    lies behind us, so a window chosen from now on counts every part made in it. Any fact is not
    enough: a source not reachable yet makes ``offline`` facts before its first reading."""
    now, day = time.time_ns(), 86_400 * 10**9
    buckets = await store.count_buckets(machines, ["good", "scrap"], now - day, now + day, 2 * day)
    return {b.machine for b in buckets if b.total > 0} >= set(machines)
