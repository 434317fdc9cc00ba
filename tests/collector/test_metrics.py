"""CollectorMetrics over a fake collector (dataclasses holding the pipeline's own stats classes: a
seam we own, checked by mypy against ``collector.metrics.Observed``), scraped over real HTTP on
127.0.0.1."""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.metrics import CollectorMetrics
from collector.pipeline import CollectorStats
from collector.sources import SourceStats
from collector.spool import SpoolStats


@dataclass
class FakeSpool:
    stats: SpoolStats = field(default_factory=lambda: SpoolStats(0, 0, 0, 64 << 20, None))


@dataclass
class FakeSource:
    stats: SourceStats = field(default_factory=SourceStats)


@dataclass
class FakeCollector:
    stats: CollectorStats = field(default_factory=CollectorStats)
    sources: dict[str, FakeSource] = field(default_factory=dict)
    spool: FakeSpool | None = None


def troubled_collector() -> FakeCollector:
    """Store down, spool half full with a 5-minute-old fact, one source disconnected, dead letters."""
    plc = SourceStats(connected=True, connects=1, messages=900, samples=1200)
    broker = SourceStats(connected=False, connects=4, connect_failures=7, losses=3, messages=500, samples=480,
                         restarts=1, errors=Counter({"not_json": 5, "wrong_type": 2}))
    return FakeCollector(
        stats=CollectorStats(samples_in=1680, facts_out=900, facts_written=12345, pending=1500, write_failures=17,
                        facts_rejected=3, facts_dropped=0, dead_letters=Counter({"not_json": 5, "unmapped_state": 1}),
                        last_flush=datetime.now(UTC) - timedelta(minutes=5), store_up=False, acks=470,
                        facts_by_source=Counter({"plc-1": 600, "broker": 300}), offline_facts=2,
                        silent_facts=4),
        sources={"plc-1": FakeSource(plc), "broker": FakeSource(broker)},
        spool=FakeSpool(SpoolStats(facts=1500, batches=3, bytes=32 << 20, max_bytes=64 << 20,
                                       oldest_spooled_at=datetime.now(UTC) - timedelta(minutes=5),
                                       dropped_facts=11, full_events=1, quarantined=3)),
    )


@pytest.fixture
def served() -> Iterator[tuple[CollectorMetrics, FakeCollector, str]]:
    fake = troubled_collector()
    metrics = CollectorMetrics(fake)
    port = metrics.serve(0)
    try:
        yield metrics, fake, f"http://127.0.0.1:{port}/metrics"
    finally:
        metrics.close()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_scrape_reads_the_stats_of_the_moment(served: tuple[CollectorMetrics, FakeCollector, str]) -> None:
    _, fake, url = served
    m = scrape(url)
    # per source
    assert value(m, "mieruka_source_samples_total", source="plc-1") == 1200
    assert value(m, "mieruka_source_messages_total", source="broker") == 500
    assert value(m, "mieruka_source_facts_total", source="plc-1") == 600
    assert value(m, "mieruka_source_connected", source="plc-1") == 1
    assert value(m, "mieruka_source_connected", source="broker") == 0
    assert value(m, "mieruka_source_reconnects_total", source="plc-1") == 0
    assert value(m, "mieruka_source_reconnects_total", source="broker") == 3
    assert value(m, "mieruka_source_losses_total", source="broker") == 3
    assert value(m, "mieruka_source_restarts_total", source="broker") == 1
    assert value(m, "mieruka_source_errors_total", source="broker", kind="not_json") == 5
    assert value(m, "mieruka_source_errors_total", source="broker", kind="wrong_type") == 2
    # store and facts
    assert value(m, "mieruka_facts_written_total") == 12345
    assert value(m, "mieruka_facts_pending") == 1500
    assert value(m, "mieruka_store_up") == 0
    assert value(m, "mieruka_store_write_failures_total") == 17
    assert value(m, "mieruka_facts_rejected_total") == 3
    assert value(m, "mieruka_facts_dropped_total", reason="spool_full") == 11
    assert ("mieruka_facts_dropped_total", frozenset({("reason", "store_rejected")})) not in m  # kept, not dropped
    assert value(m, "mieruka_facts_dropped_total", reason="shutdown") == 0
    assert value(m, "mieruka_offline_facts_total") == 2
    assert value(m, "mieruka_silent_facts_total") == 4
    assert fake.stats.last_flush is not None
    assert value(m, "mieruka_last_write_timestamp_seconds") == pytest.approx(fake.stats.last_flush.timestamp())
    # spool
    assert value(m, "mieruka_spool_facts") == 1500
    assert value(m, "mieruka_spool_bytes") == 32 << 20
    assert value(m, "mieruka_spool_max_bytes") == 64 << 20
    assert value(m, "mieruka_spool_oldest_age_seconds") == pytest.approx(300, abs=30)
    assert value(m, "mieruka_spool_quarantined_facts") == 3
    # input
    assert value(m, "mieruka_dead_letters_total", kind="not_json") == 5
    assert value(m, "mieruka_dead_letters_total", kind="unmapped_state") == 1
    assert value(m, "mieruka_mqtt_acks_total") == 470

    # read at scrape time: later changes show in the next scrape
    assert isinstance(fake.stats, CollectorStats) and fake.spool is not None
    fake.stats.facts_written += 1500
    fake.stats.store_up = True
    fake.stats.dead_letters["bad_time"] += 1
    fake.sources["broker"].stats.connected = True
    fake.spool.stats.facts = 0
    fake.spool.stats.oldest_spooled_at = None
    m = scrape(url)
    assert value(m, "mieruka_facts_written_total") == 13845
    assert value(m, "mieruka_store_up") == 1
    assert value(m, "mieruka_dead_letters_total", kind="bad_time") == 1
    assert value(m, "mieruka_source_connected", source="broker") == 1
    assert value(m, "mieruka_spool_oldest_age_seconds") == 0


