"""The `mieruka` command: one entry point wiring the parts together.

Exit codes: 0 ok, 1 runtime failure, 2 bad input (plant file, arguments, samples file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core.plant import CredentialError, Plant, PlantFileError, load_plant
from core.store.base import Store, StoreError
from core.store.schema import SchemaError

if TYPE_CHECKING:
    from collector.metrics import CollectorMetrics

log = logging.getLogger("mieruka")

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """Input the user must fix; printed as is, exit code 2."""


def _iso(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not an ISO-8601 time like 2026-11-27T08:00:00+09:00") from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"'{value}' has no offset; add one, e.g. {value}+09:00 or {value}Z")
    return t


def _plant(path: str) -> Plant:
    return load_plant(path)


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _stop_after(stop: asyncio.Event, seconds: float | None) -> None:
    if seconds is None:
        await stop.wait()
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    stop.set()


# ---- commands --------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    _plant(args.file)
    print("ok")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.scale is not None:
        return _simulate_scale(args)
    if args.plant is None or args.truth is None:
        raise BadInput("--plant and --truth are required (or --scale LINESxMACHINES with --write-plant FILE)")
    plant = _plant(args.plant)
    if args.start is not None or args.end is not None or args.samples is not None:
        if args.start is None or args.end is None or args.samples is None:
            raise BadInput("fast-forward needs --from, --to and --samples together")
        if args.end <= args.start:
            raise BadInput(f"--to ({args.end.isoformat()}) must be after --from ({args.start.isoformat()})")
        from simulators.fastforward import run_fast_forward

        run_fast_forward(plant, args.seed, args.start, args.end, Path(args.samples), Path(args.truth))
        print(f"wrote {args.samples} and {args.truth}")
        return EXIT_OK

    from simulators.faults import FaultSpecError, check_sources, load_faults, parse_fault
    from simulators.live import run_live

    try:
        faults = [parse_fault(f) for f in args.fault]
        if args.faults:
            faults += load_faults(Path(args.faults))
        check_sources(faults, plant)
    except FaultSpecError as e:
        raise BadInput(str(e)) from None

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop(stop)
        await run_live(plant, args.seed, duration_s=args.duration, truth_path=Path(args.truth), stop=stop,
                       faults=faults)

    asyncio.run(main())
    return EXIT_OK


def _simulate_scale(args: argparse.Namespace) -> int:
    if args.write_plant is None:
        raise BadInput("--scale needs --write-plant FILE (where the generated plant file goes)")
    if args.plant is not None:
        raise BadInput("--scale generates its plant; use --write-plant FILE instead of --plant")
    if getattr(args, "fault", None) or getattr(args, "faults", None):
        raise BadInput("--fault/--faults are for the live simulators of a plant file, not --scale")
    from simulators.scale import ScaleInputError, run_scale

    try:
        return run_scale(args.scale, args.signals_per_machine, Path(args.write_plant), processes=args.processes,
                         duration_s=args.duration, seed=args.seed, truth=Path(args.truth) if args.truth else None,
                         base_port=args.base_port, rate_hz=args.rate, verbose=args.verbose)
    except ScaleInputError as e:
        raise BadInput(str(e)) from None


def cmd_collect(args: argparse.Namespace) -> int:
    plant = _plant(args.plant)
    lines = set(args.lines.split(",")) if args.lines else None
    from collector.deadletter import DeadLetters
    from collector.pipeline import Collector, build_sources
    from collector.sources import SourceFailed
    from collector.spool import Spool, SpoolError

    try:
        build_sources(plant, lines)  # a plant the collector cannot read fails here, before any connection
    except ValueError as e:
        raise BadInput(f"{args.plant}: {e}") from None
    # passwords from password_env/password_file: a missing one fails now, not at every reconnect
    for source_id in sorted({m.source for ln, m in plant.machines() if lines is None or ln.id in lines}):
        try:
            plant.sources[source_id].resolve_password()
        except CredentialError as e:
            raise BadInput(f"{args.plant}: sources.{source_id}: {e}") from None
    if args.spool_max_mb <= 0:
        raise BadInput(f"--spool-max-mb must be positive, got {args.spool_max_mb}")
    _check_clock_ahead(args.max_clock_ahead_s)
    store = _open_store_url(args.store)
    spool_dir = Path(args.spool_dir)
    dead_path = Path(args.dead_letters) if args.dead_letters else spool_dir / "dead-letters.jsonl"
    try:
        spool = Spool(spool_dir, max_bytes=int(args.spool_max_mb * (1 << 20)), when_full=args.spool_full,
                      synchronous=args.spool_sync)
    except SpoolError as e:
        raise BadInput(f"--spool-dir: {e}") from None

    async def main() -> int:
        stop = asyncio.Event()
        _install_stop(stop)
        dead = DeadLetters(dead_path, logging.getLogger("collector.deadletter"))
        metrics: CollectorMetrics | None = None
        try:
            collector = Collector(plant, store, spool=spool, lines=lines, client_id=args.client_id,
                                  dead_letters=dead, batch_size=args.batch_size, flush_interval_s=args.flush_interval,
                                  max_clock_ahead_s=args.max_clock_ahead_s)
            if args.metrics_port is not None:
                from collector.metrics import CollectorMetrics  # prometheus_client: only when asked for

                metrics = CollectorMetrics(collector)
                collector.writer.on_write = metrics.observe_write
                try:
                    port = metrics.serve(args.metrics_port, args.metrics_host)
                except OSError as e:
                    log.error("cannot serve metrics on %s:%d: %s", args.metrics_host, args.metrics_port, e)
                    return EXIT_FAIL
                log.info("metrics on http://%s:%d/metrics", args.metrics_host, port)
            await store.open()
            failed: list[BaseException] = []
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(collector.run(stop), name="collector")
                    tg.create_task(_stop_after(stop, args.duration), name="duration")
            except* SourceFailed as group:
                failed.extend(group.exceptions)
            if failed:
                # facts made so far are in the durable spool; unacknowledged messages are re-delivered
                for err in failed:
                    log.error("collector stopped: %s", err)
                return EXIT_FAIL
        finally:
            await store.close()
            if metrics is not None:
                metrics.close()
            dead.close()
        return EXIT_OK

    try:
        return asyncio.run(main())
    except ValueError as e:  # saved state of another version
        raise BadInput(f"--spool-dir {spool_dir}: {e}") from None
    finally:
        spool.close()


def _check_clock_ahead(seconds: float) -> None:
    if not (seconds >= 0 and seconds != float("inf")):
        raise BadInput(f"--max-clock-ahead-s must be a number of seconds >= 0, got {seconds}")


def cmd_spool_retry_quarantine(args: argparse.Namespace) -> int:
    from collector.spool import Spool, SpoolError

    spool_dir = Path(args.spool_dir)
    if not (spool_dir / "spool.sqlite3").exists():
        raise BadInput(f"--spool-dir {spool_dir}: no spool there")
    try:
        with Spool(spool_dir) as spool:  # takes the directory lock: refused while a collector runs on it
            n = spool.requeue_quarantine()
    except SpoolError as e:
        raise BadInput(f"--spool-dir: {e}") from None
    print(f"{n} quarantined facts queued again; the next mieruka collect on {spool_dir} writes them "
          "(facts the store refuses again go back to the quarantine)")
    return EXIT_OK


def cmd_spool_show_quarantine(args: argparse.Namespace) -> int:
    from collector.spool import Spool, SpoolError

    spool_dir = Path(args.spool_dir)
    if not (spool_dir / "spool.sqlite3").exists():
        raise BadInput(f"--spool-dir {spool_dir}: no spool there")
    try:
        with Spool(spool_dir) as spool:
            rows = spool.quarantined()
    except SpoolError as e:
        raise BadInput(f"--spool-dir: {e}") from None
    for _, when, reason, f in rows:
        print(f"{when.isoformat(timespec='seconds')}  {f.key}  value={f.value!r}  {reason}")
    print(f"{len(rows)} quarantined facts")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from mieruka.status import DEFAULT_METRICS_URL, run_status

    return run_status(args.metrics or DEFAULT_METRICS_URL, sys.stdout)


def _store_url(url: str | None) -> str:
    from core.store import STORE_ENV

    url = url or os.environ.get(STORE_ENV)  # the environment keeps a password off the command line
    if not url:
        raise BadInput(f"--store URL is required (or set {STORE_ENV})")
    return url


def _open_store_url(url: str | None) -> Store:
    from core.store import open_store

    url = _store_url(url)
    try:
        return open_store(url)
    except ValueError as e:
        raise BadInput(f"--store: {e}") from None


def cmd_import(args: argparse.Namespace) -> int:
    plant = _plant(args.plant)
    from collector.importer import ImportFileError, ImportRejected, import_samples

    store = _open_store_url(args.store)
    path = Path(args.samples)
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    _check_clock_ahead(args.max_clock_ahead_s)

    async def main() -> int:
        await store.open()
        try:
            report = await import_samples(plant, store, path, skip_bad=args.skip_bad,
                                          max_clock_ahead_s=args.max_clock_ahead_s)
        except ImportFileError as e:
            print(f"{path}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except ImportRejected as e:
            for line_no, reason in e.report.skipped[:50]:
                print(f"{path}:{line_no}: {reason}", file=sys.stderr)
            more = len(e.report.skipped) - 50
            if more > 0:
                print(f"{path}: ... and {more} more bad rows", file=sys.stderr)
            print(f"{path}: nothing imported ({len(e.report.skipped)} bad rows); fix them or pass --skip-bad",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        finally:
            await store.close()
        for line_no, reason in report.skipped[:50]:
            print(f"{path}:{line_no}: skipped: {reason}", file=sys.stderr)
        print(f"imported {report.imported} of {report.rows} rows ({report.facts_written} facts)")
        return EXIT_OK

    return asyncio.run(main())


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring a store to this code's schema version (core.store.schema); --dry-run only says what it would do."""
    from core.store import mask_url, open_store
    from core.store.schema import SCHEMA_VERSION, VersionedStore, check_version

    url = _store_url(args.store)
    try:
        store = open_store(url, reader=True, migrate=False)
    except ValueError as e:
        raise BadInput(f"--store: {e}") from None
    path = getattr(store, "path", None)
    if isinstance(path, Path) and not path.is_file():
        raise BadInput(f"--store: the SQLite store {path} does not exist")

    assert isinstance(store, VersionedStore)
    store.check_schema = False  # look first: open() neither checks nor migrates
    name = mask_url(url)

    async def main() -> int:
        await store.open()
        try:
            found = await store.schema_version()
            todo = check_version(found, name, name, reader=False)  # a newer store: SchemaTooNew, exit 2
            if not todo:
                print(f"{name}: schema {found}, up to date")
                return EXIT_OK
            for m in todo:
                print(f"{name}: schema {m.version - 1} -> {m.version}: {m.summary}")
            if args.dry_run:
                print(f"{name}: schema {found}; would migrate to {SCHEMA_VERSION} (dry run: nothing changed)")
                return EXIT_OK
            await store.migrate()
            print(f"{name}: migrated from schema {found} to {await store.schema_version()}")
            return EXIT_OK
        finally:
            await store.close()

    return asyncio.run(main())


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_backup(args: argparse.Namespace) -> int:
    from core.store.backup import BackupError, backup

    url = _store_url(args.store)
    try:
        backup(url, Path(args.out), spool=Path(args.spool) if args.spool else None,
               tokens=Path(args.tokens) if args.tokens else None, progress=_progress)
    except BackupError as e:
        raise BadInput(str(e)) from None
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from core.store.backup import BackupError, restore

    url = _store_url(args.store)
    try:
        restore(Path(args.source), url, spool=Path(args.spool) if args.spool else None,
                tokens=Path(args.tokens) if args.tokens else None, force=args.force, progress=_progress)
    except BackupError as e:
        raise BadInput(str(e)) from None
    return EXIT_OK


