"""`mieruka truth summarize` against figures computed here from the ledger's JSON lines directly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.plant import Plant
from mieruka.cli import main
from simulators.fastforward import run_fast_forward
from tests.simulators.conftest import DEMO_PLANT

# a Thursday morning in Tokyo: off shift until 08:00, the 10:00–10:10 break, two product runs
RUN_START = datetime.fromisoformat("2026-11-26T07:30:00+09:00")
RUN_END = datetime.fromisoformat("2026-11-26T12:30:00+09:00")
# a window that cuts states at both ends
W_START = "2026-11-26T07:47:13.500+09:00"
W_END = "2026-11-26T02:02:41.250Z"  # 11:02:41.25 in Tokyo


def ms(text: str) -> int:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert t.tzinfo is not None
    return round(t.timestamp() * 1000)


@dataclass
class Expected:
    good: Counter[str] = field(default_factory=Counter)
    scrap: Counter[str] = field(default_factory=Counter)
    state_ms: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    reason_ms: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    machines: list[str] = field(default_factory=list)


def expected(truth: Path, start: str, end: str) -> Expected:
    a, b = ms(start), ms(end)
    out = Expected()
    by_machine: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in truth.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "machine" not in rec:
            continue
        if rec["machine"] not in out.machines:
            out.machines.append(rec["machine"])
        by_machine[rec["machine"]].append(rec)
        if rec["kind"] == "part" and a <= ms(rec["t"]) < b:
            (out.good if rec["good"] else out.scrap)[rec["machine"]] += 1
    for m, recs in by_machine.items():
        states = [r for r in recs if r["kind"] == "state"]
        for i, r in enumerate(states):
            since = ms(r["t"])
            until = ms(states[i + 1]["t"]) if i + 1 < len(states) else b
            lo, hi = max(since, a), min(until, b)
            if hi > lo:
                out.state_ms[m][r["state"]] += hi - lo
                if "reason" in r:
                    out.reason_ms[m][r["reason"]] += hi - lo
    return out


@pytest.fixture(scope="module")
def truth(demo_plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("truth")
    run_fast_forward(demo_plant, 4, RUN_START, RUN_END, d / "samples.csv", d / "truth.jsonl")
    return d / "truth.jsonl"


def summarize(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["truth", "summarize", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_matches_the_ledger(truth: Path, demo_plant: Plant, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = summarize(capsys, "--truth", str(truth), "--start", W_START, "--end", W_END, "--json",
                           "--plant", str(DEMO_PLANT))
    assert rc == 0
    body = json.loads(out)
    exp = expected(truth, W_START, W_END)
    assert (body["start"], body["end"]) == ("2026-11-25T22:47:13.500Z", W_END)
    assert body["seconds"] == (ms(W_END) - ms(W_START)) / 1000
    assert [m["machine"] for m in body["machines"]] == [m.id for _, m in demo_plant.machines()]
    for m in body["machines"]:
        mid = m["machine"]
        assert m["line"] == demo_plant.line_of(mid).id  # type: ignore[union-attr]
        assert (m["good"], m["scrap"]) == (exp.good[mid], exp.scrap[mid])
        assert list(m["states"]) == ["running", "idle", "down", "changeover", "planned", "offline"]
        assert m["states"] == {st: exp.state_ms[mid][st] / 1000 for st in m["states"]}
        assert m["reasons"] == {str(k): v / 1000 for k, v in sorted(exp.reason_ms[mid].items())}
        # the window is covered: every second is in some state
        assert sum(m["states"].values()) == pytest.approx(body["seconds"])
    seen = {st for m in body["machines"] for st, v in m["states"].items() if v > 0}
    assert {"running", "idle", "down", "changeover", "planned"} <= seen
    for ln, line in zip(body["lines"], demo_plant.lines, strict=True):
        outputs = [m.id for m in line.output_machines]
        assert ln == {"line": line.id, "output": outputs, "good": sum(exp.good[o] for o in outputs),
                      "scrap": sum(exp.scrap[m.id] for m in line.machines)}
        assert ln["good"] > 0


def test_without_a_plant_there_are_machines_and_no_lines(truth: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = summarize(capsys, "--truth", str(truth), "--start", W_START, "--end", W_END, "--json")
    assert rc == 0
    body = json.loads(out)
    assert "lines" not in body
    exp = expected(truth, W_START, W_END)
    assert [m["machine"] for m in body["machines"]] == exp.machines
    rc, text, _ = summarize(capsys, "--truth", str(truth), "--start", W_START, "--end", W_END)
    assert rc == 0 and "line figures need --plant" in text


def test_text_matches_the_ledger(truth: Path, demo_plant: Plant, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = summarize(capsys, "--truth", str(truth), "--start", W_START, "--end", W_END,
                           "--plant", str(DEMO_PLANT))
    assert rc == 0
    exp = expected(truth, W_START, W_END)
    rows = out.splitlines()
    assert rows[0] == "ground truth 2026-11-25T22:47:13.500Z .. 2026-11-26T02:02:41.250Z (11727.75 s)"
    # lines
    i = rows.index(next(r for r in rows if r.startswith("line ")))
    for line, row in zip(demo_plant.lines, rows[i + 1:i + 1 + len(demo_plant.lines)], strict=True):
        out_id = line.output_machines[0].id
        assert row.split() == [line.id, str(exp.good[out_id]), str(sum(exp.scrap[m.id] for m in line.machines)),
                               out_id]
    # machines: parts and seconds per state, to a tenth of a second
    i = rows.index(next(r for r in rows if r.startswith("machine ")))
    header = rows[i].split()
    states = header[4:-1]
    assert states == ["running", "idle", "down", "changeover", "planned", "offline"]
    machines = [m.id for _, m in demo_plant.machines()]
    for mid, row in zip(machines, rows[i + 1:i + 1 + len(machines)], strict=True):
        cells = row.split()
        assert cells[:4] == [mid, demo_plant.line_of(mid).id, str(exp.good[mid]), str(exp.scrap[mid])]  # type: ignore[union-attr]
        for st, cell in zip(states, cells[4:], strict=True):
            assert float(cell) == pytest.approx(exp.state_ms[mid][st] / 1000, abs=0.05 + 1e-9), (mid, st)
    # stop reasons, named from the catalogue
    i = rows.index("stop reasons (seconds)")
    for mid, row in zip(machines, rows[i + 1:i + 1 + len(machines)], strict=True):
        assert row.split()[0] == mid
        got = {int(code): (name, float(sec)) for code, name, sec in
               re.findall(r"(\d+) ([^:;]+): ([\d.]+)", row[len(mid):])}
        assert set(got) == set(exp.reason_ms[mid])
        for code, (name, sec) in got.items():
            assert sec == pytest.approx(exp.reason_ms[mid][code] / 1000, abs=0.05 + 1e-9)
            assert name == demo_plant.reasons[code].name.ja  # type: ignore[union-attr]  # the site's locale


def test_bad_input_exits_2_with_a_message(truth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["truth", "summarize", "--truth", str(truth), "--start", "2026-11-26T08:00:00", "--end", W_END])
    assert e.value.code == 2
    assert "has no offset" in capsys.readouterr().err
    rc, _, err = summarize(capsys, "--truth", str(truth), "--start", W_END, "--end", W_START)
    assert rc == 2 and "must be after --start" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": "2026-11-26T08:00:00", "kind": "part"}\n', encoding="utf-8")
    rc, _, err = summarize(capsys, "--truth", str(bad), "--start", W_START, "--end", W_END)
    assert rc == 2 and f"{bad}:1" in err and "without offset" in err
    # a missing file, through the real command
    r = subprocess.run([sys.executable, "-m", "mieruka.cli", "truth", "summarize", "--truth",
                        str(tmp_path / "nope.jsonl"), "--start", W_START, "--end", W_END],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nope.jsonl: no such file" in r.stderr and "Traceback" not in r.stderr
