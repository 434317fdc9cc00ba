"""The store password comes from the environment or a file, never needs the command line, and
no error message shows it (a malformed URL, a refused login, a garbled answer)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.model import Fact, to_ns
from core.store import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    STORE_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    StoreError,
    mask_url,
    open_store,
)
from core.store.influx import InfluxStore
from tests.conftest import DEMO_PLANT, ROOT
from tests.support.influxd import Influxd

S = 1_000_000_000
T = to_ns(datetime(2026, 11, 27, tzinfo=UTC))
SECRET = "hunter2-S3cret"
SECRET_ENVS = (PASSWORD_ENV, PASSWORD_FILE_ENV, TOKEN_ENV, TOKEN_FILE_ENV, STORE_ENV)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRET_ENVS:
        monkeypatch.delenv(name, raising=False)


def count(t: int, n: int) -> Fact:
    return Fact("count", t, "line-1", "m1", "good", n)


async def _write_and_read(url: str) -> None:
    st = open_store(url)
    await st.open()  # CREATE DATABASE: only the admin's password passes
    try:
        await st.write([count(T, 3)])
        buckets = await st.count_buckets(["m1"], ["good"], T, T + S, S)
        assert [b.total for b in buckets] == [3]
    finally:
        await st.close()


def user_url(srv: Influxd) -> str:
    """The store URL with the user name and no password."""
    return f"influxdb://{srv.username}@{srv.host}:{srv.port}/{srv.fresh_database()}"


# ---- the password from the environment or a file reaches a real influxd with auth ----------


async def test_password_from_the_environment(influxd_auth_server: Influxd, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = influxd_auth_server
    url = user_url(srv)
    with pytest.raises(StoreError, match="401"):  # the control: without it influxd refuses
        await _write_and_read(url)
    monkeypatch.setenv(PASSWORD_ENV, srv.password or "")
    await _write_and_read(url)


async def test_password_from_a_file(influxd_auth_server: Influxd, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    srv = influxd_auth_server
    secret = tmp_path / "influx-password"
    secret.write_text(f"{srv.password}\n", encoding="utf-8")  # an editor's final newline is not part of it
    secret.chmod(0o600)
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(secret))
    await _write_and_read(user_url(srv))


async def test_a_wrong_password_from_the_environment_is_refused_without_showing_it(
        influxd_auth_server: Influxd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    with pytest.raises(StoreError) as e:
        await _write_and_read(user_url(influxd_auth_server))
    assert "401" in str(e.value) and SECRET not in str(e.value) and PASSWORD_ENV in str(e.value)


def test_token_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0ken-xyz\n", encoding="utf-8")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(tmp_path / "token"))
    st = open_store("influxdb://127.0.0.1:8086/factory")
    assert isinstance(st, InfluxStore) and st.token == "t0ken-xyz"


def test_a_password_in_the_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    st = open_store("influxdb://bob:from-url@127.0.0.1:8086/factory")
    assert isinstance(st, InfluxStore) and st._password == "from-url"
    st = open_store("influxdb://bob@127.0.0.1:8086/factory")
    assert isinstance(st, InfluxStore) and st._password == "from-env"


@pytest.mark.parametrize(("envs", "message"), [
    ({PASSWORD_ENV: SECRET, PASSWORD_FILE_ENV: "/nonexistent"}, "set one"),
    ({PASSWORD_FILE_ENV: "/nonexistent/influx-password"}, "cannot read /nonexistent/influx-password"),
    ({TOKEN_ENV: SECRET, TOKEN_FILE_ENV: "/nonexistent"}, "set one"),
])
def test_secret_settings_that_cannot_work_are_named(monkeypatch: pytest.MonkeyPatch, envs: dict[str, str],
                                                    message: str) -> None:
    for k, v in envs.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message) as e:
        open_store("influxdb://bob@127.0.0.1:8086/factory")
    assert SECRET not in str(e.value)


def test_a_password_without_a_user_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    with pytest.raises(ValueError, match="names no user") as e:
        open_store("influxdb://127.0.0.1:8086/factory")
    assert SECRET not in str(e.value)


# ---- no message shows the password --------------------------------------------------------------

MALFORMED = [
    f"influxdb://bob:{SECRET}@host:99999/db",  # bad port
    f"influxdb://bob:{SECRET}@/db",  # no host
    f"influxdb://bob:{SECRET}@host",  # no database
    f"influxdb://bob:{SECRET}@host:8086/db?x=1",  # a query string
    f"influxdb://bob:{SECRET}@host:8086/d$b",  # a bad database name
    "influxdb://bob:hun/ter2-S3cret@host:8086/db",  # a '/' in the password moves its tail to the path
    "influxdb://bob:hun?ter2-S3cret@host:8086/db",  # a '?' moves it to the query
    f"influxdb:bob:{SECRET}@host:8086/db",  # no //
    f"influxdb://:{SECRET}@host:8086/db",  # no user
]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_url_does_not_echo_the_password(url: str) -> None:
    with pytest.raises(ValueError) as e:
        open_store(url)
    msg = str(e.value)
    assert "bad store URL" in msg and "***" in msg, msg
    assert "S3cret" not in msg and "hunter2" not in msg and "ter2" not in msg, msg


def test_mask_url() -> None:
    assert mask_url("influxdb://bob:pw@h:1/db") == "influxdb://bob:***@h:1/db"
    assert mask_url("influxdb://bob@h:1/db") == "influxdb://bob@h:1/db"
    assert mask_url("sqlite:///data/x.db") == "sqlite:///data/x.db"


@asynccontextmanager
async def garbled_http() -> AsyncIterator[int]:
    """A loopback server whose answers are not HTTP aiohttp accepts."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_garbled_answer_does_not_show_the_authorization_header() -> None:
    # aiohttp's ClientResponseError carries the request headers in its repr, Basic auth included
    basic = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    async with garbled_http() as port:
        st = InfluxStore("127.0.0.1", port, "db", username="bob", password=SECRET)
        try:
            with pytest.raises(StoreError) as e:
                await st.open()
        finally:
            await st.close()
    text = f"{e.value!s} {e.value!r}"
    assert "Content-Length" in text  # it is the garbled answer that is reported
    assert SECRET not in text and basic not in text, text
    assert e.value.__cause__ is None  # a logged traceback would show the cause