def _check_reader_schema(store: Store) -> None:
    """Open and close the API's store once: a schema it cannot read is bad input (exit 2) now, not a
    failed startup later; a store that is down is the API's to wait for."""
    from core.store.base import StoreUnavailable

    async def probe() -> None:
        try:
            await store.open()
        except StoreUnavailable:
            return
        await store.close()

    asyncio.run(probe())


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_api(args: argparse.Namespace) -> int:
    import os

    from api.settings import Settings, SettingsError
    from api.tokens import TOKENS_ENV

    plant = _plant(args.plant)
    import uvicorn

    from api.app import create_app, reader_store

    store_url = _store_url(args.store)
    try:
        store = reader_store(store_url)
        env = Settings.from_env({**os.environ, "MIERUKA_PLANT": args.plant})
    except ValueError as e:
        raise BadInput(f"--store: {e}" if isinstance(e, SettingsError) else str(e)) from None
    _check_reader_schema(store)
    tokens = args.tokens or os.environ.get(TOKENS_ENV) or None
    timeout_s = args.request_timeout if args.request_timeout is not None else env.request_timeout_s
    if timeout_s <= 0:
        raise BadInput(f"--request-timeout must be positive, got {timeout_s}")
    refresh_s = args.refresh_period if args.refresh_period is not None else env.refresh_period_s
    if not 0 <= refresh_s <= 3600:
        raise BadInput(f"--refresh-period must be 0 (off) to 3600 seconds, got {refresh_s}")
    settings = Settings(Path(args.plant), store_url, tokens_file=Path(tokens) if tokens else None,
                        anonymous_read=args.anonymous_read, cors_origins=tuple(args.cors_origin) or env.cors_origins,
                        request_timeout_s=timeout_s, refresh_period_s=refresh_s)
    try:
        auth = settings.auth()
    except SettingsError as e:
        raise BadInput(f"--tokens: {e}") from None
    has_tokens = auth.tokens is not None and bool(auth.tokens.records())
    if not has_tokens and not auth.anonymous_read:
        if not _is_loopback(args.host):
            raise BadInput(f"--host {args.host} is reachable from other machines, but no token exists and "
                           "--anonymous-read is not given, so the API could answer nobody; create a token "
                           "('mieruka token create --role read --name NAME --tokens FILE') and pass --tokens FILE "
                           f"(or {TOKENS_ENV}), or pass --anonymous-read to let anyone read")
        log.warning("no tokens and no --anonymous-read: every request but /healthz will be answered 401")
    if auth.anonymous_read:
        log.info("anonymous reads are on: read routes answer without a token")
    from api.routes.stream import uvicorn_server

    app = create_app(plant, store, auth=auth, request_timeout_s=settings.request_timeout_s,
                     cors_origins=settings.cors_origins, refresh=settings.refresh_period_s,
                     alerts=not args.no_alerts)
    uvicorn_server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info")).run()
    return EXIT_OK


