"""The on-disk spool: order, types, state, crash safety, the bound and both full policies, the lock."""

from __future__ import annotations

import json
import logging
import math
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import collector.spool as spool_mod
from collector.spool import FILE_NAME, Spool, SpoolError, SpoolFull, encode
from core.model import Fact

REPO = Path(__file__).resolve().parents[2]


def counts(n: int, base: int = 0, machine: str = "m1") -> list[Fact]:
    """``n`` count facts whose encodings all have the same length (fixed-width times and values)."""
    return [Fact("count", 1_700_000_000_000_000_000 + base + i, "L1", machine, "good", 5, None, None)
            for i in range(n)]


def put(spool: Spool, facts: list[Fact], state: dict[str, Any] | None = None) -> int:
    seq = spool.append(facts, state)
    assert seq is not None
    return seq


def all_batches(spool: Spool) -> list[tuple[int, list[Fact]]]:
    return spool.peek(1 << 40)


def seqs(spool: Spool) -> list[int]:
    return [seq for seq, _ in all_batches(spool)]


MIXED = [
    Fact("count", 1_700_000_000_000_000_001, "L1", "m1", "good", 1),
    Fact("gauge", 1_700_000_000_000_000_002, "L1", "m1", "temp", 1.0, None, "°C"),
    Fact("gauge", 1_700_000_000_000_000_003, "L1", "m1", "temp", 21.25, None, "degC"),
    Fact("gauge", 1_700_000_000_000_000_004, "L1", "m1", "temp", -0.0, None, None),
    Fact("gauge", 1_700_000_000_000_000_005, "L1", "m1", "pressure", 1e300, None, "bar"),
    Fact("state", 1_700_000_000_000_000_006, "L1", "m1", "state", "down", 17),
    Fact("state", 1_700_000_000_000_000_007, "L1", "m1", "state", "running", None),
    Fact("product", 1_700_000_000_000_000_008, "組立ライン", "プレス機1", "product", "1"),
    Fact("count", 0, "", "m\"2\\", "scrap", 2**62),
]


def test_round_trip_keeps_order_and_types_across_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        s1 = put(spool, MIXED[:4])
        s2 = put(spool, MIXED[4:])
        s3 = put(spool, [Fact("gauge", 9, "L1", "m1", "temp", math.nan, None, "C"),
                           Fact("gauge", 10, "L1", "m1", "temp", -math.inf, None, "C")])
    assert s1 < s2 < s3
    with Spool(tmp_path) as spool:
        got = all_batches(spool)
    assert [seq for seq, _ in got] == [s1, s2, s3]
    assert got[0][1] + got[1][1] == MIXED
    for want, have in zip(MIXED, got[0][1] + got[1][1], strict=True):
        assert type(have.value) is type(want.value), (want, have)
        assert type(have.time_ns) is int
        assert have.reason is None or type(have.reason) is int
    assert type(got[0][1][1].value) is float and got[0][1][1].value == 1.0
    negzero = got[0][1][3].value
    assert isinstance(negzero, float) and math.copysign(1.0, negzero) == -1.0
    assert got[0][1][0].value == 1 and type(got[0][1][0].value) is int
    nan, ninf = got[2][1]
    assert isinstance(nan.value, float) and math.isnan(nan.value)
    assert ninf.value == -math.inf


