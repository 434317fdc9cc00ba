"""Broken plant files end in exit 2 and a bounded message naming the file: never a hang, a
traceback or unbounded memory.

Every hand-written case runs `mieruka check-config` as a subprocess under a 1 GiB address-space
cap and a 5 s timeout; seeded random mutations of the demo plant run through the loader in
process (hundreds of them) and a few through the command.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.plant import MAX_PLANT_BYTES, Plant, PlantFileError, load_plant
from tests.conftest import DEMO_PLANT

AS_LIMIT = 1 << 30
PEAK_RSS_KIB = 300 << 10  # check-config of the demo plant peaks near 40 MiB
TIMEOUT_S = 5.0
DEMO = DEMO_PLANT.read_text(encoding="utf-8")
TOPIC = '"ashikaga-1/press-2/press-2a/counts", field: good'


# A launcher caps the address space, runs `mieruka` in its own (freshly exec'd) interpreter and writes
# that interpreter's peak resident set (VmHWM) at exit. Not wait4's ru_maxrss: a child forked (or
# vforked) from the test worker inherits the worker's high-water mark, hundreds of MiB late in a run.
_CAPPED = """
import atexit, os, resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
def _hwm():
    out = os.environ.get("MIERUKA_TEST_HWM")
    if out:
        with open("/proc/self/status") as f:
            kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        with open(out, "w") as f:
            f.write(kib)
