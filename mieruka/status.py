"""``mieruka status``: a running collector's health, read from its Prometheus endpoint, for a
person at a terminal.

    $ mieruka status --metrics http://127.0.0.1:9464/metrics
    store         STORE DOWN: facts wait until it is back
    written       12,345 facts, last write 4 min 10 s ago
    pending       1,200 facts
    spool         1,200 facts · 32.0 MiB of 64.0 MiB (50%) · oldest 4 min 10 s
    dropped       none
    ...

Exit status 0 when the collector answered (even with its store down: that is what the output
is for), 1 when it could not be reached.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["DEFAULT_METRICS_URL", "StatusError", "fetch_metrics", "render_status", "run_status"]

DEFAULT_METRICS_URL = "http://127.0.0.1:9464/metrics"
_HINT = "is the collector running with --metrics-port?"
_KEY_W = 15  # the label column of the summary
_DROP_REASONS = {"spool_full": "spool full", "store_rejected": "store rejected", "shutdown": "at shutdown"}


class StatusError(Exception):
    """The collector's metrics could not be read; the message says which URL and why."""


def fetch_metrics(url: str, timeout_s: float = 5.0) -> str:
    """The Prometheus exposition text at ``url``; :class:`StatusError` if it cannot be had."""
    if not url.startswith(("http://", "https://")):
        raise StatusError(f"{url} is not an http:// or https:// URL; try {DEFAULT_METRICS_URL}")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            status = resp.status
            body: bytes = resp.read()
    except urllib.error.HTTPError as e:
        raise StatusError(f"{url} answered HTTP {e.code} {e.reason}; {_HINT}") from None
    except urllib.error.URLError as e:
        raise StatusError(f"cannot reach {url}: {e.reason}; {_HINT}") from None
    except TimeoutError:
        raise StatusError(f"cannot reach {url}: no answer within {timeout_s:g}s; {_HINT}") from None
    except OSError as e:  # connection reset mid-answer and the like
        raise StatusError(f"cannot read {url}: {e}; {_HINT}") from None
    if status != 200:
        raise StatusError(f"{url} answered HTTP {status}; {_HINT}")
    return body.decode("utf-8", errors="replace")


# ---- reading the exposition text ------------------------------------------------------------


@dataclass
class _Source:
    connected: bool | None = None
    samples: float = 0
    messages: float = 0
    facts: float = 0
    reconnects: float = 0
    losses: float = 0
    errors: float = 0


@dataclass
class _Snapshot:
    plain: dict[str, float] = field(default_factory=dict)  # unlabelled samples by name
    dropped: dict[str, float] = field(default_factory=dict)
    dead_letters: dict[str, float] = field(default_factory=dict)
    sources: defaultdict[str, _Source] = field(default_factory=lambda: defaultdict(_Source))

    def get(self, name: str) -> float | None:
        return self.plain.get(name)


def _parse(text: str) -> _Snapshot:
    snap = _Snapshot()
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        raise StatusError(f"the answer is not Prometheus metrics ({e})") from None
    for fam in families:
        for s in fam.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if name.startswith("mieruka_source_") and "source" in labels:
                src = snap.sources[labels["source"]]
                key = name.removeprefix("mieruka_source_").removesuffix("_total")
                if key == "connected":
                    src.connected = value >= 1
                elif key == "errors":
                    src.errors += value
                elif key in ("samples", "messages", "facts", "reconnects", "losses"):
                    setattr(src, key, value)
            elif name == "mieruka_facts_dropped_total" and "reason" in labels:
                snap.dropped[labels["reason"]] = value
            elif name == "mieruka_dead_letters_total" and "kind" in labels:
                snap.dead_letters[labels["kind"]] = value
            elif name.startswith("mieruka_") and not labels:
                snap.plain[name] = value
    if not snap.plain and not snap.sources:
        raise StatusError("the answer has no mieruka_* metrics; is this a mieruka collector's /metrics?")
    return snap


# ---- formatting -----------------------------------------------------------------------------


def _n(x: float) -> str:
    return f"{round(x):,}"