# ---- the commands: MIERUKA_STORE, and a bad URL exits 2 without the password ------------------------


def run_mieruka(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in SECRET_ENVS} | env
    return subprocess.run([sys.executable, "-m", "mieruka.cli", *args], capture_output=True, text=True,
                          timeout=60, env=full, cwd=ROOT)


@pytest.mark.parametrize("command", ["api", "import"])
def test_commands_read_the_store_from_the_environment_and_mask_it(command: str, tmp_path: Path) -> None:
    extra = [str(tmp_path / "samples.csv")] if command == "import" else []
    r = run_mieruka(command, "--plant", str(DEMO_PLANT), *extra,
                    env={STORE_ENV: f"influxdb://bob:{SECRET}@127.0.0.1:99999/db"})
    assert r.returncode == 2, r.stderr
    assert "bad store URL 'influxdb://bob:***@127.0.0.1:99999/db'" in r.stderr
    assert SECRET not in r.stderr + r.stdout and "Traceback" not in r.stderr
    r = run_mieruka(command, "--plant", str(DEMO_PLANT), *extra, env={})
    assert r.returncode == 2 and f"--store URL is required (or set {STORE_ENV})" in r.stderr, r.stderr


# ---- deploy/: units with no secret on their command lines ------------------------------------------

UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
CREDENTIAL_URL = re.compile(r"://[^/\s@:]*:[^/\s@]*@")  # user:password@


def test_units_hold_no_secret() -> None:
    assert len(UNITS) == 3
    for unit in UNITS:
        text = unit.read_text(encoding="utf-8")
        settings = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")).lower()
        # a file that holds a secret may be named (the dashboard's read token): its path is no secret
        settings = re.sub(r"--[a-z-]+-file\s+\S+", "", settings)
        assert not CREDENTIAL_URL.search(text), unit
        assert "password" not in settings and "token" not in settings and "secret" not in settings, unit
        # ${VAR} on ExecStart expands onto the command line, which `ps` shows to every user
        exec_start = re.search(r"^ExecStart=(.*(?:\\\n.*)*)", text, re.M)
        assert exec_start is not None and "$" not in exec_start.group(1), unit
        if "mieruka api" in text or "mieruka collect" in text:
            # the store URL comes from the environment file (no leading '-': a missing file is an error)
            assert "EnvironmentFile=/etc/mieruka/mieruka.env" in text and "--store" not in text, unit


def test_env_example_keeps_the_password_out_of_the_url() -> None:
    text = (ROOT / "deploy" / "mieruka.env.example").read_text(encoding="utf-8")
    assert not CREDENTIAL_URL.search(text)
    assert re.search(r"^MIERUKA_STORE=influxdb://\w+@", text, re.M)
    assert f"{PASSWORD_ENV}=" in text and PASSWORD_FILE_ENV in text and "0600" in text