atexit.register(_hwm)
sys.argv = ["mieruka", *sys.argv[1:]]
runpy.run_module("mieruka.cli", run_name="__main__", alter_sys=True)
"""


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_kib: int


def run_check(path: Path) -> Run:
    """`mieruka check-config PATH` under the memory cap, killed after TIMEOUT_S, with the peak resident
    set its interpreter reported (wait4's, an over-estimate, only if it could not report)."""
    out, err = path.with_suffix(".out"), path.with_suffix(".err")
    with out.open("wb") as fo, err.open("wb") as fe:
        t0 = time.monotonic()
        hwm = path.with_suffix(".hwm")
        p = subprocess.Popen([sys.executable, "-c", _CAPPED.format(limit=AS_LIMIT), "check-config", str(path)],
                             stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                             env={**os.environ, "MIERUKA_TEST_HWM": str(hwm)})
        killer = threading.Timer(TIMEOUT_S, p.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            killer.cancel()
        seconds = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    return Run(p.returncode, out.read_text(encoding="utf-8", errors="replace"),
               err.read_text(encoding="utf-8", errors="replace"), seconds,
               int(hwm.read_text()) if hwm.exists() else usage.ru_maxrss)


def demo_with(old: str, new: str) -> str:
    assert old in DEMO, old
    return DEMO.replace(old, new, 1)


def billion_laughs() -> str:
    # the classic: ten levels of nine aliases each, 10^9 "lol"s once expanded, in 649 bytes
    lines = ['lol0: &lol0 "lol"']
    for i in range(1, 10):
        refs = ",".join([f"*lol{i - 1}"] * 9)
        lines.append(f"lol{i}: &lol{i} [{refs}]")
    return "\n".join(lines) + "\nsite: {id: x}\n"


def demo_dumped(change: Callable[[dict[str, Any]], None]) -> str:
    raw = yaml.safe_load(DEMO)
    change(raw)
    return yaml.safe_dump(raw, allow_unicode=True, width=1000)


def overlapping_shifts(raw: dict[str, Any]) -> None:
    raw["calendar"]["shifts"] = [{"id": f"s{i}", "start": "00:00", "end": "00:01", "days": ["mon"]}
                                 for i in range(3000)]


def wrong_names(raw: dict[str, Any]) -> None:
    raw["lines"][0]["machines"] = [{"id": f"m{i}", "name": 1, "source": "plc-1", "signals": {}}
                                   for i in range(5000)]


def unknown_sources(raw: dict[str, Any]) -> None:
    raw["sources"] = {f"src-{i}": {"mqtt": {}} for i in range(3000)}
    raw["lines"][0]["machines"] = [{"id": f"m{i}", "source": f"x{i}", "signals": {}} for i in range(3000)]


# name -> file content (bytes as is, str as UTF-8), and a piece the message must contain
CASES: dict[str, tuple[bytes | str, str]] = {
    "billion laughs": (billion_laughs(), "alias"),
    "merge key with an alias": ('base: &b {id: x}\nsite: {<<: *b}\n', "alias"),
    "10000 [": ("[" * 10_000, "nest"),
    "10000 {": ("{a: " * 10_000, "nest"),
    "2000 nested block mappings": ("".join(" " * i + "a:\n" for i in range(2000)), "nested"),
    "latin-1 byte": (DEMO.replace("Tool change", "Outil chang\u00e9").encode("latin-1", "replace"),
                     "not UTF-8"),
    "latin-1 byte after kanji": (DEMO.encode().replace("工具交換, en".encode(), "工具交換".encode() + b"\xe9, en", 1),
                                 "line 15, column 23: the file is not UTF-8"),
    "UTF-16": (DEMO.encode("utf-16"), "not UTF-8"),
    "NUL byte": (demo_with("ashikaga-1,", "ashika\0ga-1,"), "NUL"),
    "control character": (demo_with("ashikaga-1,", "ashika\x07ga-1,"), "line 3, column 18: character U+0007"),
    # after multi-byte characters: libyaml counts bytes, the message counts characters
    "control character after kanji": (demo_with("工具交換, en", "工具交換\x07, en"), "line 15, column 23: character"),
    "duplicate top-level key": (DEMO + "\nsite: {id: other}\n", "duplicate key 'site'"),
    "duplicate signal": (demo_with('          scrap: {node: "ns=2;s=blade-1.cnc-1.ScrapCount"',
                                   '          good: {node: "ns=2;s=blade-1.cnc-1.ScrapCount"'),
                         "duplicate key 'good'"),
    "a code twice as 10 and '10'": (demo_with("reasons:\n", 'reasons:\n  "10": {name: Again}\n'),
                                    "keys '10' and 10 are the same code 10"),
    ".inf": (demo_with("micro_stop_s: 120", "micro_stop_s: .inf"), "finite"),
    "-.inf": (demo_with("micro_stop_s: 120", "micro_stop_s: -.inf"), "finite"),
    ".nan": (demo_with("micro_stop_s: 120", "micro_stop_s: .nan"), "finite"),
    "1e999": (demo_with("target_per_hour: 110", "target_per_hour: 1e999"), "finite"),
    "1e300": (demo_with("micro_stop_s: 120", "micro_stop_s: 1e300"), "less than or equal to 86400"),
    "quoted inf": (demo_with("micro_stop_s: 120", 'micro_stop_s: "inf"'), "micro_stop_s"),
    "nan in a product": (demo_with("{ideal_cycle_s: 28,", "{ideal_cycle_s: .NaN,"), "finite"),
    "topic a/#/b": (demo_with(TOPIC, '"a/#/b", field: good'), "'#' must be the last level"),
    "topic a/b#": (demo_with(TOPIC, '"a/b#", field: good'), "'#' must be the last level"),
    "topic +x/y": (demo_with(TOPIC, '"+x/y", field: good'), "'+' must be alone"),
    "topic empty": (demo_with(TOPIC, '"", field: good'), "cannot be empty"),
    "topic with NUL": (demo_with(TOPIC, '"a/\\0/b", field: good'), "NUL"),
    "topic of 70 000 bytes": (demo_with(TOPIC, '"' + "t" * 70_000 + '", field: good'), "65535 bytes"),
    "huge scalar": (demo_with("name: {ja: 足利第一工場, en: Ashikaga Plant 1}",
                              "name: {ja: 足利第一工場, en: Ashikaga Plant 1}, extra: " + "x" * 3_000_000),
                    "unknown key 'extra'"),
    "huge bad value": (demo_with("timezone: Asia/Tokyo", "timezone: " + "Z" * 1_000_000), "unknown time zone"),
    # an explicit key (`? key`): an implicit one stops at 1024 characters
    "huge key": (demo_with("  micro_stop_s: 120", "  micro_stop_s: 120\n  ? " + "k" * 1_000_000 + "\n  : 1"),
                 "unknown key"),
    "file too large": ("# " + "x" * MAX_PLANT_BYTES + "\n", "larger than"),
    "400 000 nodes": ("a: [" + "1," * 400_000 + "1]\n", "YAML nodes"),
    "python tag": ('!!python/object/apply:os.system ["echo owned"]\n', "constructor"),
    "bad date": (demo_with('holidays: ["2026-12-31"', "holidays: [2026-13-45"), "cannot read this value"),
    "10 000-digit integer": (demo_with("micro_stop_s: 120", "micro_stop_s: " + "9" * 10_000), "cannot read"),
    # work that grew with the square of the file: every shift against every shift (minutes and
    # 1.6 GB for 3 000 shifts), every problem against every problem, every unknown source
    # against every source
    "3000 overlapping shifts": (demo_dumped(overlapping_shifts), "overlaps shift"),
    "5000 wrong names": (demo_dumped(wrong_names), "more problems"),
    "3000 unknown sources": (demo_dumped(unknown_sources), "unknown source"),
    "empty file": ("", "must be a mapping"),
    "a list": ("- 1\n- 2\n", "must be a mapping"),
    "truncated mid-flow": (DEMO[: DEMO.index("Turbine blade 100") + 5], "line "),
}


@pytest.mark.parametrize("name", list(CASES))
def test_broken_plant_file_exits_2_naming_the_file(tmp_path: Path, name: str) -> None:
    content, expected = CASES[name]
    path = tmp_path / "plant.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    r = run_check(path)
    assert r.returncode == 2, (name, r.returncode, r.stderr[-2000:])
    assert r.seconds < TIMEOUT_S
    assert r.peak_rss_kib < PEAK_RSS_KIB, r.peak_rss_kib
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.splitlines()
    assert lines and all(ln.startswith(f"{path}:") for ln in lines), r.stderr[:2000]
    assert expected in r.stderr, r.stderr[:2000]
    # no message repeats unbounded input: every line stays short, the whole answer small
    assert max(len(ln) for ln in lines) < 1200, max(len(ln) for ln in lines)
    assert len(r.stderr) < 20_000


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text("site: {id: a}\nsources: {}\nsite: {id: b}\n", encoding="utf-8")
    with pytest.raises(PlantFileError) as e:
        load_plant(path)
    assert "duplicate key 'site' (line 3; first at line 1)" in str(e.value)


def test_billion_laughs_is_small_and_refused_fast(tmp_path: Path) -> None:
    text = billion_laughs()
    assert len(text.encode()) < 700
    path = tmp_path / "lol.yaml"
    path.write_text(text, encoding="utf-8")
    t0 = time.monotonic()
    with pytest.raises(PlantFileError, match="alias"):
        load_plant(path)
    assert time.monotonic() - t0 < 0.5


# ---- seeded random mutations of the demo plant ----------------------------------------------

YAML_BITS = [":", "[", "]", "{", "}", ",", "&a ", "*a", "!!", "|", ">", "'", '"', "#", "-", "?", "%", "@",
             "\t", "\n", " ", ".inf", ".nan", "~", "null", "1e999", "0x", "\\", "\0", "\xff", "\ud7ff", "+", "/"]


def mutate(text: str, rng: random.Random) -> bytes:
    data = text
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        i = rng.randrange(len(data) + 1)
        if kind == 0:  # delete a span
            data = data[:i] + data[i + rng.randint(1, 40):]
        elif kind == 1:  # insert YAML syntax
            data = data[:i] + rng.choice(YAML_BITS) + data[i:]
        elif kind == 2:  # duplicate a line
            lines = data.split("\n")
            j = rng.randrange(len(lines))
            lines.insert(j, lines[j])
            data = "\n".join(lines)
        elif kind == 3:  # swap two lines
            lines = data.split("\n")
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            data = "\n".join(lines)
        elif kind == 4:  # truncate
            data = data[:i]
        else:  # change indentation
            data = data[:i] + " " * rng.randint(1, 3) + data[i:]
    raw = data.encode("utf-8", "surrogatepass")
    if rng.random() < 0.1 and raw:  # a stray byte that may break UTF-8
        k = rng.randrange(len(raw))
        raw = raw[:k] + bytes([rng.randrange(256)]) + raw[k + 1:]
    return raw


def test_mutations_in_process_end_in_a_plant_or_a_plant_file_error(tmp_path: Path) -> None:
    rng = random.Random(20261204)
    path = tmp_path / "plant.yaml"
    outcomes = {"ok": 0, "error": 0}
    t0 = time.monotonic()
    for n in range(2000):
        raw = mutate(DEMO, rng)
        path.write_bytes(raw)
        try:
            assert isinstance(load_plant(path), Plant)
            outcomes["ok"] += 1
        except PlantFileError as e:
            outcomes["error"] += 1
            msg = str(e)
            assert msg and all(ln.startswith(f"{path}") for ln in msg.splitlines()), (n, msg[:500])
        except Exception as e:  # anything else is the bug this test looks for
            pytest.fail(f"mutation {n} raised {type(e).__name__}: {e!s:.300} for:\n{raw[:3000]!r}")
    # the mutations exercised both outcomes, and stayed quick
    assert outcomes["ok"] > 40 and outcomes["error"] > 1500, outcomes
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("seed", range(6))
def test_mutations_through_check_config(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "plant.yaml"
    path.write_bytes(mutate(DEMO, rng))
    r = run_check(path)
    assert r.seconds < TIMEOUT_S and r.peak_rss_kib < PEAK_RSS_KIB
    assert r.returncode in (0, 2), (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    if r.returncode == 2:
        assert all(ln.startswith(f"{path}:") for ln in r.stderr.splitlines()), r.stderr[:2000]
    else:
        assert r.stdout.strip() == "ok"


# ---- every command that loads a plant file answers the same way ---------------------------------

COMMANDS = {
    "api": ["api", "--plant", "{plant}", "--store", "sqlite:///x.db", "--port", "0"],
    "collect": ["collect", "--plant", "{plant}", "--store", "sqlite:///x.db", "--duration", "1"],
    "simulate": ["simulate", "--plant", "{plant}", "--truth", "t.jsonl", "--duration", "1"],
    "import": ["import", "--plant", "{plant}", "--store", "sqlite:///x.db", "samples.csv"],
    "demo": ["demo", "--plant", "{plant}", "--data-dir", "data", "--duration", "1"],
    "truth summarize": ["truth", "summarize", "--truth", "t.jsonl", "--start", "2026-01-01T00:00Z",
                        "--end", "2026-01-02T00:00Z", "--plant", "{plant}"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", ["billion laughs", ".inf", "topic a/#/b"])
def test_every_command_exits_2_on_a_broken_plant(tmp_path: Path, command: str, case: str) -> None:
    content, expected = CASES[case]
    assert isinstance(content, str)
    plant = tmp_path / "plant.yaml"
    plant.write_text(content, encoding="utf-8")
    (tmp_path / "t.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "samples.csv").write_text("time,machine,signal,value\n", encoding="utf-8")
    args = [a.format(plant=plant) for a in COMMANDS[command]]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _CAPPED.format(limit=AS_LIMIT), *args], capture_output=True,
                       text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 2, (command, r.returncode, r.stderr[-2000:])
    assert time.monotonic() - t0 < TIMEOUT_S
    assert r.stderr.startswith(f"{plant}:") and expected in r.stderr and "Traceback" not in r.stderr, r.stderr
