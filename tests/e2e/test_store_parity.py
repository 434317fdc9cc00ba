"""Both stores give identical figures for the same data: one fast-forward day of the demo plant
imported into SQLite and into a real influxd (a fresh database), then every core.oee line and
machine figure (all fields) and the line throughput compared between the two, floats to 1e-9."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from core import figures, oee
from core.plant import Plant, load_plant
from core.store import open_store
from core.store.base import Store
from tests.conftest import DEMO_PLANT
from tests.support.influxd import Influxd
from tests.support.procs import mieruka_ok
from tests.support.snapshot import differences, plain

START = datetime.fromisoformat("2026-11-26T08:00:00+09:00")  # a Thursday: day shift, then night shift
END = START + timedelta(days=1)
WINDOWS = [
    (START, END),  # the whole day
    (START, START + timedelta(hours=9)),  # the day shift
    (START + timedelta(hours=12), START + timedelta(hours=21)),  # the night shift, across midnight
    # odd edges: cut stops, breaks and buckets in the middle
    (datetime.fromisoformat("2026-11-26T09:17:23.500+09:00"), datetime.fromisoformat("2026-11-26T13:41:07.250+09:00")),
    (datetime.fromisoformat("2026-11-26T16:59:59.999+09:00"), datetime.fromisoformat("2026-11-27T00:30:00+09:00")),
]
BUCKETS = ["1h", "5m", "1d", "7m"]



@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(DEMO_PLANT)


@pytest.fixture(scope="module")
def store_urls(tmp_path_factory: pytest.TempPathFactory, influxd_server: Influxd) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("parity")
    samples, truth = d / "samples.csv", d / "truth.jsonl"
    mieruka_ok("simulate", "--plant", str(DEMO_PLANT), "--seed", "11", "--from", START.isoformat(),
               "--to", END.isoformat(), "--samples", str(samples), "--truth", str(truth))
    sqlite_url = f"sqlite:///{d / 'parity.db'}"
    influx_url = influxd_server.url(f"parity_{uuid.uuid4().hex[:8]}")
    for url in (sqlite_url, influx_url):
        mieruka_ok("import", "--plant", str(DEMO_PLANT), "--store", url, str(samples))
    return sqlite_url, influx_url


@pytest.fixture
async def stores(store_urls: tuple[str, str]) -> AsyncIterator[tuple[Store, Store]]:
    a, b = open_store(store_urls[0]), open_store(store_urls[1])
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()




def assert_same(a: Any, b: Any, what: str) -> None:
    diff = differences(plain(a), plain(b), exact_types=True)
    assert not diff, f"{what}: SQLite and InfluxDB differ at {len(diff)} places, first: {diff[:5]}"


@pytest.mark.parametrize(("start", "end"), WINDOWS, ids=lambda t: t.isoformat())
async def test_oee_is_identical_in_both_stores(stores: tuple[Store, Store], plant: Plant, start: datetime,
                                                end: datetime) -> None:
    sq, ix = stores
    for line in plant.lines:
        a = await oee.line_oee_from_store(sq, plant, line.id, start, end)
        b = await oee.line_oee_from_store(ix, plant, line.id, start, end)
        assert_same(a, b, f"line {line.id}")
        if start == START and end == END:
            assert not a.no_data and a.good > 100 and a.events and a.oee is not None  # the data is there
        for m in line.machines:
            assert_same(await oee.machine_oee_from_store(sq, plant, m.id, start, end),
                        await oee.machine_oee_from_store(ix, plant, m.id, start, end), f"machine {m.id}")


@pytest.mark.parametrize("bucket", BUCKETS)
async def test_throughput_is_identical_in_both_stores(stores: tuple[Store, Store], plant: Plant, bucket: str) -> None:
    sq, ix = stores
    for start, end in WINDOWS:
        for line in plant.lines:
            a = await figures.line_throughput(sq, plant, line.id, start, end, bucket)
            b = await figures.line_throughput(ix, plant, line.id, start, end, bucket)
            assert_same(a, b, f"throughput {line.id} {start.isoformat()}–{end.isoformat()} {bucket}")
            assert a.points and (a.total_good > 0 or (start, end) == WINDOWS[-1])


async def test_last_times_and_state_changes_are_identical(stores: tuple[Store, Store], plant: Plant) -> None:
    sq, ix = stores
    ids = [m.id for _, m in plant.machines()]
    assert await sq.last_times(ids) == await ix.last_times(ids)
    s, e = figures.bucket_edges(START, END, "1d", plant.site.tz)[0], figures.bucket_edges(START, END, "1d",
                                                                                         plant.site.tz)[-1]
    assert await sq.state_changes(ids, s, e) == await ix.state_changes(ids, s, e)