def cmd_alerts_test(args: argparse.Namespace) -> int:
    from api.alerts import send_test

    plant = _plant(args.plant)
    if not plant.alerts.webhooks:
        raise BadInput(f"{args.plant} declares no webhooks; add alerts.webhooks (see the README, 'Alerts')")
    if args.webhook is not None and plant.alerts.webhook(args.webhook) is None:
        known = ", ".join(w.id for w in plant.alerts.webhooks)
        raise BadInput(f"--webhook: {args.plant} has no webhook '{args.webhook}'; use one of: {known}")
    results = asyncio.run(send_test(plant, args.webhook, timeout_s=args.timeout))
    for wid, (ok, reason) in results.items():
        print(f"webhook {wid}: {'ok' if ok else 'FAILED'} ({reason})")
    return EXIT_OK if all(ok for ok, _ in results.values()) else EXIT_FAIL


def _tokens_path(args: argparse.Namespace) -> Path:
    import os

    from api.tokens import TOKENS_ENV

    path = args.tokens or os.environ.get(TOKENS_ENV)
    if not path:
        raise BadInput(f"say which token file: --tokens FILE or the environment variable {TOKENS_ENV}")
    return Path(path)


def cmd_token(args: argparse.Namespace) -> int:
    from api.tokens import TokenFileError, create_token, read_tokens, revoke_token

    path = _tokens_path(args)
    try:
        if args.action == "create":
            token = create_token(path, args.name, args.role)
            print(token)
            print(f"token '{args.name}' (role {args.role}) created; only its hash is kept in {path}, so this is "
                  "the only time it is shown", file=sys.stderr)
        elif args.action == "list":
            records = read_tokens(path)
            if not records:
                print(f"no tokens in {path}", file=sys.stderr)
            width = max([4, *(len(r.name) for r in records)])
            if records:
                print(f"{'name':<{width}}  {'role':<8}  created")
            for r in records:
                print(f"{r.name:<{width}}  {r.role:<8}  {r.created}")
        else:
            gone = revoke_token(path, args.name)
            print(f"token '{gone.name}' (role {gone.role}) revoked; a running API refuses it from its next request")
    except TokenFileError as e:
        raise BadInput(str(e)) from None
    return EXIT_OK


