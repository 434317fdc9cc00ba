"""`mieruka status`: rendering a real scrape of CollectorMetrics (fake collector, 127.0.0.1)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from collector.metrics import CollectorMetrics
from mieruka.status import StatusError, fetch_metrics, human_age, human_bytes, render_status, run_status
from tests.collector.test_metrics import FakeCollector, troubled_collector
from tests.support.services import free_port


@pytest.fixture
def troubled() -> Iterator[tuple[FakeCollector, str]]:
    fake = troubled_collector()
    metrics = CollectorMetrics(fake)
    port = metrics.serve(0)
    try:
        yield fake, f"http://127.0.0.1:{port}/metrics"
    finally:
        metrics.close()


def row(text: str, first: str) -> list[str]:
    """The cells of the table row (or summary line) starting with ``first``."""
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no line starting with {first!r} in:\n{text}")


def test_render_a_troubled_collector(troubled: tuple[FakeCollector, str]) -> None:
    fake, url = troubled
    assert fake.stats.last_flush is not None
    now = fake.stats.last_flush + timedelta(minutes=4, seconds=10)
    text = render_status(fetch_metrics(url), now=now)

    assert "\x1b" not in text
    assert "STORE DOWN" in row(text, "store")[1]
    assert row(text, "written")[1] == "12,345 facts, last write 4 min 10 s ago"
    assert row(text, "pending")[1] == "1,500 facts"
    spool = row(text, "spool")[1]
    assert spool.startswith("1,500 facts · 32.0 MiB of 64.0 MiB (50%) · oldest 5 min")
    assert row(text, "dropped")[1] == "11 spool full"
    assert row(text, "rejected")[1] == "3 facts refused by the store"
    assert row(text, "quarantine")[1].startswith("3 facts the store refused; after fixing the cause, stop the "
                                                 "collector and run mieruka spool retry-quarantine")
    assert row(text, "write retries")[1] == "17"
    assert row(text, "MQTT acks")[1] == "470"
    assert row(text, "silences")[1] == "4 machines made offline: nothing from them for their stale_after_s"

    assert row(text, "source") == ["source", "connected", "samples", "facts", "reconnects", "errors"]
    assert row(text, "broker") == ["broker", "NO", "480", "300", "3", "7"]
    assert row(text, "plc-1") == ["plc-1", "yes", "1,200", "600", "0", "0"]
    assert "dead letters (6)" in text
    assert row(text, "not_json") == ["not_json", "5"]
    assert row(text, "unmapped_state") == ["unmapped_state", "1"]

    # columns line up: names and yes/NO start under their headers, numbers end under theirs
    table = [ln for ln in text.splitlines() if ln.strip().split(" ")[0] in ("source", "broker", "plc-1")]
    assert len(table) == 3
    cells = [list(re.finditer(r"\S+", ln)) for ln in table]
    assert len({(c[0].start(), c[1].start(), *(m.end() for m in c[2:])) for c in cells}) == 1


def test_run_status_prints_and_exits_0_even_with_the_store_down(troubled: tuple[FakeCollector, str]) -> None:
    _, url = troubled
    out, err = io.StringIO(), io.StringIO()
    assert run_status(url, out, err) == 0
    assert url in out.getvalue() and "STORE DOWN" in out.getvalue()
    assert err.getvalue() == ""


def test_a_healthy_collector_without_spool() -> None:
    fake = FakeCollector()
    metrics = CollectorMetrics(fake)
    port = metrics.serve(0)
    try:
        text = render_status(fetch_metrics(f"http://127.0.0.1:{port}/metrics"), now=datetime.now(UTC))
    finally:
        metrics.close()
    assert row(text, "store")[1] == "up"
    assert row(text, "written")[1] == "0 facts, no write yet"
    assert row(text, "spool")[1].startswith("none")
    assert row(text, "dropped")[1] == "none"
    assert row(text, "dead letters")[1] == "none"
    assert row(text, "sources")[1] == "none"


def test_unreachable_collector() -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"  # a free port: nothing listens there
    with pytest.raises(StatusError) as e:
        fetch_metrics(url, timeout_s=2)
    assert url in str(e.value) and "--metrics-port" in str(e.value)

    out, err = io.StringIO(), io.StringIO()
    assert run_status(url, out, err) == 1
    assert out.getvalue() == ""
    assert url in err.getvalue() and "--metrics-port" in err.getvalue()


def test_not_a_collector() -> None:
    with pytest.raises(StatusError, match="no mieruka_"):
        render_status("# HELP up whatever\n# TYPE up gauge\nup 1\n")
    with pytest.raises(StatusError, match="http://"):
        fetch_metrics("127.0.0.1:9464/metrics")


def test_human_units() -> None:
    assert [human_age(s) for s in (0, 42, 60, 250, 3600, 7500, 86400, 97200)] == [
        "0 s", "42 s", "1 min", "4 min 10 s", "1 h", "2 h 5 min", "1 d", "1 d 3 h"]
    assert [human_bytes(b) for b in (512, 1536, 32 << 20, 3 << 30)] == ["512 B", "1.5 KiB", "32.0 MiB", "3.0 GiB"]
