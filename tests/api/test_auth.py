"""Tokens and roles: every route × every kind of caller, the token CLI, revocation in a running API,
tokens kept out of logs, and the start-up refusals of ``mieruka api``."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.routing import Route

from api.app import create_app
from api.auth import Auth, require_role
from api.tokens import Role, TokenFile, create_token, read_tokens, role_allows
from core.plant import Plant, load_plant
from core.store.sqlite import SqliteStore
from dashboard.client import ApiClient, ApiResponseError
from mieruka.cli import main
from tests.api.support import shift_facts, write_facts
from tests.api.test_operator import stop_facts
from tests.conftest import DEMO_PLANT
from tests.dashboard.servers import api_server
from tests.support.procs import api_process

W = {"start": "2026-11-27T08:00:00+09:00", "end": "2026-11-27T11:00:00+09:00"}
AS_OF = {"as_of": "2026-11-27T10:30:00+09:00"}
PATH_VALUES = {"line_id": "blade-1", "machine_id": "cnc-1", "signal": "spindle_temp"}
# A request per route that succeeds for a caller allowed to make it, and the role it needs (None: no
# token at all). A route missing here fails test_every_route_is_in_the_matrix: add it with its role.
CASES: dict[str, tuple[dict[str, str], Role | None]] = {
    "/healthz": ({}, None),
    "/openapi.json": ({}, None),
    "/docs": ({}, None),
    "/docs/oauth2-redirect": ({}, None),
    "/redoc": ({}, None),
    "/api/v1/plant/site": ({}, "read"),
    "/api/v1/lines": ({}, "read"),
    "/api/v1/plant": ({}, "read"),
    "/api/v1/shifts/current": (AS_OF, "read"),
    "/api/v1/lines/{line_id}/throughput": (W, "read"),
    "/api/v1/lines/{line_id}/status": (AS_OF, "read"),
    "/api/v1/lines/{line_id}/oee": (W, "read"),
    "/api/v1/machines/{machine_id}/oee": (W, "read"),
    "/api/v1/lines/{line_id}/downtime": (W, "read"),
    "/api/v1/machines/{machine_id}/states": (W, "read"),
    "/api/v1/machines/{machine_id}/signals/{signal}": (W, "read"),
    "/api/v1/reports/shift": ({"date": "2026-11-27", "shift": "day", **AS_OF}, "read"),
    "/api/v1/stream": ({"lines": "blade-1"}, "read"),  # app_with_probes ends each stream at once
    "/api/v1/lines/{line_id}/stops": (W, "read"),
    "/api/v1/lines/{line_id}/notes": (W, "read"),
    "/api/v1/audit": ({}, "admin"),
    "/metrics": ({}, "read"),
    # not routes of the app: added by the test to prove require_role's 403 for bigger roles
    "/test/operator": ({}, "operator"),
    "/test/admin": ({}, "admin"),
}
Who = Literal["none", "bad", "read", "operator", "admin"]
WHO: tuple[Who, ...] = ("none", "bad", "read", "operator", "admin")


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def db(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "mieruka.db"
    write_facts(path, shift_facts(plant))
    return path


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Who, str]]:
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    made: dict[Who, str] = {r: create_token(path, f"t-{r}", r) for r in ("read", "operator", "admin")}
    made["bad"] = "mk_" + "x" * 43
    return path, made


def app_with_probes(plant: Plant, db: Path, auth: Auth) -> FastAPI:
    # a stream lasts 50 ms here, so the matrix reads its whole answer like any other route's
    app = create_app(plant, SqliteStore(db, create=False), auth=auth, stream_options={"max_connection_s": 0.05})

    async def probe() -> dict[str, bool]:
        return {"ok": True}

    for role in ("operator", "admin"):
        app.add_api_route(f"/test/{role}", probe, dependencies=[Depends(require_role(role))])
    return app


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            yield c


def expected(needed: Role | None, who: Who, anonymous_read: bool) -> int:
    if needed is None:
        return 200
    if who == "none":
        return 200 if anonymous_read and needed == "read" else 401
    if who == "bad":
        return 401
    return 200 if role_allows(who, needed) else 403


def route_paths(app: FastAPI, method: str = "GET") -> list[str]:
    """Every path the app serves for ``method``, from its routes (included routers flattened)."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI that keeps included routers as branches
    except ImportError:
        return [r.path for r in app.routes if isinstance(r, Route) and method in (r.methods or ())]
    return [c.path for c in iter_route_contexts(app.routes)
            if isinstance(c.original_route, Route) and c.path and method in (c.original_route.methods or ())]