def _read_token_file(path: str | None) -> str | None:
    """The bearer token in ``--token-file`` (None without one); a file that cannot be read is bad input."""
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise BadInput(f"--token-file {path}: {e.strerror}") from None


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.app import run_dashboard

    token = _read_token_file(args.token_file)
    operator_token = None
    if args.operator_token_file:
        from dashboard.client import TokenSource

        try:
            operator_token = TokenSource(Path(args.operator_token_file))
        except ValueError as e:
            raise BadInput(f"--operator-token-file {e}") from None
    if args.refresh_ms < 500:
        raise BadInput(f"--refresh-ms must be at least 500, got {args.refresh_ms}")
    run_dashboard(args.api, host=args.host, port=args.port, refresh_ms=args.refresh_ms, token=token,
                  operator_token=operator_token)
    return EXIT_OK


CHROMIUM_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    """Debian's ``chromium`` (or ``chromium-browser`` elsewhere) on PATH; never a downloaded browser."""
    import shutil

    return next((p for p in (shutil.which(n) for n in CHROMIUM_NAMES) if p is not None), None)


def print_pdf(html_file: Path, out: Path, timeout_s: float) -> None:
    """Print ``html_file`` to ``out`` with headless Chromium (its own throwaway profile, so it neither
    meets a running browser nor leaves anything behind); ``RuntimeError`` saying why when it cannot."""
    import subprocess
    import tempfile

    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {' and '.join(CHROMIUM_NAMES)}); install it "
                                "(Debian: apt-get install chromium) to print reports")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mieruka-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-pdf-header-footer", "--print-to-pdf-no-header", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={profile}", f"--print-to-pdf={out}", html_file.resolve().as_uri()]
        # its own process group: on a time-out the renderer and GPU children go with it
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(f"Chromium did not print within {timeout_s:g} s; try a larger --timeout") from None
    if proc.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"Chromium failed to print the report (exit {proc.returncode}): {' | '.join(tail)}")