def test_confirm_deletes_exactly_up_to_seq_and_seq_is_never_reused(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        appended = [put(spool, counts(3, base=10 * i)) for i in range(5)]
        assert appended == sorted(appended)
        spool.confirm(appended[1])
        assert seqs(spool) == appended[2:]
        assert spool.stats.facts == 9 and spool.stats.batches == 3 and spool.stats.confirmed_facts == 6
        spool.confirm(appended[1])  # again: nothing left to delete there
        spool.confirm(appended[0] - 1)
        assert seqs(spool) == appended[2:]
        assert spool.stats.confirmed_facts == 6
        spool.confirm(appended[3])
        assert seqs(spool) == appended[4:]
        spool.confirm(appended[4])
        assert all_batches(spool) == [] and spool.stats.batches == 0 and spool.stats.bytes == 0
        assert spool.stats.oldest_spooled_at is None
    with Spool(tmp_path) as spool:
        later = put(spool, counts(1))
    assert later > appended[-1]


def test_stats_are_right_after_reopen(tmp_path: Path) -> None:
    before = datetime.now(UTC)
    with Spool(tmp_path, max_bytes=10_000_000) as spool:
        put(spool, counts(4))
        after_first = datetime.now(UTC)
        put(spool, counts(6, base=100))
        put(spool, counts(2, base=200))
        first = spool.stats.oldest_spooled_at
        assert first is not None and before <= first <= after_first
        assert first.tzinfo is not None and first.utcoffset() == UTC.utcoffset(None)
    with Spool(tmp_path, max_bytes=10_000_000) as spool:
        st = spool.stats
        assert (st.facts, st.batches, st.max_bytes) == (12, 3, 10_000_000)
        assert st.bytes == len(encode(counts(4))) + len(encode(counts(6, base=100))) + len(encode(counts(2, base=200)))
        assert st.oldest_spooled_at == first
        assert (st.appended_facts, st.confirmed_facts, st.dropped_facts, st.full_events) == (0, 0, 0, 0)
        spool.confirm(seqs(spool)[0])
        second = spool.stats.oldest_spooled_at
        assert second is not None and first <= second <= datetime.now(UTC)
        assert spool.stats.facts == 8 and spool.stats.confirmed_facts == 4
        put(spool, counts(1))
        assert spool.stats.appended_facts == 1 and spool.stats.facts == 9
        assert spool.stats.oldest_spooled_at == second


def test_state_is_saved_with_the_batch_and_loaded_after_reopen(tmp_path: Path) -> None:
    state1: dict[str, Any] = {"version": 1, "counters": {"m1": {"good": {"last": 41, "restarted": False}}}}
    state2: dict[str, Any] = {"version": 1, "counters": {"m1": {"good": {"last": 44, "restarted": True}}}}
    with Spool(tmp_path) as spool:
        assert spool.load_state() is None
        seq = put(spool, counts(3), state1)
        assert spool.load_state() == state1
        assert spool.append([], state2) is None  # state only: no batch
        assert spool.stats.batches == 1
    with Spool(tmp_path) as spool:
        assert spool.load_state() == state2
        spool.save_state({"version": 1, "x": [1, 2.5, "3"]})
        assert seqs(spool) == [seq]
    with Spool(tmp_path) as spool:
        assert spool.load_state() == {"version": 1, "x": [1, 2.5, "3"]}


def test_state_entries_are_replaced_by_key_with_their_batch_and_kept_across_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=10_000) as spool:
        assert spool.load_entries() == {}
        put(spool, counts(3))
        spool.append(counts(2), entries={"c/m1/good": {"last": 41}, "t/m1/good": 7, "m/m1": {"reason": None}})
        spool.append(counts(1), entries={"c/m1/good": {"last": 44}})  # only what changed
        assert spool.load_entries() == {"c/m1/good": {"last": 44}, "t/m1/good": 7, "m/m1": {"reason": None}}
    # a batch that does not fit ("block") writes nothing: not its entries either
    with Spool(tmp_path, max_bytes=1) as spool:
        with pytest.raises(SpoolFull):
            spool.append(counts(5), entries={"c/m1/good": {"last": 99}})
        assert spool.load_entries()["c/m1/good"] == {"last": 44}
        assert spool.append([], entries={"t/m1/good": 8}) is None  # entries alone always fit
    with Spool(tmp_path) as spool:
        assert spool.load_entries() == {"c/m1/good": {"last": 44}, "t/m1/good": 8, "m/m1": {"reason": None}}


# state entry values as the normalizer makes them (ints and None above all: a signal's last fact
# time) and anything else JSON holds, nested
_ENTRY_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10)