def test_write_latency_histogram(served: tuple[CollectorMetrics, FakeCollector, str]) -> None:
    metrics, _, url = served
    metrics.observe_write(0.004, ok=True)
    metrics.observe_write(0.2, ok=True)
    metrics.observe_write(5.5, ok=False)
    m = scrape(url)
    assert value(m, "mieruka_store_write_seconds_count", result="ok") == 2
    assert value(m, "mieruka_store_write_seconds_sum", result="ok") == pytest.approx(0.204)
    assert value(m, "mieruka_store_write_seconds_bucket", result="ok", le="0.005") == 1
    assert value(m, "mieruka_store_write_seconds_bucket", result="ok", le="0.25") == 2
    assert value(m, "mieruka_store_write_seconds_count", result="error") == 1
    assert value(m, "mieruka_store_write_seconds_bucket", result="error", le="5.0") == 0
    assert value(m, "mieruka_store_write_seconds_bucket", result="error", le="10.0") == 1


def test_without_spool() -> None:
    fake = FakeCollector(stats=CollectorStats(facts_written=7, pending=2, facts_dropped=4),
                         sources={"plc-1": FakeSource(SourceStats(connected=True, connects=2, samples=9))})
    metrics = CollectorMetrics(fake)
    port = metrics.serve(0, host="127.0.0.1")
    try:
        m = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        metrics.close()
    assert value(m, "mieruka_facts_written_total") == 7
    assert value(m, "mieruka_store_up") == 1
    assert value(m, "mieruka_facts_dropped_total", reason="shutdown") == 4
    assert value(m, "mieruka_facts_dropped_total", reason="spool_full") == 0
    assert value(m, "mieruka_source_facts_total", source="plc-1") == 0
    assert value(m, "mieruka_source_reconnects_total", source="plc-1") == 1
    assert value(m, "mieruka_mqtt_acks_total") == 0
    assert value(m, "mieruka_last_write_timestamp_seconds") == 0
    assert not any(name.startswith("mieruka_spool_") for name, _ in m)


def test_registry_is_per_collector_and_close_stops_the_server() -> None:
    a, b = CollectorMetrics(FakeCollector()), CollectorMetrics(FakeCollector())  # no duplicate-metric clash
    a.observe_write(0.1, ok=True)
    assert a.registry is not b.registry
    assert b.registry.get_sample_value("mieruka_store_write_seconds_count", {"result": "ok"}) == 0
    port = a.serve(0)
    assert a.port == port
    with pytest.raises(RuntimeError):
        a.serve(0)
    a.close()
    assert a.port is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    a.close()  # twice is fine
    b.close()  # never served