def cmd_report(args: argparse.Namespace) -> int:
    """Fetch the shift report from the API, render it with the dashboard's page, print it to PDF."""
    import tempfile

    from core.oee import OeeError, parse_day
    from dashboard.client import ApiClient, ApiResponseError, ApiUnreachable
    from dashboard.report import render_report

    try:
        parse_day(args.date)
    except OeeError as e:
        raise BadInput(str(e)) from None
    out = Path(args.out).resolve()
    if out.suffix.lower() != ".pdf":
        raise BadInput(f"--out {out}: the report is a PDF; name the file *.pdf")
    token = _read_token_file(args.token_file)
    with ApiClient(args.api, timeout_s=args.timeout, token=token) as api:
        try:
            data = api.shift_report(args.date, args.shift, lang=args.lang, as_of=args.as_of)
        except ApiUnreachable as e:
            print(f"mieruka report: the API at {args.api} cannot be reached ({e}); is it running?", file=sys.stderr)
            return EXIT_FAIL
        except ApiResponseError as e:
            if 400 <= e.status < 500:
                raise BadInput(f"the API refused the report (HTTP {e.status}): {e.detail}") from None
            print(f"mieruka report: the API failed (HTTP {e.status}): {e.detail}", file=sys.stderr)
            return EXIT_FAIL
    page = render_report(data, "ja" if (args.lang or data["site"]["locale"]) == "ja" else "en",
                         datetime.now().astimezone())
    with tempfile.TemporaryDirectory(prefix="mieruka-report-") as tmp:
        html_file = Path(tmp) / "report.html"
        html_file.write_text(page, encoding="utf-8")
        try:
            print_pdf(html_file, out, args.timeout)
        except FileNotFoundError as e:
            print(f"mieruka report: {e}", file=sys.stderr)
            return EXIT_FAIL
        except RuntimeError as e:
            print(f"mieruka report: {e}", file=sys.stderr)
            return EXIT_FAIL
    print(f"wrote {out} ({len(data['lines'])} lines, shift {data['shift']['name']} of {data['date']}"
          f"{'' if data['complete'] else ', so far'})")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from mieruka.demo import DemoError, DemoOptions, run_demo

    opts = DemoOptions(
        plant=Path(args.plant) if args.plant else None,
        data_dir=Path(args.data_dir),
        api_port=args.api_port,
        dashboard_port=args.dashboard_port,
        duration_s=args.duration,
        seed=args.seed,
    )
    try:
        return asyncio.run(run_demo(opts))
    except DemoError as e:
        raise BadInput(str(e)) from None


def cmd_truth_summarize(args: argparse.Namespace) -> int:
    import json

    from simulators.ledger import summarize_file, summary_dict, summary_text

    path = Path(args.truth)
    if not path.is_file():
        raise BadInput(f"--truth {path}: no such file")
    if args.end <= args.start:
        raise BadInput(f"--end ({args.end.isoformat()}) must be after --start ({args.start.isoformat()})")
    plant = _plant(args.plant) if args.plant else None
    try:
        summary = summarize_file(path, args.start, args.end)
    except ValueError as e:
        raise BadInput(str(e)) from None
    except OSError as e:
        raise BadInput(f"--truth {path}: {e.strerror or e}") from None
    if args.json:
        print(json.dumps(summary_dict(summary, plant), ensure_ascii=False, indent=2))
    else:
        print(summary_text(summary, plant), end="")
    return EXIT_OK


