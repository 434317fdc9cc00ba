"""import_samples against a real SQLite store."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from pathlib import Path

import pytest

from collector.importer import ImportFileError, ImportRejected, import_samples
from core.model import Sample
from core.normalize import NormalizeError, Normalizer
from core.plant import Plant
from core.store.sqlite import SqliteStore
from tests.collector.conftest import FlakyStore, build_plant

ALL_NS = (0, 4_000_000_000_000_000_000)


def plant() -> Plant:
    return build_plant({"plc": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}}}, [
        ("blade", "cnc", {"source": "plc", "signals": {
            "good": {"node": "ns=2;s=good", "counter_bits": 16},
            "scrap": {"node": "ns=2;s=scrap", "counter_bits": 16},
            "state": {"node": "ns=2;s=state", "map": {1: "running", 3: "down"}},
            "reason": {"node": "ns=2;s=reason"},
            "product": {"node": "ns=2;s=product"},
            "spindle_temp": {"node": "ns=2;s=temp", "unit": "°C"},
        }}),
    ])


GOOD_ROWS = [  # line numbers 2..9 in the CSV
    "2026-11-27T08:00:00+09:00,cnc,good,100",
    "2026-11-27T08:00:10+09:00,cnc,good,101",
    "2026-11-27T08:00:20+09:00,cnc,good,103",
    "2026-11-27T08:00:05+09:00,cnc,state,1",
    "2026-11-27T08:00:30+09:00,cnc,state,3",
    "2026-11-27T08:00:30+09:00,cnc,reason,20",
    "2026-11-26T23:00:12Z,cnc,spindle_temp,41.5",
    "2026-11-27T08:00:00+09:00,cnc,product,TB-100",
]
BAD_ROWS = [  # line numbers 10..17, with a word each reason must contain
    ("2026-11-27T08:00:40,cnc,good,104", "no offset"),
    ("2026-11-27T08:00:41+09:00,lathe,good,1", "unknown machine"),
    ("2026-11-27T08:00:42+09:00,cnc,torque,1", "no signal 'torque'"),
    ("2026-11-27T08:00:43+09:00,cnc,good,abc", "integer"),
    ("2026-11-27T08:00:44+09:00,cnc,state,9", "not in the map"),
    ("yesterday,cnc,good,1", "not ISO-8601"),
    ("2026-11-27T08:00:01+09:00,cnc,good,105", "goes back"),
    ("2026-11-27T08:00:50+09:00,cnc,good", "4 columns"),
]
LAST_ROW = "2026-11-27T08:01:00+09:00,cnc,good,110"  # line 18


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("time,machine,signal,value\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


async def good_total(store: SqliteStore) -> dict[str, int]:
    return {f"{b.machine}.{b.signal}": b.total
            for b in await store.count_buckets(["cnc"], ["good", "scrap"], *ALL_NS, ALL_NS[1])}


async def test_a_bad_file_is_rejected_with_line_numbers_and_stores_nothing(
        tmp_path: Path, sqlite_store: SqliteStore) -> None:
    path = write_csv(tmp_path / "samples.csv", GOOD_ROWS + [r for r, _ in BAD_ROWS] + [LAST_ROW])
    store = FlakyStore(sqlite_store)
    with pytest.raises(ImportRejected) as caught:
        await import_samples(plant(), store, path)
    report = caught.value.report
    assert report.rows == len(GOOD_ROWS) + len(BAD_ROWS) + 1
    assert [n for n, _ in report.skipped] == list(range(10, 18))
    for (line_no, reason), (_, word) in zip(report.skipped, BAD_ROWS, strict=True):
        assert word in reason, (line_no, reason)
    assert "line 10" in str(caught.value)
    assert store.attempts == 0 and report.facts_written == 0
    assert await sqlite_store.last_times(["cnc"]) == {}


async def test_skip_bad_stores_the_good_rows(tmp_path: Path, sqlite_store: SqliteStore) -> None:
    path = write_csv(tmp_path / "samples.csv", GOOD_ROWS + [r for r, _ in BAD_ROWS] + [LAST_ROW])
    store = FlakyStore(sqlite_store)
    report = await import_samples(plant(), store, path, skip_bad=True, batch_size=2)
    assert report.rows == 17 and report.imported == 9 and len(report.skipped) == 8
    assert report.facts_written > 0 and store.attempts >= 3  # batches of 2
    # 100 is the baseline; +1, +2, then +7 (the row going back in time is skipped)
    assert await good_total(sqlite_store) == {"cnc.good": 10}
    changes = await sqlite_store.state_changes(["cnc"], *ALL_NS)
    assert [(c.state, c.reason) for c in changes] == [("running", None), ("down", 20)]
    gauges = await sqlite_store.gauge_buckets("cnc", "spindle_temp", *ALL_NS, ALL_NS[1])
    assert [(g.count, g.mean) for g in gauges] == [(1, 41.5)]
    # importing the same file again stores nothing new (writes are idempotent by key)
    again = await import_samples(plant(), sqlite_store, path, skip_bad=True)
    assert again.facts_written == report.facts_written
    assert await good_total(sqlite_store) == {"cnc.good": 10}


async def test_jsonl(tmp_path: Path, sqlite_store: SqliteStore) -> None:
    rows: list[object] = [
        {"time": "2026-11-27T08:00:00+09:00", "machine": "cnc", "signal": "good", "value": 7},
        "",
        {"time": "2026-11-27T08:00:01+09:00", "machine": "cnc", "signal": "good", "value": 9},
        "{not json",
        {"time": "2026-11-27T08:00:02+09:00", "machine": "cnc", "signal": "good"},
        {"time": "2026-11-27T08:00:03", "machine": "cnc", "signal": "good", "value": 10},
        {"time": "2026-11-27T08:00:04+09:00", "machine": "cnc", "signal": "scrap", "value": True},
        [1, 2],
        {"time": "2026-11-27T08:00:05+09:00", "machine": "cnc", "signal": "good", "value": 12.0},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(ImportRejected) as caught:
        await import_samples(plant(), sqlite_store, path)
    assert [n for n, _ in caught.value.report.skipped] == [4, 5, 6, 7, 8]
    assert caught.value.report.rows == 8  # the blank line is not a row
    report = await import_samples(plant(), sqlite_store, path, skip_bad=True)
    assert report.imported == 3
    assert await good_total(sqlite_store) == {"cnc.good": 5}


async def test_unreadable_files(tmp_path: Path, sqlite_store: SqliteStore) -> None:
    bad_header = tmp_path / "a.csv"
    bad_header.write_text("ts,machine,signal,value\n", encoding="utf-8")
    with pytest.raises(ImportFileError, match="header"):
        await import_samples(plant(), sqlite_store, bad_header)
    other = tmp_path / "a.txt"
    other.write_text("", encoding="utf-8")
    with pytest.raises(ImportFileError, match=r"\.csv or \.jsonl"):
        await import_samples(plant(), sqlite_store, other)
    reordered = tmp_path / "b.csv"
    reordered.write_text("machine,signal,time,value\ncnc,good,2026-11-27T08:00:00Z,1\n"
                         "cnc,good,2026-11-27T08:00:01Z,4\n", encoding="utf-8")
    report = await import_samples(plant(), sqlite_store, reordered)
    assert report.imported == 2 and await good_total(sqlite_store) == {"cnc.good": 3}


def plant64() -> Plant:
    return build_plant({"plc": {"opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"}}}, [
        ("blade", "cnc", {"source": "plc", "signals": {
            "good": {"node": "ns=2;s=good", "counter_bits": 64},
            "spindle_temp": {"node": "ns=2;s=temp"},
        }}),
    ])


def many_rows(n: int) -> list[str]:
    return [f"2026-11-27T08:{i // 60:02d}:{i % 60:02d}+09:00,cnc,good,{i}" for i in range(n)]


@pytest.mark.parametrize(("row", "word"), [
    ("9999-01-01T00:00:00+00:00,cnc,good,5000", "ahead of the collector's clock"),
    ("2200-01-01T00:00:00+00:00,cnc,spindle_temp,1.0", "ahead of the collector's clock"),
    ("1999-12-31T23:00:00+00:00,cnc,spindle_temp,1.0", "before 2000"),
    (f"2026-11-27T09:00:00+09:00,cnc,good,{(1 << 64) - 1}", "64-bit"),
])
async def test_a_row_that_would_fail_at_write_time_fails_validation_and_nothing_is_stored(
        tmp_path: Path, sqlite_store: SqliteStore, row: str, word: str) -> None:
    rows = many_rows(1000)
    rows.insert(700, row)  # line 702: after the header and 700 good rows
    path = write_csv(tmp_path / "samples.csv", rows)
    store = FlakyStore(sqlite_store)
    with pytest.raises(ImportRejected) as caught:
        await import_samples(plant64(), store, path, batch_size=100)
    assert [n for n, _ in caught.value.report.skipped] == [702]
    assert word in caught.value.report.skipped[0][1]
    assert store.attempts == 0
    assert await sqlite_store.last_times(["cnc"]) == {}
    # --skip-bad: the other rows go in, counted as a live collector counts them (a re-baselined
    # counter counts on from its new baseline: the validation pass and the import agree on it)
    report = await import_samples(plant64(), store, path, skip_bad=True, batch_size=100)
    assert report.imported == 1000 and [n for n, _ in report.skipped] == [702]
    live = Normalizer(plant64())
    expected = 0
    for r in rows:
        t, m, sig, v = r.split(",")
        with contextlib.suppress(NormalizeError):
            expected += sum(int(f.value) for f in live.feed(Sample(m, sig, int(v) if sig == "good" else float(v),
                                                                   datetime.fromisoformat(t)))
                            if f.kind == "count")
    assert (await good_total(sqlite_store))["cnc.good"] == expected
    if "64-bit" not in word:
        assert expected == 999


def test_mieruka_import_exits_2_with_the_line_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.plant import dump_plant
    from mieruka.cli import main

    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(dump_plant(plant64()), encoding="utf-8")
    rows = many_rows(500)
    rows.insert(300, "9999-12-31T00:00:00+00:00,cnc,good,400")
    path = write_csv(tmp_path / "samples.csv", rows)
    db = tmp_path / "store.db"
    assert main(["import", "--plant", str(plant_file), "--store", f"sqlite:///{db}", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:302:" in err and "nothing imported" in err and "Traceback" not in err
    import sqlite3
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM counts").fetchone() == (0,)
    # the margin is an option: a day ahead is fine with --max-clock-ahead-s 2e9 (but 9999 is never storable)
    assert main(["import", "--plant", str(plant_file), "--store", f"sqlite:///{db}", "--max-clock-ahead-s",
                 "1e12", str(path)]) == 2
    assert "no store can hold" in capsys.readouterr().err