@given(st.lists(_ENTRY_VALUES, max_size=20))
def test_state_entries_fast_path_writes_what_the_general_encoder_writes(values: list[Any]) -> None:
    # ints and None skip the JSON encoder; every value's text must be the general encoder's
    for v in values:
        assert spool_mod._entry_json(v) == json.dumps(v, separators=(",", ":"))


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12),
                       st.none() | st.integers() | st.booleans() | st.text(max_size=8)
                       | st.floats(allow_nan=False) | st.dictionaries(st.sampled_from(["last", "src_ns"]),
                                                                      st.none() | st.integers(), max_size=2),
                       max_size=12))
def test_state_entries_of_any_value_come_back_as_appended(entries: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp, Spool(tmp) as spool:
        spool.append(counts(1), entries=entries)
        loaded = spool.load_entries()
    assert loaded == entries
    # the same types: 1 stays int, True stays bool, 1.0 stays float
    assert {k: type(v) for k, v in loaded.items()} == {k: type(v) for k, v in entries.items()}


_CHILD = """
import sys, time
from collector.spool import Spool
from core.model import Fact
spool = Spool(sys.argv[1], synchronous=sys.argv[2])
deadline = time.monotonic() + 60  # never outlive a parent that failed to kill us
i = 0
while time.monotonic() < deadline:
    i += 1
    facts = [Fact("count", i * 1000 + j, "L1", "m1", "good", j, None, None) for j in range(50)]
    seq = spool.append(facts, {"batch": i})
    print(i, seq, flush=True)
"""


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_kill_9_mid_stream_loses_no_acknowledged_batch(tmp_path: Path, synchronous: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), synchronous], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    out = b""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            while out.count(b"\n") < 300 and time.monotonic() < deadline and proc.poll() is None:
                if sel.select(timeout=1.0):
                    out += os.read(proc.stdout.fileno(), 65536)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    lines = (out + rest).split(b"\n")[:-1]  # the last piece may be a line cut off by the kill
    printed = [tuple(int(x) for x in line.split()) for line in lines]
    assert len(printed) >= 300, err.decode(errors="replace")

    with Spool(tmp_path) as spool:
        got = all_batches(spool)
        state = spool.load_state()
    spooled = {seq: facts for seq, facts in got}
    for i, seq in printed:
        assert seq in spooled, f"batch {i} (seq {seq}) was acknowledged but is gone"
        assert spooled[seq] == [Fact("count", i * 1000 + j, "L1", "m1", "good", j, None, None) for j in range(50)]
    # at most the one batch whose print the kill cut off is in the spool but unprinted
    assert [seq for seq, _ in got] == list(range(1, len(got) + 1))
    assert len(printed) <= len(got) <= len(printed) + 1
    # the state went in with its batch: it is the last spooled batch's
    assert state == {"batch": len(got)}
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_block_raises_spool_full_writes_nothing_and_accepts_after_confirm(tmp_path: Path) -> None:
    a, b, c = counts(10, base=0), counts(10, base=100), counts(10, base=200)
    size = len(encode(a))
    assert len(encode(b)) == len(encode(c)) == size
    with Spool(tmp_path, max_bytes=2 * size, when_full="block") as spool:
        sa = put(spool, a, {"n": 1})
        sb = put(spool, b, {"n": 2})
        assert spool.stats.bytes == 2 * size  # exactly at the bound is fine
        with pytest.raises(SpoolFull):
            put(spool, c, {"n": 3})
        st = spool.stats
        assert (st.facts, st.batches, st.bytes, st.full_events, st.appended_facts) == (20, 2, 2 * size, 1, 20)
        assert seqs(spool) == [sa, sb]
        assert spool.load_state() == {"n": 2}  # the state of a refused batch is not saved either
        with pytest.raises(SpoolFull):
            put(spool, c, {"n": 3})
        assert spool.stats.full_events == 2
        assert spool.append([], {"n": 2.5}) is None  # state alone needs no room
        spool.confirm(sa)
        sc = put(spool, c, {"n": 3})
        assert sc == sb + 1
        assert [f for _, fs in all_batches(spool) for f in fs] == b + c
        assert spool.load_state() == {"n": 3}
        assert spool.stats.full_events == 2 and spool.stats.dropped_facts == 0