# ---- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mieruka", description="Production visibility for small and medium factories.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check-config", help="validate a plant file; prints 'ok' or one line per problem")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    s = sub.add_parser("simulate", help="run the bundled PLC simulators live, or fast-forward to files")
    s.add_argument("--plant", default=None, help="the plant file (required unless --scale)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--truth", default=None, help="ground-truth ledger (JSONL) to write (with --scale: optional, "
                                                   "one file per server process next to it)")
    s.add_argument("--scale", default=None, metavar="LINESxMACHINES",
                   help="scale mode: generate a synthetic plant (OPC UA) and serve it over several processes")
    s.add_argument("--signals-per-machine", type=int, default=8, metavar="K", help="scale: signals per machine")
    s.add_argument("--write-plant", default=None, metavar="FILE", help="scale: where to write the generated plant")
    s.add_argument("--processes", type=int, default=None, metavar="N",
                   help="scale: server processes (default: from the load and the measured capacity per process)")
    s.add_argument("--base-port", type=int, default=None, help="scale: first port to try (default 4840)")
    s.add_argument("--rate", type=float, default=1.0, metavar="HZ", help="scale: gauge updates per second")
    s.add_argument("--duration", type=float, default=None, help="live: stop after S seconds")
    s.add_argument("--from", dest="start", type=_iso, default=None, help="fast-forward: window start (ISO)")
    s.add_argument("--to", dest="end", type=_iso, default=None, help="fast-forward: window end (ISO)")
    s.add_argument("--samples", default=None, help="fast-forward: raw samples CSV to write")
    s.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="live: inject a fault, e.g. restart@60s, rollover, silence@30s+20s, malformed:5%% "
                        "(repeatable; see simulators/faults.py)")
    s.add_argument("--faults", default=None, metavar="FILE", help="live: a YAML/JSON list of faults")
    s.set_defaults(func=cmd_simulate)

    co = sub.add_parser("collect", help="collect OPC UA / MQTT signals into a store")
    co.add_argument("--plant", required=True)
    co.add_argument("--store", default=None, help="sqlite:///file.db or influxdb://[user[:pw]@]host:port/db "
                                                   "(default: $MIERUKA_STORE)")
    co.add_argument("--lines", default=None, help="only these lines (comma-separated ids)")
    co.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    co.add_argument("--spool-dir", default="mieruka-spool", metavar="DIR",
                    help="durable spool between normalize and the store; facts and the normalizer state wait "
                         "here while the store is down and survive a crash (default: ./mieruka-spool)")
    co.add_argument("--spool-max-mb", type=float, default=1024.0, metavar="MB",
                    help="bound of the spooled payload (default 1024 MB: about 14 million facts)")
    co.add_argument("--spool-full", choices=["block", "drop-oldest"], default="block",
                    help="when the spool is full: 'block' stops taking data (MQTT messages stay unacknowledged "
                         "at the broker) until the store drains it; 'drop-oldest' deletes the oldest facts, "
                         "counted and logged (default: block)")
    co.add_argument("--spool-sync", choices=["full", "normal"], default="full",
                    help="'full' fsyncs every commit (survives power loss); 'normal' survives a crash of the "
                         "collector but maybe not of the machine (default: full)")
    co.add_argument("--client-id", default=None,
                    help="fixed MQTT client id: a persistent session, so the broker keeps QoS 1 messages while "
                         "the collector is away (default: the plant's client_id, else a clean session)")
    co.add_argument("--dead-letters", default=None, metavar="FILE",
                    help="JSONL file for refused input with reason and raw payload "
                         "(default: dead-letters.jsonl in the spool directory)")
    co.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                    help="serve Prometheus metrics on this port (e.g. 9464; 0 picks a free one)")
    co.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    co.add_argument("--batch-size", type=int, default=5000, help="facts per store write (default 5000)")
    co.add_argument("--flush-interval", type=float, default=1.0, metavar="S",
                    help="write at least this often when facts wait (default 1 s)")
    co.add_argument("--max-clock-ahead-s", type=float, default=3600.0, metavar="S",
                    help="refuse source times more than S seconds ahead of this computer's clock, as dead letters "
                         "of kind bad_time (default 3600); times before 2000 are always refused")
    co.set_defaults(func=cmd_collect)

    sp = sub.add_parser("spool", help="look after a collector's spool (while that collector is stopped)")
    spsub = sp.add_subparsers(dest="spool_command", required=True)
    rq = spsub.add_parser("retry-quarantine", help="queue the facts the store refused again, for the next "
                                                   "mieruka collect to write")
    rq.add_argument("--spool-dir", required=True, metavar="DIR")
    rq.set_defaults(func=cmd_spool_retry_quarantine)
    sq = spsub.add_parser("show-quarantine", help="list the facts the store refused, with its reasons")
    sq.add_argument("--spool-dir", required=True, metavar="DIR")
    sq.set_defaults(func=cmd_spool_show_quarantine)

    st = sub.add_parser("status", help="what a running collector is doing, from its metrics")
    st.add_argument("--metrics", default=None, metavar="URL",
                    help="the collector's metrics URL (default http://127.0.0.1:9464/metrics)")
    st.set_defaults(func=cmd_status)

    im = sub.add_parser("import", help="import recorded raw samples (CSV or JSONL) through normalize into a store")
    im.add_argument("--plant", required=True)
    im.add_argument("--store", default=None, help="store URL (default: $MIERUKA_STORE)")
    im.add_argument("--skip-bad", action="store_true", help="import the good rows even if some are bad")
    im.add_argument("--max-clock-ahead-s", type=float, default=3600.0, metavar="S",
                    help="rows more than S seconds ahead of this computer's clock are bad (default 3600)")
    im.add_argument("samples")
    im.set_defaults(func=cmd_import)

    mg = sub.add_parser("migrate", help="bring a store to this mieruka's schema version (the collector and import "
                                        "do it when they open a store; the API does not)")
    mg.add_argument("--store", default=None, help="store URL (default: $MIERUKA_STORE)")
    mg.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    mg.set_defaults(func=cmd_migrate)

    bk = sub.add_parser("backup", help="back up a store (online, while the collector writes), and optionally the "
                                       "spool and the token file, into a new directory")
    bk.add_argument("--store", default=None, help="store URL (default: $MIERUKA_STORE)")
    bk.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) directory for the backup")
    bk.add_argument("--spool", default=None, metavar="FILE",
                    help="the collector's spool: its spool.sqlite3 (or the --spool-dir holding it)")
    bk.add_argument("--tokens", default=None, metavar="FILE", help="the API's token file")
    bk.set_defaults(func=cmd_backup)

    rs = sub.add_parser("restore", help="restore a backup into a store (and the spool, the token file)")
    rs.add_argument("--from", dest="source", required=True, metavar="DIR", help="the backup directory")
    rs.add_argument("--store", default=None, help="store URL to restore into (default: $MIERUKA_STORE)")
    rs.add_argument("--spool", default=None, metavar="FILE", help="where the spool goes (a new file)")
    rs.add_argument("--tokens", default=None, metavar="FILE", help="where the token file goes (a new file)")
    rs.add_argument("--force", action="store_true",
                    help="restore into a store (spool, token file) that holds data: SQLite files are replaced, an "
                         "InfluxDB database gets the backup's points added")
    rs.set_defaults(func=cmd_restore)

    a = sub.add_parser("api", help="serve the REST API")
    a.add_argument("--plant", required=True)
    a.add_argument("--store", default=None, help="store URL (default: $MIERUKA_STORE)")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8000)
    a.add_argument("--tokens", default=None, metavar="FILE",
                   help="token file ('mieruka token create'; default: $MIERUKA_TOKENS); re-read when it changes")
    a.add_argument("--anonymous-read", action="store_true",
                   help="let requests without a token read (every route today); a bad token is still refused")
    a.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser requests from this origin (repeatable; default: $MIERUKA_CORS_ORIGINS, "
                        "comma-separated; none)")
    a.add_argument("--request-timeout", type=float, default=None, metavar="S",
                   help="answer 503 to a request not done within S seconds (default: $MIERUKA_REQUEST_TIMEOUT_S, "
                        "else 30)")
    a.add_argument("--refresh-period", type=float, default=None, metavar="S",
                   help="figures asked about 'now' are computed once per S seconds for every client, 'now' being "
                        "the period's start; the stream's period too (default: $MIERUKA_REFRESH_PERIOD_S, else 5; "
                        "0: compute every request)")
    a.add_argument("--no-alerts", action="store_true",
                   help="do not check the plant file's alert rules in this process (replicas that check them "
                        "send each message once: they claim it in the store)")
    a.set_defaults(func=cmd_api)

    al = sub.add_parser("alerts", help="alert webhooks: send a test message")
    als = al.add_subparsers(dest="action", required=True, metavar="ACTION")
    at = als.add_parser("test", help="send a test message to each webhook of the plant file (or one); exit 0 when "
                                     "all answered 2xx, 1 otherwise")
    at.add_argument("--plant", required=True)
    at.add_argument("--webhook", default=None, metavar="ID", help="only this webhook")
    at.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for each answer")
    at.set_defaults(func=cmd_alerts_test)

    tk = sub.add_parser("token", help="API tokens: create (printed once; only its hash is kept), list, revoke")
    tks = tk.add_subparsers(dest="action", required=True, metavar="ACTION")
    tc = tks.add_parser("create", help="create a token and print it (the only time it is shown)")
    tc.add_argument("--role", required=True, choices=["read", "operator", "admin"],
                    help="read ⊂ operator ⊂ admin")
    tc.add_argument("--name", required=True, help="who or what holds it, e.g. wallboard-hall-1")
    tl = tks.add_parser("list", help="names, roles and creation times (never the tokens)")
    tr_ = tks.add_parser("revoke", help="delete a token; a running API refuses it from its next request")
    tr_.add_argument("--name", required=True)
    for t in (tc, tl, tr_):
        t.add_argument("--tokens", default=None, metavar="FILE", help="the token file (default: $MIERUKA_TOKENS)")
        t.set_defaults(func=cmd_token)

    d = sub.add_parser("dashboard", help="serve the wall-board dashboard (reads the API)")
    d.add_argument("--api", required=True, help="API base URL, e.g. http://127.0.0.1:8000")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8050)
    d.add_argument("--token-file", default=None, help="file holding an API token (sent as Bearer)")
    d.add_argument("--operator-token-file", default=None, metavar="FILE",
                   help="file holding a token of role operator: the operator page (/operator/<line>) writes with "
                        "it (server-side only; re-read when the file changes); without it that page only says so")
    d.add_argument("--refresh-ms", type=int, default=5000, metavar="MS",
                   help="refresh interval of every page (default 5000; each refresh is budgeted a third of it)")
    d.set_defaults(func=cmd_dashboard)

    rp = sub.add_parser("report", help="print a shift report (日報) of every line to PDF, from the API")
    rp.add_argument("--api", required=True, help="API base URL, e.g. http://127.0.0.1:8000")
    rp.add_argument("--token-file", default=None, help="file holding an API token with role read (sent as Bearer)")
    rp.add_argument("--date", required=True, help="the local date the shift starts on, YYYY-MM-DD")
    rp.add_argument("--shift", required=True, help="a shift id from the plant's calendar, e.g. day")
    rp.add_argument("--lang", choices=["ja", "en"], default=None, help="default: the site's locale")
    rp.add_argument("--as-of", dest="as_of", type=_iso, default=None,
                    help="report as at this instant (ISO with offset; default now): a running shift is so far")
    rp.add_argument("--out", required=True, metavar="FILE.pdf", help="the PDF to write (A4 landscape, a page per line)")
    rp.add_argument("--timeout", type=float, default=120.0, metavar="S",
                    help="time limit of the API request and of printing, each (default 120 s)")
    rp.set_defaults(func=cmd_report)

    de = sub.add_parser("demo", help="simulated plant + collector + embedded store + API + dashboard in one command")
    de.add_argument("--plant", default=None, help="plant file (default: the bundled demo plant)")
    de.add_argument("--data-dir", default="mieruka-data")
    de.add_argument("--api-port", type=int, default=8000)
    de.add_argument("--dashboard-port", type=int, default=8050)
    de.add_argument("--duration", type=float, default=None, help="stop after S seconds (default: run until Ctrl-C)")
    de.add_argument("--seed", type=int, default=1)
    de.set_defaults(func=cmd_demo)

    tr = sub.add_parser("truth", help="ground-truth ledger tools")
    trs = tr.add_subparsers(dest="tool", required=True, metavar="TOOL")
    ts = trs.add_parser("summarize", help="parts, seconds per state and per stop reason in a window, per machine "
                                          "(and per line with --plant)")
    ts.add_argument("--truth", required=True, help="the ledger (JSONL) a simulator wrote")
    ts.add_argument("--start", type=_iso, required=True, help="window start (ISO with offset)")
    ts.add_argument("--end", type=_iso, required=True, help="window end, exclusive (ISO with offset)")
    ts.add_argument("--plant", default=None, help="plant file: adds line figures (good of the output machines)")
    ts.add_argument("--json", action="store_true", help="JSON instead of text (shape in the README)")
    ts.set_defaults(func=cmd_truth_summarize)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions", "werkzeug", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # asyncua logs every publish at INFO and a traceback per lost connection; our sources log state changes
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except PlantFileError as e:
        print(str(e), file=sys.stderr)
        return EXIT_BAD_INPUT
    except CredentialError as e:  # a source's password_env/password_file, e.g. for the simulators
        print(f"mieruka {args.command}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BadInput as e:
        print(f"mieruka {args.command}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SchemaError as e:  # a store too new for this code, or one a reader must not read before a migration
        print(f"mieruka {args.command}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreError as e:
        print(f"mieruka {args.command}: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
