"""Prometheus metrics of a running collector, read from its stats when scraped.

    metrics = CollectorMetrics(collector)
    port = metrics.serve(9464)           # http://127.0.0.1:9464/metrics
    ...
    metrics.observe_write(0.012, ok=True)   # the pipeline, for every store write attempt
    ...
    metrics.close()

The figures are not copied into metric objects as they change: a custom collector reads
``collector.stats``, each source's ``stats`` and the spool's ``stats`` at scrape time (the
pipeline keeps no second set of counters), in a :class:`~prometheus_client.CollectorRegistry`
of its own (never the process-wide default one, so several collectors in one process, as in
the tests, do not clash). Only the write latency is a real :class:`~prometheus_client.Histogram`.

Metrics (counters end in ``_total`` and only grow while the collector runs; a restarted
collector starts again from 0, which Prometheus' ``rate()`` handles):

Per source (label ``source``: the plant file's source id)

- ``mieruka_source_samples_total``: samples the source yielded.
- ``mieruka_source_messages_total``: protocol messages / notifications it received (one MQTT
  message may carry several samples, or none when malformed).
- ``mieruka_source_facts_total``: facts normalized from the source's samples.
- ``mieruka_source_connected``: 1 while connected (and subscribed), else 0.
- ``mieruka_source_reconnects_total``: successful connections after the first one.
- ``mieruka_source_losses_total``: connections lost.
- ``mieruka_source_restarts_total``: far-end (PLC) restarts seen on the connection.
- ``mieruka_source_errors_total`` (labels ``source``, ``kind``): input the source dropped, by
  kind (``not_json``, ``wrong_type``, ``unknown_topic``, ...).

Sparkplug B sources only (label ``source``)

- ``mieruka_sparkplug_births_total``: NBIRTHs taken (the first, and one per rebirth or new session).
- ``mieruka_sparkplug_deaths_total``: NDEATHs of the node's current session: outages.
- ``mieruka_sparkplug_seq_gaps_total``: ``seq`` gaps (messages lost on the way).
- ``mieruka_sparkplug_rebirth_requests_total``: rebirth requests sent.

Store and facts

- ``mieruka_facts_written_total``: facts the store confirmed.
- ``mieruka_facts_pending``: facts made but not yet confirmed by the store.
- ``mieruka_store_up``: 1 while the last store write succeeded (or none failed yet), else 0.
- ``mieruka_store_write_failures_total``: write attempts that failed and are retried: the store
  was unavailable, or failed for another reason than the facts (each retry counts).
- ``mieruka_store_write_seconds`` (histogram, label ``result``: ``ok`` or ``error``): time of
  each store write attempt.
- ``mieruka_facts_rejected_total``: facts the store refused (it cannot hold them); each is set
  aside in the spool's quarantine, not lost (see ``mieruka_spool_quarantined_facts``).
- ``mieruka_facts_dropped_total`` (label ``reason``): facts given up, by why: ``spool_full``
  (the spool's ``dropped_facts``), ``shutdown`` (the collector's ``facts_dropped``: pending
  facts left unwritten at stop).
- ``mieruka_offline_facts_total``: ``offline`` state facts the collector made because a source
  was unreachable.
- ``mieruka_silent_facts_total``: ``offline`` state facts the collector made because a machine
  sent nothing for its ``stale_after_s`` while its source stayed up.
- ``mieruka_last_write_timestamp_seconds``: Unix time the store last confirmed a batch; 0
  before the first one.

Spool (only when the collector has one)

- ``mieruka_spool_facts``: facts in the spool (waiting for the store).
- ``mieruka_spool_bytes``: bytes the spool takes on disk.
- ``mieruka_spool_max_bytes``: the spool's size limit.
- ``mieruka_spool_oldest_age_seconds``: age of the oldest spooled fact; 0 when empty.
- ``mieruka_spool_quarantined_facts``: facts the store refused, kept in the spool's quarantine
  until ``mieruka spool retry-quarantine`` queues them again.

Input and acknowledgements

- ``mieruka_dead_letters_total`` (label ``kind``): samples or messages the collector could
  not use, by kind.
- ``mieruka_mqtt_acks_total``: MQTT messages acknowledged (only once their data was spooled).

Scrapes run on the HTTP server's thread while the event loop updates the stats: numbers are
read as they are at that instant, and counters by kind are copied before they are iterated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as _PromCollector

from collector.sources import SourceStats
from collector.spool import SpoolStats
from collector.stats import CollectorStats

__all__ = ["WRITE_BUCKETS", "CollectorMetrics", "Observed"]

# store writes: a few ms for a local SQLite batch, up to the timeout of a struggling InfluxDB
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _HasSourceStats(Protocol):
    @property
    def stats(self) -> SourceStats: ...


class _HasSpoolStats(Protocol):
    @property
    def stats(self) -> SpoolStats: ...


class Observed(Protocol):
    """What the metrics read of a collector (:class:`~collector.pipeline.Collector` is one): its
    stats, its sources' stats and its spool's stats, typed, so a renamed field fails mypy
    rather than reading as 0."""

    @property
    def stats(self) -> CollectorStats: ...

    @property
    def sources(self) -> Mapping[str, _HasSourceStats]: ...

    @property
    def spool(self) -> _HasSpoolStats | None: ...


def _copy(counter: Mapping[str, int] | None) -> dict[str, int]:
    """A copy of a by-kind counter the event loop may be adding keys to right now."""
    if not counter:
        return {}
    for _ in range(5):
        try:
            return dict(counter)
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return {}


class _StatsCollector(_PromCollector):
    """Reads a collector's stats into metric families at scrape time."""

    def __init__(self, collector: Observed) -> None:
        self._c = collector

    def collect(self) -> Iterable[Metric]:
        c = self._c
        stats = c.stats
        yield from self._sources(c, stats)
        yield from self._store(c, stats)
        spool = c.spool
        if spool is not None:
            yield from self._spool(spool.stats)
        dead = CounterMetricFamily("mieruka_dead_letters_total",
                                   "Samples or messages the collector could not use, by kind.", labels=["kind"])
        for kind, n in sorted(_copy(stats.dead_letters).items()):
            dead.add_metric([kind], n)
        yield dead
        yield CounterMetricFamily("mieruka_mqtt_acks_total",
                                  "MQTT messages acknowledged (once their data was spooled).", value=stats.acks)

    def _sources(self, c: Observed, stats: CollectorStats) -> Iterator[Metric]:
        def fam(name: str, doc: str, gauge: bool = False) -> CounterMetricFamily | GaugeMetricFamily:
            cls = GaugeMetricFamily if gauge else CounterMetricFamily
            return cls(name, doc, labels=["source"])

        samples = fam("mieruka_source_samples_total", "Samples the source yielded.")
        messages = fam("mieruka_source_messages_total", "Protocol messages or notifications the source received.")
        facts = fam("mieruka_source_facts_total", "Facts normalized from the source's samples.")
        connected = fam("mieruka_source_connected", "1 while the source is connected, else 0.", gauge=True)
        reconnects = fam("mieruka_source_reconnects_total", "Successful connections after the first one.")
        losses = fam("mieruka_source_losses_total", "Connections lost.")
        restarts = fam("mieruka_source_restarts_total", "Far-end (PLC) restarts seen on the connection.")
        errors = CounterMetricFamily("mieruka_source_errors_total", "Input the source dropped, by kind.",
                                     labels=["source", "kind"])
        by_source = _copy(stats.facts_by_source)
        sources = dict(c.sources)
        for sid in sorted(set(sources) | set(by_source)):
            facts.add_metric([sid], by_source.get(sid, 0))
            src = sources.get(sid)
            if src is None:  # facts of a source the collector no longer lists
                continue
            s = src.stats
            samples.add_metric([sid], s.samples)
            messages.add_metric([sid], s.messages)
            connected.add_metric([sid], 1.0 if s.connected else 0.0)
            reconnects.add_metric([sid], max(0, s.connects - 1))
            losses.add_metric([sid], s.losses)
            restarts.add_metric([sid], s.restarts)
            for kind, n in sorted(_copy(s.errors).items()):
                errors.add_metric([sid, kind], n)
        yield from (samples, messages, facts, connected, reconnects, losses, restarts, errors)
        yield from self._sparkplug(sources)

    def _sparkplug(self, sources: Mapping[str, object]) -> Iterator[Metric]:
        from collector.sources.mqtt import MqttSource

        nodes = {sid: s.sparkplug.stats for sid, s in sources.items()
                 if isinstance(s, MqttSource) and s.sparkplug is not None}
        if not nodes:
            return
        for name, attr, doc in (
                ("mieruka_sparkplug_births_total", "births", "Sparkplug B NBIRTHs taken."),
                ("mieruka_sparkplug_deaths_total", "deaths", "Sparkplug B NDEATHs of the current session (outages)."),
                ("mieruka_sparkplug_seq_gaps_total", "seq_gaps", "Sparkplug B seq gaps (messages lost on the way)."),
                ("mieruka_sparkplug_rebirth_requests_total", "rebirth_requests",
                 "Sparkplug B rebirth requests sent (NCMD Node Control/Rebirth).")):
            family = CounterMetricFamily(name, doc, labels=["source"])
            for sid, st in sorted(nodes.items()):
                family.add_metric([sid], float(getattr(st, attr)))
            yield family

    def _store(self, c: Observed, stats: CollectorStats) -> Iterator[Metric]:
        yield CounterMetricFamily("mieruka_facts_written_total", "Facts the store confirmed.",
                                  value=stats.facts_written)
        yield GaugeMetricFamily("mieruka_facts_pending", "Facts made but not yet confirmed by the store.",
                                value=stats.pending)
        yield GaugeMetricFamily("mieruka_store_up", "1 while the store accepts writes, else 0.",
                                value=1.0 if stats.store_up else 0.0)
        yield CounterMetricFamily("mieruka_store_write_failures_total",
                                  "Store write attempts that failed and are retried.", value=stats.write_failures)
        yield CounterMetricFamily("mieruka_facts_rejected_total",
                                  "Facts the store refused, set aside in the spool's quarantine.",
                                  value=stats.facts_rejected)
        spool = c.spool
        dropped = CounterMetricFamily("mieruka_facts_dropped_total", "Facts given up, by reason.", labels=["reason"])
        dropped.add_metric(["spool_full"], spool.stats.dropped_facts if spool is not None else 0.0)
        dropped.add_metric(["shutdown"], stats.facts_dropped)
        yield dropped
        yield CounterMetricFamily("mieruka_offline_facts_total",
                                  "Offline state facts made because a source was unreachable.",
                                  value=stats.offline_facts)
        yield CounterMetricFamily("mieruka_silent_facts_total",
                                  "Offline state facts made because a machine sent nothing for its stale_after_s.",
                                  value=stats.silent_facts)
        last = stats.last_flush
        yield GaugeMetricFamily("mieruka_last_write_timestamp_seconds",
                                "Unix time the store last confirmed a batch; 0 before the first one.",
                                value=last.timestamp() if last is not None else 0.0)

    def _spool(self, s: SpoolStats) -> Iterator[Metric]:
        yield GaugeMetricFamily("mieruka_spool_facts", "Facts in the spool, waiting for the store.", value=s.facts)
        yield GaugeMetricFamily("mieruka_spool_bytes", "Bytes the spool takes on disk.", value=s.bytes)
        yield GaugeMetricFamily("mieruka_spool_max_bytes", "The spool's size limit in bytes.", value=s.max_bytes)
        oldest = s.oldest_spooled_at
        age = max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest is not None else 0.0
        yield GaugeMetricFamily("mieruka_spool_oldest_age_seconds",
                                "Age of the oldest spooled fact in seconds; 0 when the spool is empty.", value=age)
        yield GaugeMetricFamily("mieruka_spool_quarantined_facts",
                                "Facts the store refused, kept in the spool's quarantine.",
                                value=s.quarantined)


class CollectorMetrics:
    """The Prometheus view of one collector (:class:`Observed`: ``.stats``, ``.sources``, ``.spool``)."""

    def __init__(self, collector: Observed) -> None:
        self.collector = collector
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(collector))
        self.write_seconds = Histogram("mieruka_store_write_seconds", "Time of each store write attempt.",
                                       labelnames=["result"], buckets=WRITE_BUCKETS, registry=self.registry)
        self._ok = self.write_seconds.labels(result="ok")
        self._error = self.write_seconds.labels(result="error")
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def observe_write(self, seconds: float, ok: bool) -> None:
        """Record one store write attempt that took ``seconds`` (``ok``: the store confirmed it)."""
        (self._ok if ok else self._error).observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the bound port
        (``port`` 0 picks a free one). ``OSError`` when the port is taken."""
        if self._server is not None:
            raise RuntimeError("CollectorMetrics is already serving")
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_port)

    @property
    def port(self) -> int | None:
        """The port being served, or None."""
        return int(self._server.server_port) if self._server is not None else None

    def close(self) -> None:
        """Stop the HTTP server (if serving) and wait for its thread."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