def test_block_empty_spool_accepts_an_oversize_batch(tmp_path: Path) -> None:
    big = counts(100)
    with Spool(tmp_path, max_bytes=100, when_full="block") as spool:
        assert len(encode(big)) > 100
        seq = put(spool, big)
        assert spool.stats.bytes == len(encode(big)) > spool.stats.max_bytes
        assert spool.stats.full_events == 0
        with pytest.raises(SpoolFull):
            put(spool, counts(1, base=1000))  # not empty any more: anything else waits
        assert spool.stats.full_events == 1
        spool.confirm(seq)
        put(spool, counts(1, base=1000))


def test_drop_oldest_deletes_just_enough_oldest_batches(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = counts(40, base=0), counts(10, base=100), counts(10, base=200)
    d, e = counts(30, base=300), counts(15, base=400)
    sa, sb, sc, sd, se = (len(encode(x)) for x in (a, b, c, d, e))
    limit = sa + sb + sc
    # the premises of the expected evictions below
    assert sd <= sa < sd + sb  # D needs A's room only
    assert 0 < sd + se - sa <= sb  # then E needs B's room only (after A went)
    caplog.set_level(logging.WARNING, logger="collector.spool")
    with Spool(tmp_path, max_bytes=limit, when_full="drop-oldest") as spool:
        seq_a, seq_b, seq_c = put(spool, a), put(spool, b), put(spool, c)
        assert spool.stats.dropped_batches == 0 and spool.stats.full_events == 0
        seq_d = put(spool, d)
        st = spool.stats
        assert (st.dropped_batches, st.dropped_facts, st.full_events) == (1, 40, 1)
        assert seqs(spool) == [seq_b, seq_c, seq_d]
        seq_e = put(spool, e)
        st = spool.stats
        assert (st.dropped_batches, st.dropped_facts, st.full_events) == (2, 50, 2)
        assert (st.facts, st.batches, st.bytes) == (55, 3, sc + sd + se)
        assert st.bytes <= limit
        assert all_batches(spool) == [(seq_c, c), (seq_d, d), (seq_e, e)]
        assert st.appended_facts == 105 and st.confirmed_facts == 0
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "40 facts (1 batches)" in warnings[0]  # then at most once a minute
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "10 more facts (1 batches)" in warnings[1]  # close reports the rest
    with Spool(tmp_path, max_bytes=limit) as spool:
        assert all_batches(spool) == [(seq_c, c), (seq_d, d), (seq_e, e)]
        assert spool.stats.oldest_spooled_at is not None and spool.stats.bytes == sc + sd + se
    assert seq_a < seq_b < seq_c < seq_d < seq_e


def test_drop_oldest_warns_again_after_the_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "DROP_LOG_INTERVAL_S", 0.0)
    caplog.set_level(logging.WARNING, logger="collector.spool")
    size = len(encode(counts(5)))
    with Spool(tmp_path, max_bytes=2 * size, when_full="drop-oldest") as spool:
        for i in range(5):
            put(spool, counts(5, base=100 * i))
        assert spool.stats.dropped_batches == 3 and spool.stats.dropped_facts == 15
        assert len(caplog.records) == 3
        assert "dropped 5 more facts (1 batches) since the last warning, 15 in all" in caplog.records[-1].getMessage()


def test_drop_oldest_oversize_batch_evicts_everything_else(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=500, when_full="drop-oldest") as spool:
        put(spool, counts(2))
        put(spool, counts(2, base=10))
        big = counts(50, base=100)
        seq = put(spool, big)
        assert all_batches(spool) == [(seq, big)]
        st = spool.stats
        assert (st.dropped_batches, st.dropped_facts, st.facts, st.batches) == (2, 4, 50, 1)


