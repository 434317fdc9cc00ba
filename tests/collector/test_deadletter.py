from __future__ import annotations

import base64
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from collector.deadletter import DeadLetters

LOG = logging.getLogger("tests.deadletter")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name and r.levelno == logging.WARNING]


def test_counts_into_the_shared_counter_without_a_file() -> None:
    shared: Counter[str] = Counter({"not_json": 2})
    dead = DeadLetters(None, LOG, shared)
    dead.record("not_json", "payload is not JSON", source="broker")
    dead.record("wrong_type", "good needs an integer", source="broker")
    dead.record("not_json", "payload is not JSON", source="broker")
    assert dead.counts is shared
    assert shared == Counter({"not_json": 4, "wrong_type": 1})
    dead.flush()  # nothing opened: no-ops
    dead.close()


def test_log_is_rate_limited_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    dead = DeadLetters(None, LOG, log_every_s=60, clock=clock)
    caplog.set_level(logging.WARNING, logger=LOG.name)

    dead.record("not_json", "payload is not JSON", source="broker", topic="a/b")
    assert len(warnings(caplog)) == 1
    first = warnings(caplog)[0]
    assert "not_json" in first and "broker on a/b" in first and "payload is not JSON" in first

    clock.t += 10
    dead.record("not_json", "payload is not JSON", source="broker")
    clock.t += 10
    dead.record("not_json", "payload is not JSON", source="broker")
    assert len(warnings(caplog)) == 1  # within the window: counted, not logged

    dead.record("wrong_type", "good needs an integer", source="broker")  # another kind has its own window
    assert len(warnings(caplog)) == 2

    clock.t += 40  # 60 s after the first line
    dead.record("not_json", "payload is not JSON again", source="broker")
    assert len(warnings(caplog)) == 3
    again = warnings(caplog)[2]
    assert "payload is not JSON again" in again
    assert "2 more not_json since the last line" in again and "4 in all" in again
    assert dead.counts == Counter({"not_json": 4, "wrong_type": 1})

    clock.t += 59  # the window restarts at the last line
    dead.record("not_json", "x", source="broker")
    assert len(warnings(caplog)) == 3
    clock.t += 1
    dead.record("not_json", "y", source="broker")
    assert len(warnings(caplog)) == 4
    assert "1 more not_json since the last line" in warnings(caplog)[3]


def test_file_keeps_text_and_binary_payloads(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "dead.jsonl"  # parents are created
    dead = DeadLetters(path, LOG)
    assert not path.exists()  # opened lazily
    binary = b"\xff\x00\x9f{garbage"
    dead.record("not_json", "payload is not JSON", source="broker", raw=b'{"good": 1', topic="l/m/counts")
    dead.record("not_json", "payload is not JSON", source="broker", raw=bytearray(binary), topic="l/m/counts")
    dead.record("bad_value", "counter good cannot be negative", source="plc-1", raw="-3 ✓")
    dead.record("unmapped_state", "state 9 is not in the map")
    dead.flush()
    got = lines(path)
    assert len(got) == 4
    t_format = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    assert all(t_format.match(o["t"]) for o in got)
    assert {k: v for k, v in got[0].items() if k != "t"} == {
        "source": "broker", "kind": "not_json", "reason": "payload is not JSON", "topic": "l/m/counts",
        "payload": '{"good": 1'}
    assert "payload" not in got[1] and base64.b64decode(got[1]["payload_b64"]) == binary
    assert got[2]["payload"] == "-3 ✓" and "topic" not in got[2] and got[2]["source"] == "plc-1"
    assert "payload" not in got[3] and "payload_b64" not in got[3] and got[3]["source"] == ""
    dead.close()

    # a new instance appends to the same file
    again = DeadLetters(str(path), LOG)
    again.record("not_json", "again", raw=b"x")
    again.close()
    assert [o["reason"] for o in lines(path)][-1] == "again" and len(lines(path)) == 5


def test_rotation_keeps_one_old_generation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOG.name)
    path = tmp_path / "dead.jsonl"
    old = tmp_path / "dead.jsonl.1"
    dead = DeadLetters(path, LOG, max_bytes=1000)
    for i in range(40):  # ~140 bytes a line: several rotations
        dead.record("not_json", f"letter {i:03d}", source="broker", raw=b"x" * 40)
    dead.close()
    assert path.stat().st_size <= 1000 and old.stat().st_size <= 1000
    current, previous = lines(path), lines(old)
    reasons = [o["reason"] for o in previous + current]
    assert reasons == [f"letter {i:03d}" for i in range(40 - len(reasons), 40)]  # the newest, in order, no gap
    line = len((path.read_bytes().splitlines(keepends=True))[0])
    assert old.stat().st_size + line > 1000  # the old file was rotated only once it could not take another line
    rotations = [r for r in caplog.records if "moved it to" in r.getMessage()]
    assert len(rotations) >= 3
    assert [r.levelno for r in rotations].count(logging.WARNING) == 1  # logged once, later ones at DEBUG
    assert str(old) in rotations[0].getMessage()


def test_an_unwritable_file_does_not_stop_recording(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    dead = DeadLetters(blocker / "dead.jsonl", LOG)
    caplog.set_level(logging.WARNING, logger=LOG.name)
    dead.record("not_json", "x", raw=b"x")
    dead.record("not_json", "x", raw=b"x")
    dead.flush()
    dead.close()
    assert dead.counts["not_json"] == 2 and dead.write_errors == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write dead letters" in errors[0].getMessage()