def human_age(seconds: float) -> str:
    """``42 s``, ``4 min 10 s``, ``2 h 5 min``, ``3 d 4 h``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s" if s else f"{m} min"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def human_bytes(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``32.0 MiB``, ``2.0 GiB``."""
    if n < 1024:
        return f"{round(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def _table(header: list[str], rows: list[list[str]], align: str, indent: str = "  ") -> list[str]:
    """Columns aligned per ``align`` (``l`` or ``r`` for each), two spaces between them."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True)]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def render_status(text: str, *, now: datetime | None = None) -> str:
    """A readable summary of a collector's Prometheus exposition ``text`` (no colour codes).

    ``now`` (default: the current time) is what "last write ... ago" is measured from.
    :class:`StatusError` when ``text`` holds no mieruka metrics."""
    snap = _parse(text)
    now = now if now is not None else datetime.now(UTC)
    lines: list[tuple[str, str]] = []

    up = snap.get("mieruka_store_up")
    if up is None:
        lines.append(("store", "unknown (no mieruka_store_up)"))
    elif up >= 1:
        lines.append(("store", "up"))
    else:
        lines.append(("store", "STORE DOWN: facts wait until it is back"))

    written = snap.get("mieruka_facts_written_total") or 0
    last = snap.get("mieruka_last_write_timestamp_seconds") or 0
    if last > 0:
        ago = (now - datetime.fromtimestamp(last, UTC)).total_seconds()
        when = f"last write {human_age(ago)} ago"
    else:
        when = "no write yet"
    lines.append(("written", f"{_n(written)} facts, {when}"))
    lines.append(("pending", f"{_n(snap.get('mieruka_facts_pending') or 0)} facts"))

    spool_facts = snap.get("mieruka_spool_facts")
    if spool_facts is None:
        lines.append(("spool", "none (pending facts are held in memory)"))
    else:
        used = snap.get("mieruka_spool_bytes") or 0
        cap = snap.get("mieruka_spool_max_bytes") or 0
        size = f"{human_bytes(used)} of {human_bytes(cap)} ({used / cap:.0%})" if cap > 0 else human_bytes(used)
        age = snap.get("mieruka_spool_oldest_age_seconds") or 0
        oldest = f"oldest {human_age(age)}" if spool_facts > 0 else "empty"
        lines.append(("spool", f"{_n(spool_facts)} facts · {size} · {oldest}"))

    drops = [(r, v) for r, v in sorted(snap.dropped.items()) if v > 0]
    lines.append(("dropped", ", ".join(f"{_n(v)} {_DROP_REASONS.get(r, r)}" for r, v in drops) if drops else "none"))
    rejected_only = snap.get("mieruka_facts_rejected_total")
    if rejected_only and "store_rejected" not in snap.dropped:
        lines.append(("rejected", f"{_n(rejected_only)} facts refused by the store"))
    quarantined = snap.get("mieruka_spool_quarantined_facts")
    if quarantined:
        lines.append(("quarantine", f"{_n(quarantined)} facts the store refused; after fixing the cause, stop the "
                                    "collector and run mieruka spool retry-quarantine --spool-dir DIR"))
    failures = snap.get("mieruka_store_write_failures_total")
    if failures:
        lines.append(("write retries", _n(failures)))
    acks = snap.get("mieruka_mqtt_acks_total")
    if acks:
        lines.append(("MQTT acks", _n(acks)))
    offline = snap.get("mieruka_offline_facts_total")
    if offline:
        lines.append(("offline facts", _n(offline)))
    silent = snap.get("mieruka_silent_facts_total")
    if silent:
        lines.append(("silences", f"{_n(silent)} machines made offline: nothing from them for their stale_after_s"))

    out = [k.ljust(_KEY_W) + v for k, v in lines]

    out.append("")
    if snap.sources:
        out.append("sources")
        rows = [[sid, "?" if s.connected is None else ("yes" if s.connected else "NO"), _n(s.samples), _n(s.facts),
                 _n(s.reconnects), _n(s.errors)] for sid, s in sorted(snap.sources.items())]
        out += _table(["source", "connected", "samples", "facts", "reconnects", "errors"], rows, "llrrrr")
    else:
        out.append("sources".ljust(_KEY_W) + "none")

    out.append("")
    letters = [(k, v) for k, v in sorted(snap.dead_letters.items()) if v > 0]
    if letters:
        out.append(f"dead letters ({_n(sum(v for _, v in letters))})")
        out += _table(["kind", "count"], [[k, _n(v)] for k, v in letters], "lr")
    else:
        out.append("dead letters".ljust(_KEY_W) + "none")
    return "\n".join(out) + "\n"


def run_status(url: str, out: TextIO, err: TextIO | None = None) -> int:
    """Print the collector's status to ``out``: 0 when it answered (store down included), 1 when
    it could not be reached or did not answer with mieruka metrics (the reason goes to ``err``,
    default ``sys.stderr``)."""
    err = err if err is not None else sys.stderr
    try:
        text = fetch_metrics(url)
    except StatusError as e:
        print(f"mieruka status: {e}", file=err)
        return 1
    try:
        report = render_status(text)
    except StatusError as e:
        print(f"mieruka status: {url}: {e}", file=err)
        return 1
    out.write("collector".ljust(_KEY_W) + url + "\n")
    out.write(report)
    return 0