def test_second_spool_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path) as first:
        put(first, counts(1))
        with pytest.raises(SpoolError, match="in use by another collector") as info:
            Spool(tmp_path)
        assert str(tmp_path) in str(info.value) and f"pid {os.getpid()}" in str(info.value)
        put(first, counts(1, base=1))  # the refused one did not disturb the owner
        assert first.stats.batches == 2
    with Spool(tmp_path) as again:  # released on close
        assert again.stats.batches == 2


def test_a_spool_locked_by_another_process_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path):
        script = ("import sys\nfrom collector.spool import Spool, SpoolError\n"
                  "try:\n    Spool(sys.argv[1])\nexcept SpoolError as e:\n    print(e)\n    sys.exit(3)\n")
        res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    assert str(tmp_path) in res.stdout and "in use by another collector" in res.stdout


def test_a_file_that_is_not_a_spool_gives_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / FILE_NAME).write_bytes(b"this is not an SQLite database, just some text\n" * 200)
    with pytest.raises(SpoolError, match="not a usable mieruka spool") as info:
        Spool(junk)
    assert str(junk / FILE_NAME) in str(info.value)

    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / FILE_NAME) as db:
        db.execute("CREATE TABLE measurements (t INTEGER, v REAL)")
    db.close()
    with pytest.raises(SpoolError, match="not a mieruka spool") as info:
        Spool(other)
    assert str(other / FILE_NAME) in str(info.value)

    # the failed opens released the directory lock
    (junk / FILE_NAME).unlink()
    with Spool(junk) as spool:
        assert spool.stats.batches == 0


def test_a_directory_that_is_a_file_gives_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(SpoolError, match="afile"):
        Spool(f)