def url_of(path: str) -> str:
    return path.format(**{k: v for k, v in PATH_VALUES.items() if "{" + k + "}" in path})


def test_every_route_is_in_the_matrix(plant: Plant, db: Path) -> None:
    paths = route_paths(app_with_probes(plant, db, Auth()))
    assert len(paths) == len(set(paths))
    assert set(paths) == set(CASES), f"routes without a case (add them to CASES with the role they need): " \
                                     f"{set(paths) - set(CASES)}"


@pytest.mark.parametrize("anonymous_read", [False, True], ids=["tokens-only", "anonymous-read"])
async def test_role_matrix(plant: Plant, db: Path, tokens: tuple[Path, dict[Who, str]], anonymous_read: bool,
                           caplog: pytest.LogCaptureFixture) -> None:
    path, secret = tokens
    caplog.set_level(logging.DEBUG)
    app = app_with_probes(plant, db, Auth(TokenFile(path), anonymous_read=anonymous_read))
    paths = route_paths(app)
    seen: dict[int, int] = {}
    async with serve(app) as c:
        for route in paths:
            params, needed = CASES[route]
            for who in WHO:
                headers = {} if who == "none" else {"Authorization": f"Bearer {secret[who]}"}
                r = await c.get(url_of(route), params=params, headers=headers)
                want = expected(needed, who, anonymous_read)
                assert r.status_code == want, (route, who, anonymous_read, r.text[:300])
                seen[want] = seen.get(want, 0) + 1
                if want in (401, 403):
                    assert isinstance(r.json()["detail"], str)
                if want == 401:
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
        # a header that is not a bearer token is refused too, never taken for anonymous
        r = await c.get("/api/v1/lines", headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert seen[200] and seen[401] and seen[403]
    for token in secret.values():
        assert token not in caplog.text
    assert "t-read" in caplog.text  # the log names the refused token (403 on the probes), not its value


async def test_openapi_declares_the_bearer_scheme(plant: Plant, db: Path) -> None:
    async with serve(create_app(plant, SqliteStore(db), auth=Auth())) as c:
        doc = (await c.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "A token from `mieruka token create`, sent as `Authorization: Bearer <token>`"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            security = op.get("security")
            if path == "/healthz":
                assert security is None
            else:
                assert security == [{"bearer": []}], (path, method)
                assert {"401", "403"} <= set(op["responses"]), (path, method)


# Every write route with a body that succeeds for a caller allowed to make it (the operator-input
# contract: writes need operator, never anonymous, whatever anonymous reads say).
WRITES: dict[tuple[str, str], tuple[dict[str, object], int]] = {
    ("PUT", "/api/v1/machines/{machine_id}/stops/{start}/reason"): ({"reason": 22}, 200),
    ("POST", "/api/v1/machines/{machine_id}/scrap"): ({"time": "2026-11-27T09:30:00+09:00", "quantity": 1}, 201),
    ("POST", "/api/v1/lines/{line_id}/notes"): ({"text": "checked"}, 201),
}
WRITE_PATHS = {"line_id": "blade-1", "machine_id": "cnc-1", "start": "2026-11-27T08%3A40%3A00%2B09%3A00"}


def write_routes(app: FastAPI) -> set[tuple[str, str]]:
    return {(m, p) for m in ("PUT", "POST", "DELETE", "PATCH") for p in route_paths(app, m)}


@pytest.fixture
def write_db(plant: Plant, tmp_path: Path) -> Path:
    db = tmp_path / "w.db"
    write_facts(db, [*shift_facts(plant), *stop_facts()])
    return db


@pytest.mark.parametrize("anonymous_read", [False, True], ids=["tokens-only", "anonymous-read"])
async def test_write_role_matrix(plant: Plant, write_db: Path, tokens: tuple[Path, dict[Who, str]],
                                 anonymous_read: bool) -> None:
    path, secret = tokens
    db = write_db
    app = create_app(plant, SqliteStore(db, create=False), auth=Auth(TokenFile(path), anonymous_read=anonymous_read))
    assert write_routes(app) == set(WRITES), "a write route without a case: add it to WRITES"
    async with serve(app) as c:
        for (method, route), (body, ok) in WRITES.items():
            url = route.format(**{k: v for k, v in WRITE_PATHS.items() if "{" + k + "}" in route})
            if "scrap" in route:
                url = url.replace("cnc-1", "inspect-1")
            for who in WHO:
                headers = {} if who == "none" else {"Authorization": f"Bearer {secret[who]}"}
                r = await c.request(method, url, json=body, headers=headers)
                want = {"none": 401, "bad": 401, "read": 403}.get(who, ok)
                assert r.status_code == want, (method, route, who, anonymous_read, r.text[:300])
                got = r.json()
                assert isinstance(got["detail"] if want >= 400 else got.get("entry", got)["author"], str)
        audit = (await c.get("/api/v1/audit", headers={"Authorization": f"Bearer {secret['admin']}"})).json()
    # only the operator's and the admin's writes were stored, each under its token's name
    assert sorted(e["author"] for e in audit["entries"]) == sorted(["t-operator", "t-admin"] * len(WRITES))


def test_token_cli_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "conf" / "tokens.json"
    assert main(["token", "create", "--role", "operator", "--name", "line-lead", "--tokens", str(path)]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("mk_") and len(token) > 40 and token not in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in path.read_text()  # only its hash is kept
    assert [(r.name, r.role) for r in read_tokens(path)] == [("line-lead", "operator")]
    assert TokenFile(path).lookup(token) is not None
    assert [p.name for p in path.parent.iterdir()] == ["tokens.json"]  # no temp file left behind

    os.environ.pop("MIERUKA_TOKENS", None)
    assert main(["token", "create", "--role", "read", "--name", "board"]) == 2  # no file named
    assert "--tokens FILE or the environment variable MIERUKA_TOKENS" in capsys.readouterr().err
    os.environ["MIERUKA_TOKENS"] = str(path)
    try:
        assert main(["token", "create", "--role", "read", "--name", "board"]) == 0
        board = capsys.readouterr().out.strip()
        assert main(["token", "create", "--role", "read", "--name", "board"]) == 2  # names are unique
        assert "exists" in capsys.readouterr().err
        assert main(["token", "list"]) == 0
        listing = capsys.readouterr().out
        assert "line-lead" in listing and "operator" in listing and "board" in listing
        assert token not in listing and board not in listing
        assert main(["token", "revoke", "--name", "line-lead"]) == 0
        assert "revoked" in capsys.readouterr().out
        assert main(["token", "revoke", "--name", "line-lead"]) == 2
        assert "no token named 'line-lead'" in capsys.readouterr().err
    finally:
        os.environ.pop("MIERUKA_TOKENS", None)
    assert TokenFile(path).lookup(token) is None and TokenFile(path).lookup(board) is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_revocation_and_new_tokens_take_effect_without_a_restart(db: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    assert main(["token", "create", "--role", "read", "--name", "board", "--tokens", str(path)]) == 0
    board = capsys.readouterr().out.strip()
    log = tmp_path / "api.log"
    with api_process(DEMO_PLANT, f"sqlite:///{db}", log, "--tokens", str(path)) as base:
        lines = f"{base}/api/v1/lines"
        assert httpx.get(lines, headers={"Authorization": f"Bearer {board}"}).status_code == 200
        assert httpx.get(lines).status_code == 401  # no anonymous reads without --anonymous-read
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert main(["token", "revoke", "--name", "board", "--tokens", str(path)]) == 0
        assert "revoked" in capsys.readouterr().out
        assert httpx.get(lines, headers={"Authorization": f"Bearer {board}"}).status_code == 401
        assert main(["token", "create", "--role", "admin", "--name", "admin", "--tokens", str(path)]) == 0
        admin = capsys.readouterr().out.strip()
        r = httpx.get(f"{base}/api/v1/lines/blade-1/throughput", params=W,
                      headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200 and r.json()["total_good"] == 35
    text = log.read_text()
    assert "GET /api/v1/lines" in text and "401" in text  # uvicorn's access log was on
    assert board not in text and admin not in text


def test_dashboard_client_sends_its_token(plant: Plant, db: Path, tokens: tuple[Path, dict[Who, str]]) -> None:
    path, secret = tokens
    with api_server(plant, db, Auth(TokenFile(path))) as api:
        with ApiClient(api.url, token=secret["read"]) as c:
            assert [ln.id for ln in c.lines()] == ["blade-1", "press-2"]
        with ApiClient(api.url) as c, pytest.raises(ApiResponseError) as refused:
            c.lines()
        assert refused.value.status == 401


def run_api(*args: str, timeout_s: float = 60.0) -> tuple[int, str]:
    """``mieruka api`` expected to refuse to start: its exit code and output (bounded in time)."""
    proc = subprocess.run([sys.executable, "-m", "mieruka.cli", "api", *args], capture_output=True, text=True,
                          timeout=timeout_s)
    return proc.returncode, proc.stdout + proc.stderr


def test_api_refuses_to_serve_other_hosts_without_tokens(db: Path, tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: should the check ever fail, the bind fails too
    code, out = run_api("--plant", str(DEMO_PLANT), "--store", f"sqlite:///{db}", "--host", "192.0.2.1",
                        "--port", "8999")
    assert code == 2, out
    assert "--anonymous-read" in out and "mieruka token create" in out and "192.0.2.1" in out
    empty = tmp_path / "tokens.json"
    empty.write_text('{"version": 1, "tokens": []}\n')
    code, out = run_api("--plant", str(DEMO_PLANT), "--store", f"sqlite:///{db}", "--host", "192.0.2.1",
                        "--port", "8999", "--tokens", str(empty))
    assert code == 2 and "no token exists" in out, out
    code, out = run_api("--plant", str(DEMO_PLANT), "--store", f"sqlite:///{db}", "--tokens",
                        str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json does not exist" in out, out


def test_api_refuses_a_bad_request_timeout(db: Path) -> None:
    code, out = run_api("--plant", str(DEMO_PLANT), "--store", f"sqlite:///{db}", "--anonymous-read",
                        "--request-timeout", "0")
    assert code == 2 and "--request-timeout must be positive" in out, out
    env = {**os.environ, "MIERUKA_REQUEST_TIMEOUT_S": "soon"}
    proc = subprocess.run([sys.executable, "-m", "mieruka.cli", "api", "--plant", str(DEMO_PLANT), "--store",
                           f"sqlite:///{db}", "--anonymous-read"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "MIERUKA_REQUEST_TIMEOUT_S must be a number" in proc.stderr, proc.stderr


def test_api_refuses_a_sqlite_store_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "mieruka.db"
    code, out = run_api("--plant", str(DEMO_PLANT), "--store", f"sqlite:///{missing}", "--anonymous-read")
    assert code == 2, out
    assert str(missing) in out and "collector" in out and "mieruka import" in out
    assert not missing.exists() and not missing.parent.exists()


async def test_sqlite_store_opened_for_reading_never_creates_the_file(tmp_path: Path) -> None:
    from core.store.base import StoreError

    missing = tmp_path / "mieruka.db"
    store = SqliteStore(missing, create=False)
    with pytest.raises(StoreError, match="does not exist"):
        await store.open()
    assert not missing.exists()


async def test_cors_origins_are_configurable_and_off_by_default(plant: Plant, db: Path) -> None:
    preflight = {"Origin": "http://board.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    async with serve(create_app(plant, SqliteStore(db), auth=Auth.open_reads())) as c:
        r = await c.get("/api/v1/lines", headers={"Origin": "http://board.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = await c.options("/api/v1/lines", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    async with serve(create_app(plant, SqliteStore(db), auth=Auth.open_reads(),
                                cors_origins=["http://board.example"])) as c:
        r = await c.options("/api/v1/lines", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://board.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = await c.get("/api/v1/lines", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in r.headers



async def test_settings_from_the_environment(db: Path, tmp_path: Path) -> None:
    from api.app import create_app_from_settings, reader_store
    from api.settings import Settings, SettingsError

    tokens = tmp_path / "tokens.json"
    token = create_token(tokens, "svc", "read")
    settings = Settings.from_env({"MIERUKA_PLANT": str(DEMO_PLANT), "MIERUKA_STORE": f"sqlite:///{db}",
                                  "MIERUKA_TOKENS": str(tokens), "MIERUKA_REQUEST_TIMEOUT_S": "12.5",
                                  "MIERUKA_CORS_ORIGINS": "http://a.example, http://b.example"})
    assert settings.tokens_file == tokens and settings.request_timeout_s == 12.5
    assert settings.cors_origins == ("http://a.example", "http://b.example") and not settings.anonymous_read
    async with serve(create_app_from_settings(settings)) as c:
        assert (await c.get("/api/v1/lines")).status_code == 401
        assert (await c.get("/api/v1/lines", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    with pytest.raises(SettingsError, match="does not exist; the collector"):
        reader_store(f"sqlite:///{tmp_path / 'nope.db'}")
    assert not (tmp_path / "nope.db").exists()
