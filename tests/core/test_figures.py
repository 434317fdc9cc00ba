"""core.figures: buckets, alignment, zero fill, partial edges, local days, line good/scrap."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from core import figures
from core.model import Fact, to_ns
from core.plant import Plant, parse_plant
from core.store.base import CountBucket, GaugeBucket, ProductChange, StateChange

TOKYO = ZoneInfo("Asia/Tokyo")


def _sig(machine: str, name: str) -> dict[str, object]:
    return {"topic": f"t/{machine}/{name}", "field": name, "counter_bits": 32}


def _machine(mid: str, signals: Sequence[str], output: bool = False) -> dict[str, object]:
    return {"id": mid, "source": "broker", "output": output, "signals": {s: _sig(mid, s) for s in signals}}


def make_plant(tz: str = "Asia/Tokyo") -> Plant:
    return parse_plant({
        "site": {"id": "test", "timezone": tz, "locale": "ja"},
        "calendar": {"shifts": [{"id": "day", "start": "08:00", "end": "17:00", "breaks": [["12:00", "12:45"]]}]},
        "sources": {"broker": {"mqtt": {"host": "127.0.0.1", "port": 1883}}},
        "lines": [
            # output = last machine (b); scrap from both
            {"id": "l1", "machines": [_machine("a", ["good", "scrap"]), _machine("b", ["good", "scrap"])]},
            # output counts total and scrap, no good: good = total − scrap
            {"id": "l2", "machines": [_machine("c", ["good", "scrap"]), _machine("d", ["total", "scrap"])]},
            # two marked outputs, the last machine is not one
            {"id": "l3", "machines": [_machine("e", ["good"], output=True), _machine("f", ["good"], output=True),
                                      _machine("g", ["good", "scrap"])]},
        ],
    })


class MemoryStore:
    """Just enough of the Store protocol for the figure math (the API tests use the real SQLite store)."""

    def __init__(self) -> None:
        self.facts: list[Fact] = []
        self.queries: list[tuple[int, int, int]] = []

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def write(self, facts: Sequence[Fact]) -> None:
        self.facts.extend(facts)

    async def count_buckets(self, machines: Sequence[str], signals: Sequence[str], start_ns: int, end_ns: int,
                            bucket_ns: int) -> list[CountBucket]:
        self.queries.append((start_ns, end_ns, bucket_ns))
        sums: dict[tuple[int, str, str], int] = defaultdict(int)
        for f in self.facts:
            if f.kind == "count" and f.machine in machines and f.signal in signals and start_ns <= f.time_ns < end_ns:
                sums[(f.time_ns - f.time_ns % bucket_ns, f.machine, f.signal)] += int(f.value)
        return [CountBucket(b, m, s, t) for (b, m, s), t in sums.items()]

    async def product_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[ProductChange]:
        return []

    async def state_changes(self, machines: Sequence[str], start_ns: int, end_ns: int) -> list[StateChange]:
        return []

    async def gauge_buckets(self, machine: str, signal: str, start_ns: int, end_ns: int,
                            bucket_ns: int) -> list[GaugeBucket]:
        return []

    async def last_times(self, machines: Sequence[str]) -> dict[str, int]:
        return {}

    async def ping(self) -> bool:
        return True


def count(t: datetime, line: str, machine: str, signal: str, inc: int) -> Fact:
    return Fact("count", to_ns(t), line, machine, signal, inc)


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)  # type: ignore[arg-type,misc,unused-ignore]


# ---- buckets --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400),
                                               ("15m", 900), ("2h", 7200), ("7d", 604800)])
def test_parse_bucket(text: str, seconds: int) -> None:
    assert figures.parse_bucket(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "0s", "1.5h", "-1h", "1w", "1H", "5 m", "01h", "367d", "9999999999h"])
def test_parse_bucket_rejects_with_allowed_forms(text: str) -> None:
    with pytest.raises(figures.BucketError) as e:
        figures.parse_bucket(text)
    assert "30s, 5m, 1h, 1d" in str(e.value)


def test_fixed_buckets_align_to_utc_epoch_multiples() -> None:
    edges = figures.bucket_edges(utc(2026, 11, 27, 10, 17), utc(2026, 11, 27, 12, 5), "1h", TOKYO)
    assert edges == [to_ns(utc(2026, 11, 27, h)) for h in (10, 11, 12, 13)]
    edges = figures.bucket_edges(utc(2026, 11, 27, 10, 17, 30), utc(2026, 11, 27, 10, 20), "5m", TOKYO)
    assert edges == [to_ns(utc(2026, 11, 27, 10, m)) for m in (15, 20)]


def test_day_buckets_start_at_local_midnight_in_tokyo() -> None:
    start = datetime(2026, 11, 26, 5, 0, tzinfo=TOKYO)
    end = datetime(2026, 11, 28, 0, 0, tzinfo=TOKYO)  # exactly a local midnight: no third day
    edges = figures.bucket_edges(start, end, "1d", TOKYO)
    assert edges == [to_ns(utc(2026, 11, 25, 15)), to_ns(utc(2026, 11, 26, 15)), to_ns(utc(2026, 11, 27, 15))]


def test_day_buckets_across_dst_are_23_and_25_hours() -> None:
    ny = ZoneInfo("America/New_York")
    edges = figures.bucket_edges(datetime(2026, 3, 8, tzinfo=ny), datetime(2026, 3, 9, 12, tzinfo=ny), "1d", ny)
    assert [(b - a) // figures.NS for a, b in pairwise(edges)] == [23 * 3600, 24 * 3600]
    edges = figures.bucket_edges(datetime(2026, 11, 1, tzinfo=ny), datetime(2026, 11, 2, tzinfo=ny), "1d", ny)
    assert [(b - a) // figures.NS for a, b in pairwise(edges)] == [25 * 3600]


@pytest.mark.parametrize(("start", "end", "match"), [
    (datetime(2026, 11, 27, 8), utc(2026, 11, 27, 9), "no UTC offset"),
    (utc(2026, 11, 27, 9), utc(2026, 11, 27, 8), "empty or reversed"),
    (utc(2026, 11, 27, 9), utc(2026, 11, 27, 9), "empty or reversed"),
    (utc(2026, 1, 1), utc(2026, 12, 31), "at most 10000"),
    (datetime(1, 1, 1, tzinfo=TOKYO), utc(2026, 1, 1), "out of range"),
    (utc(2026, 1, 1), datetime(9999, 1, 1, tzinfo=UTC), "out of range"),
])
def test_bad_windows(start: datetime, end: datetime, match: str) -> None:
    with pytest.raises(figures.WindowError, match=match):
        figures.bucket_edges(start, end, "30s", TOKYO)


# ---- throughput -----------------------------------------------------------------------------


async def test_zero_filled_buckets_and_partial_edges() -> None:
    plant, store = make_plant(), MemoryStore()
    await store.write([
        count(utc(2026, 11, 27, 10, 10), "l1", "b", "good", 100),  # same bucket, before start: not counted
        count(utc(2026, 11, 27, 10, 20), "l1", "b", "good", 3),
        count(utc(2026, 11, 27, 10, 59, 59), "l1", "b", "good", 2),
        count(utc(2026, 11, 27, 12, 4, 59), "l1", "b", "good", 1),
        count(utc(2026, 11, 27, 12, 5), "l1", "b", "good", 100),  # at end: not counted
    ])
    t = await figures.line_throughput(store, plant, "l1", utc(2026, 11, 27, 10, 17), utc(2026, 11, 27, 12, 5), "1h")
    assert [(p.start, p.good, p.scrap) for p in t.points] == [
        (utc(2026, 11, 27, 10), 5, 0), (utc(2026, 11, 27, 11), 0, 0), (utc(2026, 11, 27, 12), 1, 0)]
    assert t.points[0].start.utcoffset() == timedelta(hours=9)  # answered in the site's time zone
    assert (t.total_good, t.total_scrap) == (6, 0)


async def test_line_good_is_output_machine_scrap_is_all_machines() -> None:
    plant, store = make_plant(), MemoryStore()
    t0 = utc(2026, 11, 27, 1)
    await store.write([
        count(t0, "l1", "a", "good", 50),   # upstream good: not line output
        count(t0, "l1", "a", "scrap", 4),   # upstream scrap: line scrap
        count(t0, "l1", "b", "good", 45),
        count(t0, "l1", "b", "scrap", 1),
    ])
    t = await figures.line_throughput(store, plant, "l1", t0, t0 + timedelta(hours=1), "1h")
    assert (t.total_good, t.total_scrap) == (45, 5)


async def test_good_is_total_minus_scrap_when_output_counts_no_good() -> None:
    plant, store = make_plant(), MemoryStore()
    t0 = utc(2026, 11, 27, 1)
    await store.write([
        count(t0, "l2", "c", "good", 30), count(t0, "l2", "c", "scrap", 2),
        count(t0 + timedelta(minutes=1), "l2", "d", "total", 28),
        count(t0 + timedelta(minutes=2), "l2", "d", "scrap", 3),
    ])
    t = await figures.line_throughput(store, plant, "l2", t0, t0 + timedelta(hours=1), "30m")
    assert [(p.good, p.scrap) for p in t.points] == [(25, 5), (0, 0)]


async def test_marked_output_machines_are_summed() -> None:
    plant, store = make_plant(), MemoryStore()
    t0 = utc(2026, 11, 27, 1)
    await store.write([count(t0, "l3", "e", "good", 7), count(t0, "l3", "f", "good", 8),
                       count(t0, "l3", "g", "good", 100), count(t0, "l3", "g", "scrap", 1)])
    t = await figures.line_throughput(store, plant, "l3", t0, t0 + timedelta(minutes=5), "5m")
    assert (t.total_good, t.total_scrap) == (15, 1)


async def test_day_buckets_regroup_at_local_midnight() -> None:
    plant, store = make_plant(), MemoryStore()
    await store.write([
        count(datetime(2026, 11, 26, 23, 59, 59, tzinfo=TOKYO), "l1", "b", "good", 1),
        count(datetime(2026, 11, 27, 0, 0, tzinfo=TOKYO), "l1", "b", "good", 10),
        count(datetime(2026, 11, 27, 8, 30, tzinfo=TOKYO), "l1", "b", "good", 100),
    ])
    start, end = datetime(2026, 11, 26, tzinfo=TOKYO), datetime(2026, 11, 28, tzinfo=TOKYO)
    t = await figures.line_throughput(store, plant, "l1", start, end, "1d")
    assert [(p.start, p.end, p.good) for p in t.points] == [
        (datetime(2026, 11, 26, tzinfo=TOKYO), datetime(2026, 11, 27, tzinfo=TOKYO), 1),
        (datetime(2026, 11, 27, tzinfo=TOKYO), datetime(2026, 11, 28, tzinfo=TOKYO), 110)]
    assert t.bucket.seconds == 86400
    # the store was asked at a grid that falls on local midnights, not in UTC days
    (_, _, grid), = store.queries
    assert grid == 900 * figures.NS


async def test_day_buckets_across_dst_count_each_fact_once() -> None:
    plant, store = make_plant("America/New_York"), MemoryStore()
    ny = ZoneInfo("America/New_York")
    times = [datetime(2026, 3, 7, 23, 30, tzinfo=ny), datetime(2026, 3, 8, 1, 59, tzinfo=ny),
             datetime(2026, 3, 8, 3, 0, tzinfo=ny), datetime(2026, 3, 8, 23, 59, tzinfo=ny),
             datetime(2026, 3, 9, 0, 0, tzinfo=ny)]
    await store.write([count(t, "l1", "b", "good", 1) for t in times])
    t = await figures.line_throughput(store, plant, "l1", datetime(2026, 3, 7, tzinfo=ny),
                                      datetime(2026, 3, 10, tzinfo=ny), "1d")
    assert [p.good for p in t.points] == [1, 3, 1]


async def test_unknown_line_names_the_known_ones() -> None:
    with pytest.raises(figures.UnknownLine, match="l1, l2, l3"):
        await figures.line_throughput(MemoryStore(), make_plant(), "nope", utc(2026, 1, 1), utc(2026, 1, 2), "1h")


# ---- shifts ---------------------------------------------------------------------------------


def test_shift_so_far_and_rate() -> None:
    plant = make_plant()
    as_of = datetime(2026, 11, 27, 10, 30, tzinfo=TOKYO)  # a Friday
    so_far = figures.shift_so_far(plant, as_of)
    assert so_far is not None
    assert so_far.window.shift_id == "day"
    assert so_far.window.start == datetime(2026, 11, 27, 8, tzinfo=TOKYO)
    assert so_far.elapsed_s == 2.5 * 3600
    assert figures.rate_per_hour(250, so_far.elapsed_s) == 100.0
    assert figures.rate_per_hour(5, 0) is None
    assert figures.shift_so_far(plant, datetime(2026, 11, 28, 10, tzinfo=TOKYO)) is None  # Saturday
    with pytest.raises(figures.WindowError):
        figures.shift_so_far(plant, datetime(2026, 11, 27, 10))