def test_peek_limits(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        assert spool.peek(10) == []
        b3, b4, b5 = counts(3), counts(4, base=10), counts(5, base=20)
        s3, s4, s5 = put(spool, b3), put(spool, b4), put(spool, b5)
        assert spool.peek(7) == [(s3, b3), (s4, b4)]  # exactly full
        assert spool.peek(8) == [(s3, b3), (s4, b4)]  # whole batches only: b5 would exceed
        assert spool.peek(6) == [(s3, b3)]
        assert spool.peek(1) == [(s3, b3)]  # always at least one batch
        assert spool.peek(12) == [(s3, b3), (s4, b4), (s5, b5)]
        assert spool.peek(1000) == [(s3, b3), (s4, b4), (s5, b5)]
        assert spool.peek(100, after=s3) == [(s4, b4), (s5, b5)]
        assert spool.peek(1, after=s4) == [(s5, b5)]
        assert spool.peek(100, after=s5) == []
        assert spool.peek(7) == spool.peek(7)  # peek removes nothing
        with pytest.raises(ValueError):
            spool.peek(0)


def test_closed_spool_refuses_calls(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.close()
    spool.close()  # idempotent
    with pytest.raises(SpoolError, match="closed"):
        put(spool, counts(1))
    with pytest.raises(SpoolError, match="closed"):
        spool.peek(1)


def test_calls_from_many_threads(tmp_path: Path) -> None:
    with Spool(tmp_path, synchronous="normal") as spool:
        def work(t: int) -> list[int]:
            return [put(spool, counts(2, base=1000 * t + 10 * i, machine=f"m{t}")) for i in range(50)]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        flat = [s for r in results for s in r]
        assert len(set(flat)) == 400
        for r in results:
            assert r == sorted(r)
        assert spool.stats.facts == 800 and spool.stats.batches == 400
        assert seqs(spool) == sorted(flat)


def test_drained_spool_gives_free_pages_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "_VACUUM_FREE_BYTES", 1 << 20)
    with Spool(tmp_path, synchronous="normal") as spool:
        for i in range(100):
            put(spool, counts(1000, base=10_000 * i))
        spool.confirm(seqs(spool)[-1])
    assert (tmp_path / FILE_NAME).stat().st_size < 1 << 20



# ---- quarantine: facts the store refused, kept, counted, queued again on request ---------------------


def test_confirm_quarantines_refused_facts_in_the_same_transaction_and_requeue_moves_them_back(
        tmp_path: Path) -> None:
    facts = counts(6)
    refused = [(facts[2], "store: too far in the future"), (facts[4], "store: too big")]
    with Spool(tmp_path) as spool:
        seq = put(spool, facts)
        put(spool, counts(2, base=100))
        spool.confirm(seq, refused)
        assert spool.stats.quarantined == 2 and spool.stats.quarantined_total == 2
        assert spool.stats.facts == 2 and seqs(spool) == [seq + 1]
        # confirming nothing again quarantines nothing twice
        spool.confirm(seq, refused)
        assert spool.stats.quarantined == 2
    with Spool(tmp_path) as spool:  # durable, and counted after reopen
        assert spool.stats.quarantined == 2
        got = spool.quarantined()
        assert [(f, r) for _, _, r, f in got] == [(f, r) for f, r in refused]
        assert spool.requeue_quarantine() == 2
        assert spool.stats.quarantined == 0 and spool.quarantined() == []
        assert [fs for _, fs in all_batches(spool)][-1] == [facts[2], facts[4]]
        assert spool.stats.facts == 4
        assert spool.requeue_quarantine() == 0
    with Spool(tmp_path) as spool:
        assert spool.stats.quarantined == 0 and spool.stats.facts == 4


def test_a_spool_made_before_the_quarantine_gets_one(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        put(spool, counts(1))
    db = sqlite3.connect(tmp_path / FILE_NAME)
    db.execute("DROP TABLE quarantine")
    db.commit()
    db.close()
    with Spool(tmp_path) as spool:
        seq = seqs(spool)[0]
        spool.confirm(seq, [(counts(1)[0], "refused")])
        assert spool.stats.quarantined == 1


def test_mieruka_spool_retry_quarantine_is_refused_while_a_collector_holds_the_spool(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mieruka.cli import main

    with Spool(tmp_path) as spool:
        spool.confirm(put(spool, counts(3)), [(counts(3)[1], "refused")])
        assert main(["spool", "retry-quarantine", "--spool-dir", str(tmp_path)]) == 2
        assert "in use by another collector" in capsys.readouterr().err
    assert main(["spool", "show-quarantine", "--spool-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "refused" in out and "1 quarantined facts" in out
    assert main(["spool", "retry-quarantine", "--spool-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("1 quarantined facts queued again")
    with Spool(tmp_path) as spool:
        assert spool.stats.quarantined == 0 and [fs for _, fs in all_batches(spool)] == [[counts(3)[1]]]
    assert main(["spool", "retry-quarantine", "--spool-dir", str(tmp_path / "nothing")]) == 2


def test_batches_kept_in_memory_read_as_the_file_holds_them_and_leave_with_confirm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the latest appends are peeked from memory (no decoding): the same facts as read back from
    # the file, up to the bound; beyond it and after a reopen they come from the file
    monkeypatch.setattr(spool_mod, "_RECENT_MAX_FACTS", 25)
    odd = [Fact("gauge", 5, "l1", "m1", "temp", math.inf, None, "degC"),
           Fact("state", 6, "l1", "m1", "state", "down", 20, None)]
    with Spool(tmp_path / "s") as spool:
        seqs = [put(spool, counts(10, 0)), put(spool, counts(10, 10) + odd), put(spool, counts(10, 20))]
        assert sorted(spool._recent) == seqs[:2]  # the third would pass the bound: read from the file
        in_memory = spool.peek(1000)
        spool.confirm(seqs[0])
        assert sorted(spool._recent) == seqs[1:2] and spool._recent_facts == 12
    with Spool(tmp_path / "s") as spool:
        from_file = spool.peek(1000)
    assert in_memory[1:] == from_file
    assert [f for _, fs in in_memory for f in fs] == counts(10, 0) + counts(10, 10) + odd + counts(10, 20)
